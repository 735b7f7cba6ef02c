"""synthetic.py: the demo's replica of IEMOCAP_full_release."""

import soundfile as sf

from synthetic import make_synthetic_iemocap


def test_replica_wavs_hold_end_minus_start_samples_at_16k_mono_int16(utterances, written):
    for u in utterances[::7]:
        info = sf.info(u.wav)
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        assert info.frames == written[u.id][2] == round((u.end - u.start) * 16000)


def test_replica_is_deterministic_for_a_seed(tmp_path):
    a = make_synthetic_iemocap(tmp_path / "a", utterances_per_speaker=4, seed=3)
    b = make_synthetic_iemocap(tmp_path / "b", utterances_per_speaker=4, seed=3)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
