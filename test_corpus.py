"""corpus.py: EmoBox dataset folders and one's own CSV, with the folds, classes and checks of IEMOCAP."""
import csv
import json
import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

import audio
import corpus as corpora
from conftest import TINY, cli, one_line_error, write_av
from corpus import from_iemocap, read_split, write_split
from iemocap import CLASSES, read_iemocap
from settings import CorpusError


def emobox(root):
    return root / "emobox" / "replica"


def test_the_replica_through_its_emobox_manifest_has_the_folds_of_iemocap(small_corpus):
    direct = corpora.from_iemocap(read_iemocap(small_corpus))
    manifest = corpora.from_manifest(emobox(small_corpus), small_corpus)
    assert manifest.folds == direct.folds == ["1", "2", "3", "4", "5"]
    assert manifest.classes == direct.classes == ("ang", "hap", "sad", "neu")
    for fold in direct.folds:
        a, b = direct.split(fold, seed=3), manifest.split(fold, seed=3)
        for part in ("train", "val", "test"):
            assert [u.id for u in a[part]] == [u.id for u in b[part]], (fold, part)
            assert [u.label for u in a[part]] == [u.label for u in b[part]]
            assert [Path(u.wav) for u in a[part]] == [Path(u.wav) for u in b[part]]


def test_the_replica_through_its_manifest_scores_as_through_iemocap(small_corpus, tmp_path):
    args = ["--demo", "--fold", "4", "--epochs", "2", "--max-len", "8000"]
    a = cli("reproduce.py", *args, "--demo-corpus", small_corpus, "--out", tmp_path / "iemocap")
    b = cli("reproduce.py", *args, "--manifest", emobox(small_corpus), "--audio-root", small_corpus, "--out", tmp_path / "emobox")
    assert a.returncode == b.returncode == 0, (a.stderr[-1000:], b.stderr[-1000:])
    ma, mb = (json.loads((tmp_path / run / "fold4/seed0/metrics.json").read_text()) for run in ("iemocap", "emobox"))
    assert (ma["wa"], ma["ua"], ma["confusion"]) == (mb["wa"], mb["ua"], mb["confusion"])
    assert [h["loss"] for h in ma["history"]] == [h["loss"] for h in mb["history"]]
    assert "paper (Table 3)" in (tmp_path / "iemocap/results.md").read_text()
    assert "paper" not in (tmp_path / "emobox/results.md").read_text()  # the paper's numbers are IEMOCAP's only


def test_an_ablation_on_a_manifest_shows_no_paper_numbers(small_corpus, tmp_path):
    args = ["--demo", "--dropout", "0.4", "--epochs", "1", "--max-len", "8000"]  # Table 1's 0.4 row: 70.99 / 72.83
    done = cli("ablate.py", *args, "--manifest", emobox(small_corpus), "--audio-root", small_corpus, "--out", tmp_path / "abl")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| 0.4 | 1 |" in (tmp_path / "abl/ablation.md").read_text()
    assert "70.99" not in (tmp_path / "abl/ablation.md").read_text()  # the paper's numbers are IEMOCAP's only


def three_class_csv(root, path, columns=("path", "label", "speaker")):
    """The replica's ang, sad and neu utterances renamed angry, sad and calm, one row each."""
    names = {"ang": "angry", "sad": "sad", "neu": "calm"}
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(columns)
        for u in read_iemocap(root):
            if u.label in names:
                row = dict(path=str(Path(u.wav).relative_to(root)), label=names[u.label], speaker=u.speaker,
                           fold=u.session, id=u.id, emotion=names[u.label])
                w.writerow([row[c] for c in columns])
    return path


def test_a_csv_with_speakers_gives_speaker_independent_folds(small_corpus, tmp_path):
    corpus = corpora.from_manifest(three_class_csv(small_corpus, tmp_path / "mine.csv"), small_corpus, num_folds=5)
    assert corpus.classes == ("angry", "calm", "sad") and corpus.folds == ["1", "2", "3", "4", "5"]
    tested = []
    for fold in corpus.folds:
        split = corpus.split(fold)
        train, test = {u.speaker for u in split["train"] + split["val"]}, {u.speaker for u in split["test"]}
        assert test and not train & test, fold
        tested += [u.id for u in split["test"]]
    assert sorted(tested) == sorted(u.id for u in corpus.utterances)  # every utterance tested once


def test_a_csv_with_a_fold_column_leaves_each_fold_out(small_corpus, tmp_path):
    path = three_class_csv(small_corpus, tmp_path / "mine.csv", columns=("id", "path", "label", "fold"))
    corpus = corpora.from_manifest(path, small_corpus)
    assert corpus.folds == ["1", "2", "3", "4", "5"]
    for fold in corpus.folds:
        split = corpus.split(fold)
        assert {u.id[4] for u in split["test"]} == {fold}
        assert fold not in {u.id[4] for u in split["train"] + split["val"]}
    assert corpus.split("3")["test"][0].id.startswith("Ses03")


def test_a_three_class_csv_trains_a_demo_fold_with_its_own_class_names(small_corpus, tmp_path):
    path = three_class_csv(small_corpus, tmp_path / "mine.csv")
    done = cli("reproduce.py", "--demo", "--manifest", path, "--audio-root", small_corpus, "--num-folds", "5",
               "--fold", "2", "--epochs", "2", "--max-len", "8000", "--out", tmp_path / "run")
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((tmp_path / "run/results.json").read_text())
    assert results["classes"] == ["angry", "calm", "sad"]
    assert len(results["confusion"]) == 3 and all(len(row) == 3 for row in results["confusion"])
    metrics = json.loads((tmp_path / "run/fold2/seed0/metrics.json").read_text())
    assert set(metrics["recall"]) == {"angry", "calm", "sad"} and sum(map(sum, metrics["confusion"])) == metrics["n_test"]
    assert metrics["ua"] == pytest.approx(sum(metrics["recall"].values()) / 3)  # 3-class UA
    assert "| | angry | calm | sad |" in (tmp_path / "run/results.md").read_text()
    assert (tmp_path / "run/results.png").read_bytes()[:4] == b"\x89PNG"
    model = json.loads((tmp_path / "run/fold2/seed0/model.json").read_text())
    assert model["classes"] == ["angry", "calm", "sad"] and model["model"]["num_classes"] == 3


def test_classes_flag_keeps_those_classes_in_that_order(small_corpus):
    corpus = corpora.from_manifest(emobox(small_corpus), small_corpus)
    kept = corpora.keep_classes(corpus, "neu,ang")
    assert kept.classes == ("neu", "ang") and {u.label for u in kept.utterances} == {"neu", "ang"}
    assert all(u.label in ("neu", "ang") for u in kept.split("1")["test"])
    with pytest.raises(CorpusError, match="--classes neu,fear"):
        corpora.keep_classes(corpus, "neu,fear")


def demo_on(manifest, tmp_path, *extra):
    return cli("reproduce.py", "--demo", "--manifest", manifest, *extra, "--out", tmp_path / "run")


def test_a_manifest_whose_files_are_missing_says_how_many_and_names_some(small_corpus, tmp_path):
    one_line_error(demo_on(emobox(small_corpus), tmp_path, "--audio-root", tmp_path / "elsewhere"),
                   "80 of 80 audio files", "are missing, e.g.", str(tmp_path / "elsewhere" / "Session"))
    assert not (tmp_path / "run").exists()


def test_a_table_without_the_needed_columns_is_refused(small_corpus, tmp_path):
    path = three_class_csv(small_corpus, tmp_path / "mine.csv", columns=("path", "emotion"))
    one_line_error(demo_on(path, tmp_path, "--audio-root", small_corpus), "columns emotion, path", "needs path, label")


def test_a_label_outside_the_label_map_is_refused(small_corpus, tmp_path):
    copy = Path(shutil.copytree(emobox(small_corpus), tmp_path / "replica"))
    (copy / "label_map.json").write_text(json.dumps({"ang": "ang", "hap": "hap", "sad": "sad", "neu": "neu"}))
    one_line_error(demo_on(copy, tmp_path, "--audio-root", small_corpus), "label 'exc' is not in label_map.json")


def test_utterances_that_are_parts_of_one_long_recording_read_as_their_own_files(small_corpus, tmp_path):
    copy = Path(shutil.copytree(emobox(small_corpus), tmp_path / "replica"))
    train = copy / "fold_2" / "replica_train_fold_2.jsonl"
    rows = [json.loads(line) for line in train.open()]
    # three utterances put end to end in one 44.1 kHz stereo recording, a second of silence before each, listed as
    # PAVOQUE's lines are: the recording, and each one's start_time and end_time in it
    own, pieces, start = {}, [], 0.0
    for row in rows[3:6]:
        own[row["key"]] = audio.load_audio(small_corpus / row["wav"])
        x, rate = sf.read(small_corpus / row["wav"], dtype="float32")
        pieces += [np.zeros(rate, dtype=np.float32), x]
        start += 1.0
        row.update(wav=os.path.relpath(tmp_path / "long.wav", small_corpus), start_time=start, end_time=start + len(x) / rate)
        start += len(x) / rate
    long = np.concatenate(pieces)
    sf.write(tmp_path / "long.wav", soxr.resample(np.stack([long, 0.5 * long], 1), 16_000, 44_100), 44_100, subtype="FLOAT")
    changed = {row["key"]: row for row in rows[3:6]}
    for lines in copy.rglob("*.jsonl"):  # every fold lists them
        listed = [json.loads(line) for line in lines.open()]
        lines.write_text("".join(json.dumps(changed.get(row["key"], row)) + "\n" for row in listed))
    corpus = corpora.from_manifest(copy, small_corpus)
    parts = {u.id: u for u in corpus.utterances if u.part}
    assert sorted(parts) == sorted(own)
    for key, whole in own.items():
        cut = audio.load_audio(parts[key].wav, parts[key].part)
        assert parts[key].duration == pytest.approx(len(whole) / 16_000) and abs(len(cut) - len(whole)) <= 1
        n = min(len(cut), len(whole)) - 200
        assert np.corrcoef(cut[200:n], whole[200:n])[0, 1] > 0.99  # the right part, through 44.1 kHz and back


def test_a_fold_with_an_empty_test_list_is_refused(small_corpus, tmp_path):
    copy = Path(shutil.copytree(emobox(small_corpus), tmp_path / "replica"))
    (copy / "fold_3" / "replica_test_fold_3.jsonl").write_text("")
    one_line_error(demo_on(copy, tmp_path, "--audio-root", small_corpus), "fold 3 has no utterance to test on")


def test_a_class_absent_from_a_folds_training_data_is_refused(small_corpus, tmp_path):
    copy = Path(shutil.copytree(emobox(small_corpus), tmp_path / "replica"))
    train = copy / "fold_2" / "replica_train_fold_2.jsonl"
    train.write_text("".join(line + "\n" for line in train.read_text().splitlines() if '"emo": "sad"' not in line))
    one_line_error(demo_on(copy, tmp_path, "--audio-root", small_corpus), "fold 2 has no sad utterance to train on")


def test_an_emobox_manifest_of_mp4_files_trains_a_demo_fold(small_corpus, tmp_path):
    """The replica's fold 1 (sessions 2-3 to train, 1 to test: 48 utterances) as MELD keeps its audio:
    AAC in an .mp4 beside a video stream."""
    folder = tmp_path / "mp4s"
    (folder / "fold_1").mkdir(parents=True)
    shutil.copy(emobox(small_corpus) / "label_map.json", folder)
    for part in ("train", "test"):
        rows = [json.loads(line) for line in (emobox(small_corpus) / "fold_1" / f"replica_{part}_fold_1.jsonl").open()]
        rows = [row for row in rows if row["key"][4] in "123"]
        for row in rows:
            x, rate = sf.read(small_corpus / row["wav"], dtype="float32", always_2d=True)
            row["wav"] = row["wav"].replace(".wav", ".mp4")
            (tmp_path / "audio" / row["wav"]).parent.mkdir(parents=True, exist_ok=True)
            write_av(tmp_path / "audio" / row["wav"], x, rate, "aac", 64_000, video="mpeg4")
        (folder / "fold_1" / f"mp4s_{part}_fold_1.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    done = cli("reproduce.py", *TINY, "--manifest", folder, "--audio-root", tmp_path / "audio", "--fold", "1",
               "--out", tmp_path / "run")
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((tmp_path / "run/fold1/seed0/metrics.json").read_text())["n_test"] == 16


def test_a_video_without_audio_in_a_manifest_is_one_line_and_nothing_is_written(small_corpus, tmp_path):
    copy = Path(shutil.copytree(emobox(small_corpus), tmp_path / "replica"))
    silent = write_av(tmp_path / "silent.mp4", np.zeros((16_000, 1)), 16_000, video="mpeg4")
    first = json.loads((copy / "fold_1" / "replica_test_fold_1.jsonl").read_text().splitlines()[0])["wav"]
    for jsonl in copy.glob("fold_*/*.jsonl"):  # the utterance's every line
        jsonl.write_text(jsonl.read_text().replace(json.dumps(first), json.dumps(str(silent))))
    one_line_error(demo_on(copy, tmp_path, "--audio-root", small_corpus), f"{silent} holds no audio stream")
    assert not (tmp_path / "run").exists()


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
