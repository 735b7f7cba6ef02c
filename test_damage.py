"""Nothing the suite reads back ends in a traceback: damaged run files, a full disk, manifests as
spreadsheets save them, corpora too small to split. Each case is met through the command line, as
a user would, and ends in one line that names the file and what to do."""
import errno
import hashlib
import json
import os
import shutil
import subprocess
import types

import pytest
import torch
from safetensors.torch import load_file

import claims
import reproduce
import train
from conftest import TINY, cli, one_line_error
from settings import DiskFull


def numbers(run, job):
    """A finished job's metrics without its timings."""
    m = json.loads((run / job / "metrics.json").read_text())
    m["history"] = [{k: v for k, v in row.items() if k not in ("seconds", "audio_per_s")} for row in m["history"]]
    return m


def contents(folder):
    """{relative path: sha256} of every file under folder."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def cut_in_half(path):
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def args(corpus, out, *more):
    return [*TINY, "--demo-corpus", str(corpus), "--fold", "1", "--epochs", "2", "--out", str(out), *more]


@pytest.fixture(scope="module")
def finished(small_corpus, tmp_path_factory):
    """Fold 1, seeds 0 and 1, two epochs each, uninterrupted."""
    out = tmp_path_factory.mktemp("finished") / "run"
    done = cli("reproduce.py", *args(small_corpus, out, "--seeds", "2"))
    assert done.returncode == 0, done.stderr[-2000:]
    return out


@pytest.fixture(scope="module")
def interrupted(small_corpus, tmp_path_factory):
    """fold1/seed0 as `finished` trains it, stopped between its last epoch and its test: state.pt and
    best.safetensors of epoch 2 are on disk."""
    out = tmp_path_factory.mktemp("interrupted") / "run"
    with pytest.MonkeyPatch.context() as patch:
        def stop(*a, **kw):
            raise KeyboardInterrupt  # as Ctrl-C between the last epoch and the test
        patch.setattr(train, "load_best", stop)
        assert reproduce.main(args(small_corpus, out)) == 130
    assert (out / "fold1/seed0/state.pt").exists() and not (out / "fold1/seed0/metrics.json").exists()
    return out


@pytest.mark.parametrize("name, what_to_do", [
    ("state.pt", "delete it to train that job again from its first epoch"),
    ("best.safetensors", "state.pt to train that job again"),  # read when the job is tested
])
def test_a_damaged_file_of_a_job_is_named_with_what_to_do_and_nothing_changes(interrupted, name, what_to_do, tmp_path):
    copy = shutil.copytree(interrupted, tmp_path / "run")
    cut_in_half(copy / "fold1/seed0" / name)
    before = contents(copy)
    one_line_error(cli("reproduce.py", "--resume", "--out", copy), f"fold1/seed0/{name} is damaged", what_to_do)
    assert contents(copy) == before


def test_an_interrupted_job_resumed_after_its_last_epoch_gives_the_numbers_of_an_uninterrupted_one(finished, interrupted,
                                                                                                  tmp_path):
    copy = shutil.copytree(interrupted, tmp_path / "run")
    done = cli("reproduce.py", "--resume", "--out", copy)
    assert done.returncode == 0, done.stderr[-2000:]
    assert numbers(copy, "fold1/seed0") == numbers(finished, "fold1/seed0")


def test_a_damaged_config_json_is_named_and_nothing_changes(finished, tmp_path):
    copy = shutil.copytree(finished, tmp_path / "run")
    cut_in_half(copy / "config.json")
    before = contents(copy)
    for command in (["--resume"], ["--summary"]):
        one_line_error(cli("reproduce.py", *command, "--out", copy), "config.json is damaged", "start the run anew")
    assert contents(copy) == before


def test_the_summary_names_a_damaged_job_and_summarises_the_others(finished, tmp_path):
    copy = shutil.copytree(finished, tmp_path / "run")
    cut_in_half(copy / "fold1/seed1/metrics.json")
    damaged = (copy / "fold1/seed1/metrics.json").read_bytes()
    done = cli("reproduce.py", "--summary", "--out", copy)
    assert done.returncode == 0, done.stderr
    assert "1 of 2 jobs finished, 1 damaged: fold1/seed1/metrics.json (delete such a job's folder" in done.stdout
    results = json.loads((copy / "results.json").read_text())
    assert results["damaged"] == ["fold1/seed1/metrics.json"] and results["finished"] == 1
    assert results["folds"][0]["ua"] == numbers(finished, "fold1/seed0")["ua"]  # the other job, summarised
    assert (copy / "fold1/seed1/metrics.json").read_bytes() == damaged


def test_a_full_disk_while_writing_the_state_leaves_the_last_one_and_resume_finishes_the_job(small_corpus, finished,
                                                                                               tmp_path, monkeypatch, capsys):
    save, calls = torch.save, []

    def full_on_the_second(obj, f, *a, **kw):
        calls.append(1)
        if len(calls) == 2:  # epoch 2's state.pt
            f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return save(obj, f, *a, **kw)

    monkeypatch.setattr(torch, "save", full_on_the_second)
    assert reproduce.main(args(small_corpus, tmp_path / "run")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    job = tmp_path / "run/fold1/seed0"
    assert err == [f"error: cannot write {job / 'state.pt'}: no space left on device (the file it replaces is intact); "
                   "free some space, then continue with --resume and the same --out"]
    monkeypatch.undo()
    assert sorted(p.name for p in job.iterdir()) == ["best.safetensors", "model.json", "split", "state.pt", "tb"]  # no .tmp
    assert json.loads(torch.load(job / "state.pt", weights_only=True)["es"])["epoch"] == 1
    assert load_file(job / "best.safetensors")
    assert reproduce.main(["--resume", "--out", str(tmp_path / "run")]) == 0
    assert numbers(tmp_path / "run", "fold1/seed0") == numbers(finished, "fold1/seed0")


def test_a_full_disk_while_claiming_a_job_is_one_line_and_leaves_no_file(tmp_path, monkeypatch):
    job = tmp_path / "fold1/seed0"
    job.mkdir(parents=True)

    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(claims, "os", types.SimpleNamespace(**{**vars(os), "write": full}))  # the lock's content
    with pytest.raises(DiskFull, match="cannot write .*lock.*no space left on device"):
        claims.claim(job, resume=False)
    assert not list(job.iterdir())


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MiB tmpfs: room for a tiny job's first epoch, not for a second state.pt beside it."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    yield disk
    subprocess.run(["umount", "-l", str(disk)])


def test_a_real_full_disk_is_one_line_and_resume_finishes_once_space_is_freed(small_corpus, finished, small_disk):
    done = cli("reproduce.py", *args(small_corpus, small_disk / "run"))
    assert done.returncode == 2 and "no space left on device" in done.stderr and "Traceback" not in done.stderr
    assert not list(small_disk.rglob("*.tmp"))
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)  # space freed
    done = cli("reproduce.py", "--resume", "--out", small_disk / "run")
    assert done.returncode == 0, done.stderr[-2000:]
    assert numbers(small_disk / "run", "fold1/seed0") == numbers(finished, "fold1/seed0")


# ---- manifests as people save them, corpora too small for a validation part ----


def csv_corpus(small_corpus, path, n=None):
    """A CSV of the small corpus (path, label, speaker), its first n utterances if n."""
    from iemocap import read_iemocap
    utterances = read_iemocap(small_corpus)[:n]
    path.write_text("path,label,speaker\n" + "".join(f"{u.wav},{u.label},{u.speaker}\n" for u in utterances))
    return path


def test_a_manifest_saved_by_a_spreadsheet_reads_as_the_clean_one(small_corpus, tmp_path):
    import corpus as corpora
    clean = csv_corpus(small_corpus, tmp_path / "clean.csv")
    lines = clean.read_text().splitlines()
    cells = [[f"  {cell} " for cell in line.split(",")] for line in lines[1:]]
    sheet = tmp_path / "sheet.csv"  # a byte-order mark, CRLF, names in capitals, spaces around cells, empty rows
    sheet.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(["Path,LABEL, Speaker"] + [",".join(c) for c in cells]
                                                   + [",,", ""]).encode() + b"\r\n\r\n")
    a, b = (corpora.from_manifest(p, small_corpus, num_folds=5) for p in (clean, sheet))
    assert (a.classes, a.tests, a.utterances) == (b.classes, b.tests, b.utterances) and len(b.utterances) == len(lines) - 1
    tsv = tmp_path / "sheet.tsv"
    tsv.write_text("\n".join(line.replace(",", "\t") for line in lines) + "\n")
    assert corpora.from_manifest(tsv, small_corpus, num_folds=5).tests == a.tests
    listed = cli("reproduce.py", "--demo", "--manifest", sheet, "--num-folds", "5", "--out", tmp_path / "run", "--list-jobs")
    assert listed.returncode == 0 and len(listed.stdout.splitlines()) == 5, listed.stderr


def test_a_corpus_too_small_for_a_validation_part_is_refused_before_anything_is_written(small_corpus, tmp_path):
    small = csv_corpus(small_corpus, tmp_path / "small.csv", n=32)
    base = ["--demo", "--manifest", small, "--num-folds", "2", "--fold", "1", "--out", tmp_path / "run"]
    done = cli("reproduce.py", *base)
    one_line_error(done, "fold 1", "validation part of 2", "fewer than its 4 classes", "--val-fraction", "--classes")
    assert not (tmp_path / "run").exists()
    listed = cli("reproduce.py", *base, "--val-fraction", "0", "--list-jobs")  # the way out the message names
    assert listed.returncode == 0 and len(listed.stdout.splitlines()) == 1, listed.stderr
