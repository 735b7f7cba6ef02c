"""audio.py: any file as float32 mono at 16 kHz, the peak normalisation, decoding a corpus once."""

import numpy as np
import pytest
import soundfile as sf

import audio
from audio import load_audio, peak_normalise
from conftest import one_utterance
from settings import CorpusError


def test_load_audio_turns_44k_stereo_int16_into_16k_mono_float32(tmp_path):
    t = np.arange(44100) / 44100
    left = 0.5 * np.sin(2 * np.pi * 440 * t)
    sf.write(tmp_path / "a.wav", np.stack([left, np.zeros_like(left)], axis=1), 44100,
             subtype="PCM_16")
    x = load_audio(tmp_path / "a.wav")
    assert x.dtype == np.float32 and x.shape == (16000,)
    assert abs(np.abs(x[1000:-1000]).max() - 0.25) < 0.01  # the two channels averaged


@pytest.mark.parametrize("subtype", ["PCM_32", "FLOAT"])
def test_load_audio_reads_int32_and_float_files(tmp_path, subtype):
    samples = np.linspace(-0.5, 0.5, 800)
    sf.write(tmp_path / "a.wav", samples, 16000, subtype=subtype)
    assert np.allclose(load_audio(tmp_path / "a.wav"), samples, atol=1e-6)


def test_peak_normalise_gives_max_abs_one_and_leaves_silence_alone():
    x = np.array([0.1, -0.4, 0.2], dtype=np.float32)
    assert np.abs(peak_normalise(x)).max() == 1
    assert not peak_normalise(np.zeros(5, dtype=np.float32)).any()


def test_a_wav_holding_nan_is_refused_by_name(tmp_path):
    x = np.zeros(1000, dtype=np.float32)
    x[500] = np.nan
    sf.write(tmp_path / "broken.wav", x, 16000, subtype="FLOAT")
    with pytest.raises(CorpusError, match="broken.wav holds NaN or infinite samples"):
        load_audio(tmp_path / "broken.wav")


def test_an_all_silent_utterance_is_named_in_a_warning(tmp_path):
    sf.write(tmp_path / "quiet.wav", np.zeros(800), 16000, subtype="PCM_16")
    with pytest.warns(UserWarning, match="Ses01F_impro01_F000 .*quiet.wav.* is silent"):
        cache = audio.decode([one_utterance(tmp_path / "quiet.wav")])
    assert not cache["Ses01F_impro01_F000"].any()
