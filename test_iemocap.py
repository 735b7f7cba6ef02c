"""iemocap.py: reading a copy of IEMOCAP, checking it against the published counts, its command line."""
import os
import shutil
from collections import Counter
from pathlib import Path

import pytest

import iemocap
from conftest import cli, expected_counts, four_class, linked_copy
from iemocap import check_iemocap, count_utterances, read_iemocap
from settings import CorpusError


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
    with pytest.raises(CorpusError, match="not a folder"):
        read_iemocap(tmp_path / "nowhere")
    with pytest.raises(CorpusError, match="EmoEvaluation"):
        read_iemocap(tmp_path)


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
