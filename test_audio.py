"""audio.py: any file as float32 mono at 16 kHz, the peak normalisation, decoding a corpus once."""

import numpy as np
import pytest
import soundfile as sf
import soxr

import audio
from audio import header_seconds, load_audio, peak_normalise
from conftest import one_utterance, write_av
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


def chirps(rate, seconds=1.0):
    """Stereo: a different chirp in each channel (200 -> 2000 Hz left at 0.5, 3000 -> 600 Hz right at 0.25),
    so that a channel left out, the channels summed or weighed otherwise than their mean all show."""
    t = np.arange(int(rate * seconds)) / rate
    return np.stack([0.5 * np.sin(2 * np.pi * (200 * t + 900 * t ** 2)),
                     0.25 * np.sin(2 * np.pi * (3000 * t - 1200 * t ** 2))], axis=1).astype(np.float32)


CONTAINERS = {"mp4": ("aac", 128_000, "mpeg4"), "webm": ("libopus", 96_000, "libvpx"), "avi": ("pcm_s16le", None, "mpeg4")}


@pytest.fixture(scope="module")
def containers(tmp_path_factory):
    """1 s of 48 kHz stereo chirps with a video stream: AAC in mp4, Opus in webm, 16-bit PCM in avi;
    and the avi's 16-bit samples as a wav, which soundfile reads."""
    folder = tmp_path_factory.mktemp("containers")
    for ext, (codec, bit_rate, video) in CONTAINERS.items():
        write_av(folder / f"a.{ext}", chirps(48_000), 48_000, codec, bit_rate, video)
    sf.write(folder / "a.wav", np.round(chirps(48_000) * 32767).astype(np.int16), 48_000)  # as write_av quantises
    return folder


def test_pcm_in_an_avi_reads_exactly_as_the_same_samples_in_a_wav(containers):
    assert np.array_equal(load_audio(containers / "a.avi"), load_audio(containers / "a.wav"))


@pytest.mark.parametrize("ext, extra", [("mp4", 1024 // 3 + 1), ("webm", 0)])  # AAC: up to a 1024-sample frame more
def test_lossy_audio_in_a_container_decodes_to_the_mean_of_its_channels_at_16k(containers, ext, extra):
    y = load_audio(containers / f"a.{ext}")
    written = soxr.resample(chirps(48_000).mean(axis=1), 48_000, 16_000)
    assert y.dtype == np.float32 and 0 <= len(y) - 16_000 <= extra
    middle = slice(800, 16_000 - 800)  # 50 ms off each end: the codec's onset and tail
    assert np.corrcoef(y[middle], written[middle])[0, 1] > 0.98
    assert 0.85 < np.sqrt(np.mean(y[middle] ** 2) / np.mean(written[middle] ** 2)) < 1.15


@pytest.mark.parametrize("ext, seconds", [("mp4", 1.0), ("webm", 1.0), ("avi", 1.0)])
def test_a_containers_length_comes_from_its_header(containers, ext, seconds):
    assert header_seconds(containers / f"a.{ext}") == pytest.approx(seconds, abs=0.03)


def test_a_video_without_an_audio_stream_is_refused_by_name(tmp_path):
    write_av(tmp_path / "silent.mp4", chirps(16_000), 16_000, video="mpeg4")
    with pytest.raises(CorpusError, match="silent.mp4 holds no audio stream"):
        load_audio(tmp_path / "silent.mp4")


def test_a_file_neither_soundfile_nor_ffmpeg_reads_is_refused_by_name(tmp_path):
    (tmp_path / "notes.mp4").write_text("not a video")
    with pytest.raises(CorpusError, match="cannot read .*notes.mp4: neither soundfile nor FFmpeg reads it"):
        load_audio(tmp_path / "notes.mp4")


def test_an_audio_stream_that_fails_to_decode_is_refused_by_name(containers, tmp_path):
    data = bytearray((containers / "a.mp4").read_bytes())
    middle = len(data) // 3
    data[middle:middle + 3000] = np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes()
    (tmp_path / "broken.mp4").write_bytes(bytes(data))
    with pytest.raises(CorpusError, match="cannot decode the audio of .*broken.mp4"):
        load_audio(tmp_path / "broken.mp4")


def cut_in_half(path, to):
    """A copy of the file with the second half of its bytes gone, its header untouched."""
    data = path.read_bytes()
    to.write_bytes(data[:len(data) // 2])
    return to


def test_a_wav_cut_short_is_refused_with_what_its_header_says_and_what_is_missing(tmp_path):
    sf.write(tmp_path / "whole.wav", chirps(48_000, seconds=3.0)[:, 0], 48_000, subtype="PCM_16")
    assert len(load_audio(tmp_path / "whole.wav")) == 48_000
    cut = cut_in_half(tmp_path / "whole.wav", tmp_path / "cut.wav")
    assert sf.info(cut).frames < 48_000 * 3  # libsndfile reads what is there and says nothing
    with pytest.raises(CorpusError, match=r"cut.wav is cut short: its header says 3.00 s, 1.50 s of it decode "
                                          r"\(1.50 s missing\)"):
        load_audio(cut)


def test_a_webm_cut_short_is_refused_with_what_its_container_says_and_what_is_missing(tmp_path):
    write_av(tmp_path / "whole.webm", chirps(48_000, seconds=3.0), 48_000, "libopus", 96_000, "libvpx")
    assert len(load_audio(tmp_path / "whole.webm")) == pytest.approx(48_000, abs=160)
    cut = cut_in_half(tmp_path / "whole.webm", tmp_path / "cut.webm")
    with pytest.raises(CorpusError, match=r"cut.webm is cut short: its header says 3.0\d s, 1.\d\d s of it decode"):
        load_audio(cut)


def test_a_wav_whose_header_declares_no_length_is_read_whole(tmp_path):
    sf.write(tmp_path / "streamed.wav", chirps(16_000)[:, 0], 16_000, subtype="PCM_16")
    data = bytearray((tmp_path / "streamed.wav").read_bytes())
    at = data.index(b"data") + 4
    data[at:at + 4] = b"\xff\xff\xff\xff"  # as a recorder writes it while it streams
    (tmp_path / "streamed.wav").write_bytes(bytes(data))
    assert len(load_audio(tmp_path / "streamed.wav")) == 16_000
