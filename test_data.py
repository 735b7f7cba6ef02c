"""iemocap.py: reading a copy, checking it, leave-one-session-out folds, audio, the synthetic replica."""
import os
import random
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import iemocap
from conftest import cli, expected_counts, four_class, linked_copy
from corpus import from_iemocap
from iemocap import (CLASSES, IemocapError, Utterance, UtteranceDataset, check_iemocap, count_utterances, crop,
                     load_audio, make_synthetic_iemocap, peak_normalise, read_iemocap, read_split,
                     write_split)


# ---- Reading ----

def test_reader_counts_match_what_the_generator_wrote(utterances, written):
    kept = four_class(written)
    assert sorted(u.id for u in utterances) == sorted(kept)
    assert count_utterances(utterances) == expected_counts(written)
    assert Counter((u.label, u.speaker) for u in utterances) == Counter(kept.values())


def test_reader_merges_exc_into_hap(utterances, written):
    codes = {uid: code for uid, (code, _, _) in written.items()}
    labels = {u.id: u.label for u in utterances}
    exc = [uid for uid, code in codes.items() if code == "exc"]
    hap = [uid for uid, code in codes.items() if code == "hap"]
    assert exc and hap
    assert {labels[uid] for uid in exc + hap} == {"hap"}


def test_reader_drops_codes_outside_the_four_classes(utterances, written):
    others = {uid for uid, (code, _, _) in written.items()
              if code not in ("ang", "hap", "exc", "sad", "neu")}
    assert {written[uid][0] for uid in others} >= {"xxx", "fru", "sur", "fea"}
    assert not others & {u.id for u in utterances}


def test_reader_takes_the_speaker_from_the_utterance_suffix_not_the_dialog(utterances):
    crossed = [u for u in utterances if u.id[5] != u.id.rsplit("_", 1)[1][0]]
    assert crossed
    assert all(u.speaker == u.id[:5] + u.id.rsplit("_", 1)[1][0] for u in utterances)
    assert len({u.speaker for u in utterances}) == 10


def test_reader_fills_dialog_wav_times_and_improvised(utterances, replica):
    u = next(u for u in utterances if "impro05b" in u.id)
    assert u.dialog == u.id.rsplit("_", 1)[0] and u.improvised
    assert Path(u.wav) == replica / f"Session{u.session}/sentences/wav/{u.dialog}/{u.id}.wav"
    assert any(u.dialog.endswith("script01_1b") and not u.improvised for u in utterances)
    assert all(u.end > u.start for u in utterances)


def test_reader_ignores_appledouble_files_and_annotator_subfolders(replica, utterances, tmp_path):
    copy = linked_copy(replica, tmp_path)
    emo = copy / "Session1/dialog/EmoEvaluation"
    assert (emo / "._Ses01F_impro01.txt").read_bytes()[:4] == b"\x00\x05\x16\x07"
    # A label file inside a per-annotator folder would double Session 1 if it were read.
    for sub in ("Categorical", "Attribute", "Self-evaluation"):
        (emo / sub).mkdir(exist_ok=True)
        for label_file in emo.glob("Ses01*.txt"):
            shutil.copy(label_file, emo / sub / label_file.name)
    assert [u.id for u in read_iemocap(copy)] == [u.id for u in utterances]


def test_reader_refuses_a_missing_or_empty_root(tmp_path):
    with pytest.raises(IemocapError, match="not a folder"):
        read_iemocap(tmp_path / "nowhere")
    with pytest.raises(IemocapError, match="EmoEvaluation"):
        read_iemocap(tmp_path)


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


# ---- Checking ----

def test_check_passes_a_tree_with_the_expected_counts(replica, utterances, written):
    assert check_iemocap(replica, utterances, expected=expected_counts(written)) == []


def test_check_names_a_removed_wav(replica, utterances, written, tmp_path):
    copy = linked_copy(replica, tmp_path)
    gone = read_iemocap(copy)[10]
    os.remove(gone.wav)
    problems = check_iemocap(copy, read_iemocap(copy), expected=expected_counts(written))
    assert problems == [f"1 wav files are missing, e.g. {Path(gone.wav).relative_to(copy)}"]


def test_check_reports_a_missing_session(replica, written, tmp_path):
    copy = linked_copy(replica, tmp_path)
    shutil.rmtree(copy / "Session3")
    problems = check_iemocap(copy, read_iemocap(copy), expected=expected_counts(written))
    assert any(p.startswith("Session3 is missing") for p in problems)
    assert any(p.startswith("total:") for p in problems)


def test_cli_exits_2_with_one_line_and_no_traceback_on_a_wrong_root(tmp_path):
    result = cli("iemocap.py", tmp_path / "nowhere", timeout=120)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"error: {tmp_path / 'nowhere'} is not a folder; "
                                          "pass the path of IEMOCAP_full_release/"]
    assert result.stdout == ""


def test_cli_exits_2_with_one_line_on_an_empty_root(tmp_path, capsys):
    assert iemocap.main([str(tmp_path)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1 and "EmoEvaluation" in err


def test_cli_exits_1_and_lists_differences_on_the_replica(replica):
    result = cli("iemocap.py", replica, timeout=120)
    assert result.returncode == 1
    assert "Ses05M" in result.stdout and "hours of audio" in result.stdout
    assert "total: 400 utterances, expected 5531" in result.stdout


def test_cli_exits_0_when_the_counts_match(replica, written, monkeypatch, capsys):
    monkeypatch.setattr(iemocap, "PUBLISHED", expected_counts(written))
    assert iemocap.main([str(replica)]) == 0
    assert "matches the published counts" in capsys.readouterr().out


# ---- Folds ----

def test_folds_are_disjoint_and_cover_every_utterance(utterances):
    for fold in range(1, 6):
        split = from_iemocap(utterances).split(str(fold))
        ids = [u.id for part in split.values() for u in part]
        assert sorted(ids) == sorted(u.id for u in utterances)


def test_fold_k_tests_on_exactly_session_k(utterances):
    for fold in range(1, 6):
        split = from_iemocap(utterances).split(str(fold))
        assert {u.id for u in split["test"]} == {u.id for u in utterances if u.session == fold}
        assert all(u.session != fold for u in split["train"] + split["val"])


def test_validation_is_a_class_stratified_tenth_of_the_training_sessions(utterances):
    split = from_iemocap(utterances).split("5")
    pool = split["train"] + split["val"]
    assert len(split["val"]) == round(0.1 * len(pool))
    pool_share = Counter(u.label for u in pool)
    val_share = Counter(u.label for u in split["val"])
    for c in CLASSES:
        assert abs(val_share[c] - 0.1 * pool_share[c]) <= 1
    assert from_iemocap(utterances).split("5", val_fraction=0)["val"] == []


def test_split_is_deterministic_per_seed_and_differs_across_seeds(utterances):
    assert from_iemocap(utterances).split("2", seed=1) == from_iemocap(utterances).split("2", seed=1)
    assert from_iemocap(utterances).split("2", seed=1)["val"] != from_iemocap(utterances).split("2", seed=2)["val"]


def test_written_split_reads_back_as_the_same_ids(utterances, tmp_path):
    split = from_iemocap(utterances).split("4", seed=7)
    write_split(split, tmp_path / "run")
    assert read_split(tmp_path / "run") == {k: [u.id for u in v] for k, v in split.items()}


# ---- Audio ----

def one_utterance(wav, uid="Ses01F_impro01_F000"):
    return Utterance(uid, 1, "Ses01F", "neu", 0.0, 1.0, str(wav), "Ses01F_impro01", True)


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


def test_dataset_pads_a_200_sample_utterance_to_400_with_a_warning(tmp_path):
    sf.write(tmp_path / "short.wav", np.full(200, 0.1), 16000, subtype="PCM_16")
    dataset = UtteranceDataset([one_utterance(tmp_path / "short.wav")])
    with pytest.warns(UserWarning, match="Ses01F_impro01_F000 has 200 samples"):
        x, length, label = dataset[0]
    assert x.shape == (400,) and length == 400 and label == CLASSES.index("neu")
    assert x[:200].eq(1).all() and x[200:].eq(0).all()


def test_peak_normalise_gives_max_abs_one_and_leaves_silence_alone():
    x = np.array([0.1, -0.4, 0.2], dtype=np.float32)
    assert np.abs(peak_normalise(x)).max() == 1
    assert not peak_normalise(np.zeros(5, dtype=np.float32)).any()


def test_crop_and_dataset_lengths_are_min_of_length_and_max_len(utterances):
    assert len(crop(np.zeros(150_000))) == 100_000 and len(crop(np.zeros(900))) == 900
    dataset = UtteranceDataset(utterances[:20], max_len=30_000)
    for i, u in enumerate(dataset.utterances):
        x, length, _ = dataset[i]
        frames = sf.info(u.wav).frames
        assert length == len(x) == min(frames, 30_000)
        assert x.abs().max() == 1  # the crop is normalised by its own peak (BACKGROUND.md, "Data pipeline")


@pytest.mark.parametrize("cached", [False, True])
def test_an_utterance_whose_peak_lies_after_the_cut_still_reaches_one(tmp_path, cached):
    x = np.concatenate([0.1 * np.sin(np.arange(20_000) / 5), 0.9 * np.ones(10_000)])  # loudest after 20,000
    sf.write(tmp_path / "late.wav", x, 16000, subtype="PCM_16")
    utterance = one_utterance(tmp_path / "late.wav")
    dataset = UtteranceDataset([utterance], max_len=20_000, cache=iemocap.decode([utterance]) if cached else None)
    served, length, _ = dataset[0]
    assert length == 20_000
    assert served.abs().max().item() == pytest.approx(1.0, abs=1e-4)  # crop, then divide by the crop's peak
    expected = x[:20_000] / np.abs(x[:20_000]).max()
    np.testing.assert_allclose(served.numpy(), expected, atol=2e-3)  # int16 file and cache: 1/32767 of the peak


def test_a_wav_holding_nan_is_refused_by_name(tmp_path):
    x = np.zeros(1000, dtype=np.float32)
    x[500] = np.nan
    sf.write(tmp_path / "broken.wav", x, 16000, subtype="FLOAT")
    with pytest.raises(IemocapError, match="broken.wav holds NaN or infinite samples"):
        load_audio(tmp_path / "broken.wav")


def test_an_all_silent_utterance_is_named_in_a_warning(tmp_path):
    sf.write(tmp_path / "quiet.wav", np.zeros(800), 16000, subtype="PCM_16")
    with pytest.warns(UserWarning, match="Ses01F_impro01_F000 .*quiet.wav.* is silent"):
        cache = iemocap.decode([one_utterance(tmp_path / "quiet.wav")])
    assert not cache["Ses01F_impro01_F000"].any()


@pytest.mark.parametrize("name", ["authors", "paper"])
def test_augmentation_is_identical_for_the_same_seed_epoch_and_index(utterances, name):
    first = UtteranceDataset(utterances[:12], augment=name, seed=5)
    other_worker = UtteranceDataset(utterances[:12], augment=name, seed=5)
    first.set_epoch(2)
    other_worker.set_epoch(2)
    random.seed(0)
    for i in range(12):
        x, length, _ = first[i]
        assert x.dtype == torch.float32
        assert len(x) == length == len(load_audio(first.utterances[i].wav))
        assert x.equal(other_worker[i][0])
    assert random.random() == random.Random(0).random()  # the caller's RNG is left alone
    first.set_epoch(3)
    assert any(not first[i][0].equal(other_worker[i][0]) for i in range(12))
