"""Bad input fails fast and clearly: one line on stderr naming the flag, the value and what is
allowed, exit status 2, before any audio is decoded or any model is built, and nothing written
to --out."""
import json
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch
from transformers import HubertModel

import reproduce
import settings
import train
from conftest import cli, one_line_error
from model import tiny_config
from settings import UserError


@pytest.fixture(scope="module")
def two_layer_hubert(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hubert2")
    torch.manual_seed(0)
    HubertModel(tiny_config(num_hidden_layers=2)).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("bad, words", [
    (["--batch-size", "0"], ["--batch-size 0", ">= 1"]),
    (["--max-len", "100"], ["--max-len 100", ">= 400"]),
    (["--lr", "-1"], ["--lr -1", "> 0"]),
    (["--lease-minutes", "0"], ["--lease-minutes 0", "in (0, 30]"]),
    (["--batch-size", "2", "--grad-accum", "4"], ["--batch-size 2", "--grad-accum"]),
    (["--layers", "3", "--hubert", "HUBERT2"], ["--layers 3", "1..2"]),
    (["--out", "FILE"], ["--out", "is a file"]),
    (["--out", "/proc/ser-lam-check/run"], ["--out /proc/ser-lam-check/run", "cannot be written"]),
])
def test_a_bad_setting_is_one_line_naming_the_flag_and_nothing_is_written(bad, words, small_corpus, two_layer_hubert,
                                                                          tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    bad = [{"HUBERT2": str(two_layer_hubert), "FILE": str(tmp_path / "a-file")}.get(b, b) for b in bad]
    out = [] if "--out" in bad else ["--out", tmp_path / "run"]
    done = cli("reproduce.py", "--demo", "--demo-corpus", small_corpus, *out, *bad)
    one_line_error(done, *words)
    assert not (tmp_path / "run").exists()
    assert (tmp_path / "a-file").read_text() == "not a folder"


@pytest.mark.parametrize("script, bad, words", [
    ("reproduce.py", ["--fold", "9"], ["--fold 9", "9 is not a fold of synthetic IEMOCAP replica"]),
    ("ablate.py", ["--layers", "1", "--folds", "0"], ["--folds 0", "0 is not a fold"]),
    ("reproduce.py", ["--classes", "ang,joy"], ["--classes ang,joy", "ang, hap, sad, neu"]),
    ("reproduce.py", ["--layers", "3", "--hubert", "HUBERT2"], ["--layers 3", "1..2"]),
    ("reproduce.py", ["--out", "FILE"], ["--out", "is a file"]),
])
def test_a_bad_setting_with_demo_writes_not_even_the_synthetic_corpus(script, bad, words, two_layer_hubert, tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    bad = [{"HUBERT2": str(two_layer_hubert), "FILE": str(tmp_path / "a-file")}.get(b, b) for b in bad]
    out = [] if "--out" in bad else ["--out", tmp_path / "run"]
    one_line_error(cli(script, "--demo", "--demo-corpus", tmp_path / "corpus", *out, *bad), *words)
    assert not (tmp_path / "corpus").exists() and not (tmp_path / "run").exists()


def test_after_a_refused_setting_the_corrected_command_runs_in_the_same_folder(small_corpus, tmp_path):
    args = ["--demo", "--demo-corpus", small_corpus, "--fold", "3", "--epochs", "1", "--max-len", "8000",
            "--out", tmp_path / "run"]
    one_line_error(cli("reproduce.py", *args, "--lr", "-1"), "--lr -1")
    done = cli("reproduce.py", *args)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "run" / "fold3" / "seed0" / "metrics.json").exists()


def test_a_wav_holding_nan_stops_the_run_before_anything_is_written(small_corpus, tmp_path):
    copy = shutil.copytree(small_corpus, tmp_path / "copy")
    victim = sorted(copy.glob("Session2/sentences/wav/*/*.wav"))[3]
    x, rate = sf.read(victim, dtype="float32")
    x[100] = np.nan
    sf.write(victim, x, rate, subtype="FLOAT")
    done = cli("reproduce.py", "--iemocap", copy, "--allow-incomplete", "--hubert", "tiny", "--layers", "2",
               "--device", "cpu", "--out", tmp_path / "run")
    assert done.returncode == 2 and done.stderr.splitlines()[-1] == (
        f"error: {victim} holds NaN or infinite samples: a broken file, replace or remove it")
    assert "Traceback" not in done.stderr and not (tmp_path / "run").exists()


def test_a_real_run_without_a_gpu_stops_and_names_device_cpu(small_corpus, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    done = cli("reproduce.py", "--iemocap", small_corpus, "--allow-incomplete", "--hubert", "tiny", "--layers", "2",
               "--out", tmp_path / "run")
    assert done.returncode == 2 and "no GPU found" in done.stderr and "--device cpu" in done.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flag, value, allowed", [
    ("--dropout", "1", "in [0, 1)"), ("--mixup-p", "1.5", "in [0, 1]"), ("--mixup-lambda", "-0.1", "in [0, 1]"),
    ("--lr-center", "0", "> 0"), ("--adam-eps", "0", "> 0"), ("--beta1", "1", "in [0, 1)"), ("--beta2", "-0.5", "in [0, 1)"),
    ("--epochs", "0", ">= 1"), ("--patience", "0", ">= 1"), ("--val-fraction", "1", "in [0, 1)"), ("--seeds", "0", ">= 1"),
    ("--center-weight", "-1", ">= 0"), ("--grad-accum", "0", ">= 1"), ("--lr", "nan", "> 0"),
])
def test_every_range_is_checked(flag, value, allowed, tmp_path, capsys):
    code = reproduce.main(["--demo", flag, value, "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"error: {flag} ") and err.endswith(f": must be {allowed}\n")
    assert err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_two_spellings_of_one_swept_value_are_refused_before_they_share_a_folder(small_corpus, tmp_path):
    done = cli("ablate.py", "--demo", "--demo-corpus", small_corpus, "--hubert", "tiny", "./tiny", "--out", tmp_path / "abl")
    one_line_error(done, "backbone-tiny")
    assert not (tmp_path / "abl").exists()


def test_a_flag_of_the_wrong_type_is_one_line(tmp_path):
    one_line_error(cli("reproduce.py", "--demo", "--batch-size", "abc", "--out", tmp_path / "run"), "--batch-size", "abc")
    assert not (tmp_path / "run").exists()


def run_main(argv, capsys):
    code = reproduce.main([str(a) for a in argv])
    return code, capsys.readouterr().err


def test_no_corpus_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("IEMOCAP_ROOT", raising=False)
    code, err = run_main(["--out", tmp_path / "r"], capsys)
    assert code == 2 and "--iemocap" in err and "--demo" in err and err.count("\n") == 1


def test_a_folder_that_is_not_iemocap_is_refused(tmp_path, capsys):
    (tmp_path / "not_iemocap").mkdir()
    code, err = run_main(["--iemocap", tmp_path / "not_iemocap", "--out", tmp_path / "r"], capsys)
    assert code == 2 and "not_iemocap" in err and err.count("\n") == 1


def test_a_copy_with_other_counts_is_refused_without_allow_incomplete(small_corpus, tmp_path, capsys):
    code, err = run_main(["--iemocap", small_corpus, "--out", tmp_path / "r"], capsys)
    assert code == 2 and "--allow-incomplete" in err and "differs" in err


def test_an_unreadable_wav_is_named(small_corpus, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(small_corpus, copy)
    victim = sorted(copy.glob("Session1/sentences/wav/*/*.wav"))[0]
    victim.write_bytes(b"not a wav at all")
    code, err = run_main(["--iemocap", copy, "--allow-incomplete", "--hubert", "tiny", "--layers", "2",
                          "--workers", "0", "--fold", "1", "--device", "cpu", "--out", tmp_path / "r"], capsys)
    assert code == 2 and victim.name in err


def test_missing_hubert_weights_say_how_to_get_them(small_corpus, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, err = run_main(["--iemocap", small_corpus, "--allow-incomplete", "--hubert", tmp_path / "no_such_folder",
                          "--workers", "0", "--fold", "1", "--out", tmp_path / "r"], capsys)
    assert code == 2 and "download" in err and "--demo" in err


def test_a_nan_loss_stops_the_fold_with_a_message(small_corpus, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(train, "recognition_loss", lambda logits, targets: logits.sum() * float("nan"))
    code, err = run_main(["--demo", "--demo-corpus", small_corpus, "--fold", "1", "--epochs", "1", "--max-len", "8000",
                          "--out", tmp_path / "r"], capsys)
    assert code == 1 and "the loss became nan" in err
    assert not (tmp_path / "r" / "results.json").exists()
    # no job got through an epoch: the corrected command (another --lr) runs in the same folder
    monkeypatch.undo()
    code, err = run_main(["--demo", "--demo-corpus", small_corpus, "--fold", "1", "--epochs", "1", "--max-len", "8000",
                          "--lr", "1e-4", "--out", tmp_path / "r"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "r" / "config.json").read_text())["config"]["lr"] == 1e-4
    # once a job has trained, other settings are refused
    code, err = run_main(["--demo", "--demo-corpus", small_corpus, "--fold", "2", "--lr", "3e-4", "--out", tmp_path / "r"],
                         capsys)
    assert code == 2 and "holds a run with other settings (--lr 0.0001 there, 0.0003 here)" in err


def test_bad_fold_is_refused(tmp_path, capsys):
    code, err = run_main(["--demo", "--fold", "6", "--out", tmp_path / "r"], capsys)
    assert code == 2 and "--fold" in err




def test_under_torchrun_a_rank_other_than_0_waits_before_it_says_an_error(monkeypatch, capsys):
    # rank 0 says the error every rank meets; another rank that exited at once could get rank 0 stopped first
    def fail():
        raise UserError("--lr -1.0: must be > 0")
    waits = []
    monkeypatch.setattr(settings.time, "sleep", waits.append)
    monkeypatch.setenv("RANK", "0")
    assert settings.guarded(fail) == 2 and waits == [] and capsys.readouterr().err == "error: --lr -1.0: must be > 0\n"
    monkeypatch.setenv("RANK", "1")  # torchrun stops it during the wait once rank 0 exits; alone, it says it after
    assert settings.guarded(fail) == 2 and waits == [30] and capsys.readouterr().err == "error: --lr -1.0: must be > 0\n"
