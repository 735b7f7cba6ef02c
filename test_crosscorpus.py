"""Cross-corpus test sets (crosscorpus.py, --test-on of reproduce.py and ablate.py, predict.py --score): each
job's best model scored on other corpora beside its own test; the summary, the ablation report and
predict.py give the same numbers; a bad test set is refused in one line before any training."""
import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import crosscorpus
import predict
from conftest import TINY, cli, curves, one_line_error
from corpus import OTHER_CORPUS
from iemocap import read_iemocap

ARGS = [*TINY, "--fold", "2", "--workers", "0"]


def targets_of(run, job="fold2/seed0"):
    return json.loads((run / job / "metrics.json").read_text()).get("targets", {})


@pytest.fixture(scope="module")
def scored(small_corpus, tmp_path_factory):
    """A job of the demo scored on the demo's second corpus from the start."""
    out = tmp_path_factory.mktemp("cross") / "run"
    done = cli("reproduce.py", *ARGS, "--demo-corpus", small_corpus, "--test-on", small_corpus / OTHER_CORPUS,
               "--out", out)
    assert done.returncode == 0, done.stderr[-2000:]
    return out, done


def test_a_job_is_scored_on_the_other_corpus_beside_its_own_test(scored, small_corpus):
    out, done = scored
    other = targets_of(out)["other-corpus"]
    assert other["n"] == 32 and sorted(other) == ["confusion", "f1", "file", "n", "recall", "ua", "wa"]
    assert np.sum(other["confusion"]) == 32 and all(sum(row) == 8 for row in other["confusion"])
    saved = json.loads((out / "fold2/seed0/targets/other-corpus.json").read_text())
    probs = np.array(saved["probs"])
    assert probs.shape == (32, 4) and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert crosscorpus.scores(saved["labels"], probs, ["ang", "hap", "sad", "neu"])["wa"] == other["wa"]
    results = json.loads((out / "results.json").read_text())["targets"]
    assert list(results) == ["in-corpus", "other-corpus"] and results["other-corpus"]["wa"]["mean"] == other["wa"]
    assert results["other-corpus"]["ensemble"]["wa"] == other["wa"]  # one fold: the ensemble is the model
    table = (out / "results.md").read_text()
    assert "| other-corpus | 32 | 1 |" in table and "| this corpus (each job's own test) | - | 1 |" in table
    assert (out / "cross_corpus.png").read_bytes()[:4] == b"\x89PNG"
    assert "other-corpus: WA" in done.stdout
    board = curves(out / "fold2/seed0/tb")
    assert board["cross/other-corpus/WA"][-1][1] == pytest.approx(other["wa"])


def test_a_test_set_added_later_scores_the_finished_jobs_as_if_given_from_the_start(scored, small_corpus, tmp_path):
    start, _ = scored
    later = tmp_path / "later"
    assert cli("reproduce.py", *ARGS, "--demo-corpus", small_corpus, "--out", later).returncode == 0
    assert targets_of(later) == {}
    added = cli("reproduce.py", "--resume", "--out", later, "--test-on", small_corpus / OTHER_CORPUS)
    assert added.returncode == 0, added.stderr[-2000:]
    assert "epoch   1" not in added.stdout and "fold2/seed0: scored on other-corpus" in added.stdout  # not trained again
    assert targets_of(later) == targets_of(start)
    for name in ("targets/other-corpus.json",):
        assert (later / "fold2/seed0" / name).read_text() == (start / "fold2/seed0" / name).read_text()
    assert json.loads((later / "results.json").read_text())["targets"] == \
        json.loads((start / "results.json").read_text())["targets"]
    assert json.loads((later / "config.json").read_text())["config"]["test_on"] == [str(small_corpus / OTHER_CORPUS)]
    again = cli("reproduce.py", "--resume", "--out", later)  # remembered, and done: nothing to score
    assert again.returncode == 0 and "scored on" not in again.stdout
    assert curves(later / "fold2/seed0/tb")["cross/other-corpus/UA"][-1][1] == pytest.approx(
        targets_of(start)["other-corpus"]["ua"])


def test_a_job_run_with_no_save_says_in_one_line_that_it_cannot_be_scored(small_corpus, tmp_path):
    assert cli("reproduce.py", *ARGS, "--demo-corpus", small_corpus, "--out", tmp_path / "r", "--no-save").returncode == 0
    done = cli("reproduce.py", "--resume", "--out", tmp_path / "r", "--test-on", small_corpus / OTHER_CORPUS)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stderr.count("fold2/seed0: trained with --no-save, its best weights are gone: it cannot be scored on "
                             "other-corpus") == 1
    assert targets_of(tmp_path / "r") == {}


def test_predict_score_gives_the_scores_and_probabilities_the_jobs_wrote(scored, small_corpus, tmp_path, capsys):
    out, _ = scored
    other = targets_of(out)["other-corpus"]
    assert predict.main(["--run", str(out), "--score", str(small_corpus / OTHER_CORPUS), "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found["members"]["fold2/seed0"] == {k: v for k, v in other.items() if k not in ("file", "n")}
    assert found["ensemble"] == found["members"]["fold2/seed0"] and found["n"] == 32
    assert predict.main(["--run", str(out), "--score", str(small_corpus / OTHER_CORPUS)]) == 0
    table = capsys.readouterr().out
    assert f"| fold2/seed0 | {100 * other['wa']:.2f} | {100 * other['ua']:.2f} | {100 * other['f1']:.2f} |" in table
    assert "Confusion matrix of the ensemble" in table


def write_csv(path, rows):
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([["path", "label"], *rows])
    return path


def test_a_label_no_class_of_the_model_names_is_one_line_before_training(small_corpus, tmp_path):
    wav = next((small_corpus / "other-corpus").rglob("*.wav"))
    test_set = write_csv(tmp_path / "fearful.csv", [[str(wav), "angry"], [str(wav), "fearful"]])
    done = cli("reproduce.py", *ARGS, "--demo-corpus", small_corpus, "--out", tmp_path / "r", "--test-on", test_set)
    one_line_error(done, f"--test-on {test_set}: its label 'fearful' names no class of the model (ang, hap, sad, neu)")
    assert not (tmp_path / "r").exists()


def test_a_test_set_sharing_utterances_with_the_training_corpus_is_refused_in_one_line(small_corpus, tmp_path):
    wavs = [Path(u.wav) for u in read_iemocap(small_corpus)[:3]]  # utterances of the 4-class corpus
    same_files = write_csv(tmp_path / "same.csv", [[str(w), "neutral"] for w in wavs])
    one_line_error(cli("reproduce.py", *ARGS, "--demo-corpus", small_corpus, "--out", tmp_path / "r", "--test-on",
                       same_files), "3 of its 3 utterances are in the training corpus", str(wavs[0]))
    # EmoBox's IEMOCAP track2 file: <label>/<IEMOCAP id>.wav in a folder of its own, the same ids
    track2 = tmp_path / "emobox" / "IEMOCAP_selected_balenced.jsonl"
    (track2.parent / "neutral").mkdir(parents=True)
    for w in wavs:
        shutil.copy(w, track2.parent / "neutral" / w.name)
    track2.write_text("".join(json.dumps(dict(wav_filename=f"neutral/{w.name}", label="neutral", speaker="01F")) + "\n"
                              for w in wavs))
    one_line_error(cli("reproduce.py", *ARGS, "--demo-corpus", small_corpus, "--out", tmp_path / "r", "--test-on",
                       track2), "3 of its 3 utterances are in the training corpus", wavs[0].name)
    assert not (tmp_path / "r").exists()


def test_missing_and_unreadable_files_of_a_test_set_are_listed_before_training(small_corpus, tmp_path):
    wav = next((small_corpus / "other-corpus").rglob("*.wav"))
    (tmp_path / "broken.wav").write_bytes(b"RIFF\x00\x00not audio")
    missing = write_csv(tmp_path / "missing.csv", [[str(wav), "angry"], ["gone1.wav", "sad"], ["gone2.wav", "sad"]])
    one_line_error(cli("reproduce.py", *ARGS, "--demo-corpus", small_corpus, "--out", tmp_path / "r", "--test-on",
                       missing), "2 of its 3 audio files are missing", str(tmp_path / "gone1.wav"))
    broken = write_csv(tmp_path / "broken.csv", [[str(wav), "angry"], [str(tmp_path / "broken.wav"), "sad"]])
    one_line_error(cli("reproduce.py", *ARGS, "--demo-corpus", small_corpus, "--out", tmp_path / "r", "--test-on",
                       broken), "--test-on: 1 audio file(s) cannot be read", "broken.wav")
    assert not (tmp_path / "r").exists()


def test_ablate_gives_the_paired_differences_on_each_test_set(small_corpus, tmp_path):
    done = cli("ablate.py", "--demo", "--demo-corpus", small_corpus, "--mixup", "conventional", "adaptive", "--folds", "1",
               "2", "--epochs", "1", "--max-len", "8000", "--workers", "0", "--test-on", small_corpus / OTHER_CORPUS,
               "--out", tmp_path / "abl")
    assert done.returncode == 0, done.stderr[-2000:]
    table = (tmp_path / "abl" / "ablation.md").read_text()
    assert "Cross-corpus, on other-corpus (--test-on)" in table
    section = table.split("Cross-corpus, on other-corpus")[1]
    rows = [line for line in section.splitlines() if line.startswith("| conventional") or line.startswith("| adaptive")]
    assert len(rows) == 2 and "(reference)" in rows[0] and "p=" in rows[1] and "| 2 |" in rows[1]
    d = [100 * (targets_of(tmp_path / "abl", f"mixup-adaptive_augment-authors/fold{f}/seed0")["other-corpus"]["wa"] -
                targets_of(tmp_path / "abl", f"mixup-conventional_augment-authors/fold{f}/seed0")["other-corpus"]["wa"])
         for f in (1, 2)]
    assert f"{np.mean(d):+.2f} [" in rows[1]


def test_emobox_track2_files_manifests_and_csvs_are_read_with_their_labels_mapped(small_corpus, tmp_path):
    wav = next((small_corpus / "other-corpus").rglob("*.wav"))
    classes = ["ang", "hap", "sad", "neu"]
    corpus = ("replica", classes, set(), set())
    # EmoBox's track2 file: named for its corpus, paths relative to the user's copy of it (--test-root)
    (tmp_path / "RAVDESS" / "Actor_15").mkdir(parents=True)
    shutil.copy(wav, tmp_path / "RAVDESS" / "Actor_15" / "03-01-03.wav")
    track2 = tmp_path / "RAVDESS_selected_balenced.jsonl"
    track2.write_text(json.dumps(dict(wav_filename="Actor_15/03-01-03.wav", label="happy", speaker="15")) + "\n")
    # an EmoBox manifest, its labels through the dataset's label_map.json; a CSV with IEMOCAP's codes
    (tmp_path / "savee" / "fold_1").mkdir(parents=True)
    (tmp_path / "savee" / "label_map.json").write_text(json.dumps({"a": "angry"}))
    manifest = tmp_path / "savee" / "fold_1" / "savee_test_fold_1.jsonl"
    manifest.write_text(json.dumps(dict(key="k", wav=str(wav), emo="a", speaker="JK")) + "\n")
    table = write_csv(tmp_path / "mine.csv", [[str(wav), "exc"], [str(wav), "Neutral"]])
    sets = crosscorpus.load([track2, manifest, table], [str(tmp_path / "RAVDESS")], corpus)
    assert [s.name for s in sets] == ["RAVDESS", "savee_test_fold_1", "mine"]
    assert [[u.label for u in s.utterances] for s in sets] == [["hap"], ["ang"], ["hap", "neu"]]
    assert sets[0].utterances[0].id == "RAVDESS/Actor_15/03-01-03.wav" and sets[0].utterances[0].speaker == "15"
    with pytest.raises(crosscorpus.CorpusError, match="--test-on .*RAVDESS_selected_balenced.jsonl: 1 of its 1 audio"):
        crosscorpus.load([track2], [], corpus)  # its paths start at the corpus's copy, not at the file
