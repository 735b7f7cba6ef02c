"""The command lines of reproduce.py, ablate.py and bench.py, run as a user would on the synthetic replica."""
import csv
import dataclasses
import itertools
import json
import os
import re
import shlex
import subprocess
import sys

import pytest
import torch
from transformers import AutoModel, BertConfig, HubertModel

import bench
import checkpoints
import data
import reproduce
import runtime
import settings
import stats
from conftest import HERE, cli, curves
from corpus import OTHER_CORPUS
from model import FAMILIES, SERModel, tiny_config


def test_demo_learns_emotion_from_sound(replica, tmp_path):
    real = cli("reproduce.py", "--demo", "--fold", "5", "--demo-corpus", replica, "--out", tmp_path / "real",
               "--test-on", replica / OTHER_CORPUS)
    assert real.returncode == 0, real.stderr[-2000:]
    results = json.loads((tmp_path / "real" / "results.json").read_text())
    assert [f["fold"] for f in results["folds"]] == ["5"]
    assert results["mean"]["ua"] >= 0.60, real.stdout
    if torch.__version__.startswith("2.13."):  # README's demo table, digit for digit, on the torch CI uses
        fold = results["folds"][0]
        assert (round(100 * fold["wa"], 2), round(100 * fold["ua"], 2), fold["best_epoch"]) == (91.25, 90.10, 5)
    assert set(results) >= {"folds", "mean", "std"} and set(results["mean"]) == {"wa", "ua"}
    assert (tmp_path / "real" / "fold5" / "seed0" / "best.safetensors").exists()
    assert not (tmp_path / "real" / "fold5" / "seed0" / "state.pt").exists()
    # other voices, channel, room and level (synthetic.OTHER_CORPUS): the model learned less of them
    assert results["targets"]["other-corpus"]["ua"]["mean"] <= results["mean"]["ua"] - 0.15, real.stdout


def test_shuffled_labels_stay_at_chance(replica, tmp_path):
    control = cli("reproduce.py", "--demo", "--fold", "5", "--demo-corpus", replica, "--out", tmp_path / "control",
                  "--shuffle-labels", "--test-on", replica / OTHER_CORPUS)
    assert control.returncode == 0, control.stderr[-2000:]
    results = json.loads((tmp_path / "control" / "results.json").read_text())
    assert results["mean"]["ua"] <= 0.45, control.stdout
    assert results["targets"]["other-corpus"]["ua"]["mean"] <= 0.45, control.stdout  # at chance there too


def test_resumed_run_ends_with_the_numbers_of_an_uninterrupted_one(small_corpus, tmp_path):
    args = ["--demo", "--fold", "2", "--demo-corpus", small_corpus, "--epochs", "3", "--patience", "3",
            "--max-len", "16000"]
    whole = cli("reproduce.py", *args, "--out", tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr[-2000:]

    proc = subprocess.Popen([sys.executable, str(HERE / "reproduce.py"), *map(str, args), "--out", tmp_path / "cut"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in proc.stdout:
        if "epoch   1" in line:  # printed once the state of epoch 1 is on disk
            proc.kill()
            break
    proc.wait()
    assert (tmp_path / "cut" / "fold2" / "seed0" / "state.pt").exists()
    assert not (tmp_path / "cut" / "results.json").exists()

    again = cli("reproduce.py", *args, "--out", tmp_path / "cut")
    assert again.returncode == 2 and "--resume" in again.stderr
    resumed = cli("reproduce.py", "--out", tmp_path / "cut", "--resume")  # the run folder holds its settings
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed after epoch 1" in resumed.stdout
    a = json.loads((tmp_path / "whole" / "results.json").read_text())
    b = json.loads((tmp_path / "cut" / "results.json").read_text())
    assert a == b
    history = lambda run: [{k: v for k, v in row.items() if k not in ("seconds", "audio_per_s")}
                           for row in json.loads((tmp_path / run / "fold2" / "seed0" / "metrics.json").read_text())["history"]]
    assert history("whole") == history("cut")

    # TensorBoard: a loss point per step, a validation point at the last step of each epoch, and the
    # resumed job's curves are the uninterrupted one's, each step once
    whole, cut = (curves(tmp_path / run / "fold2" / "seed0" / "tb") for run in ("whole", "cut"))
    steps = -(-json.loads((tmp_path / "whole/fold2/seed0/metrics.json").read_text())["n_train"] // 16)  # per epoch
    assert [step for step, _ in whole["train/loss"]] == list(range(1, 3 * steps + 1))
    assert [step for step, _ in whole["val/WA"]] == [steps, 2 * steps, 3 * steps]
    assert [v for _, v in whole["val/WA"]] == pytest.approx([row["val_wa"] for row in history("whole")])
    assert [v for _, v in whole["train/epoch_loss"]] == pytest.approx([row["loss"] for row in history("whole")])
    for tag in ("train/loss", "train/L_r", "train/L_c", "train/lr", "train/epoch_loss", "val/WA", "val/UA", "test/WA"):
        assert cut[tag] == whole[tag], tag


def test_a_job_stopped_early_and_killed_before_its_test_trains_no_more_epochs_on_resume(small_corpus, tmp_path,
                                                                                         monkeypatch, capsys):
    # lr 1e-12: the second epoch cannot improve validation WA, so patience 1 stops the job after it
    args = ["--demo", "--fold", "2", "--demo-corpus", str(small_corpus), "--epochs", "4", "--patience", "1",
            "--lr", "1e-12", "--max-len", "8000", "--out", str(tmp_path / "run")]

    def killed(*a, **kw):
        raise KeyboardInterrupt  # as Ctrl-C between the last epoch and the test

    monkeypatch.setattr(checkpoints, "load_file", killed)
    assert reproduce.main(args) != 0
    job = tmp_path / "run" / "fold2" / "seed0"
    assert (job / "state.pt").exists() and not (job / "metrics.json").exists()
    monkeypatch.undo()
    assert reproduce.main(args + ["--resume"]) == 0, capsys.readouterr().err
    epochs = [row["epoch"] for row in json.loads((job / "metrics.json").read_text())["history"]]
    assert epochs == [1, 2] and "early stop" in capsys.readouterr().out


def test_layer_sweep_writes_table_csv_and_plot_and_skips_finished_cells(small_corpus, tmp_path):
    args = ["--demo", "--demo-corpus", small_corpus, "--layers", "1", "2", "--epochs", "1", "--max-len", "16000",
            "--out", tmp_path / "abl"]
    first = cli("ablate.py", *args)
    assert first.returncode == 0, first.stderr[-2000:]
    table = (tmp_path / "abl" / "ablation.md").read_text()
    assert "| layers | jobs | WA (%) | UA (%)" in table and table.count("\n| 1 | 1 |") == 1 and table.count("\n| 2 | 1 |") == 1
    rows = (tmp_path / "abl" / "ablation.csv").read_text().splitlines()
    assert rows[0].startswith("layers,wa_mean") and len(rows) == 3
    assert (tmp_path / "abl" / "ablation.png").read_bytes()[:4] == b"\x89PNG"
    for k in (1, 2):
        cfg = json.loads((tmp_path / "abl" / f"layers-{k}" / "config.json").read_text())["config"]
        assert cfg["layers"] == k and cfg["epochs"] == 1 and cfg["val_fraction"] == 0.0 and cfg["mixup"] == "none"
        assert (tmp_path / "abl" / f"layers-{k}" / "fold5" / "seed0" / "metrics.json").exists()

    second = cli("ablate.py", *args)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "--- " not in second.stdout and "epoch   1" not in second.stdout
    assert (tmp_path / "abl" / "ablation.md").read_text() == table

    listed = cli("ablate.py", *args[:-1], tmp_path / "listed", "--list-jobs")  # the same sweep, job by job
    assert listed.returncode == 0, listed.stderr[-2000:]
    lines = listed.stdout.splitlines()
    assert len(lines) == 2 and not (tmp_path / "listed").exists()
    for line in lines:
        done = subprocess.run(shlex.split(line), capture_output=True, text=True, cwd="/",
                              env={**os.environ, "HF_HUB_OFFLINE": "1"})
        assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "listed" / "ablation.csv").read_text() == (tmp_path / "abl" / "ablation.csv").read_text()


def test_a_killed_ablation_continues_with_resume_and_out_alone_to_the_same_report(small_corpus, tmp_path):
    args = ["--demo", "--demo-corpus", small_corpus, "--layers", "1", "2", "--epochs", "2", "--max-len", "16000"]
    whole = cli("ablate.py", *args, "--out", tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr[-2000:]

    proc = subprocess.Popen([sys.executable, str(HERE / "ablate.py"), *map(str, args), "--out", tmp_path / "cut"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in proc.stdout:
        if "epoch   1" in line:  # the first job's first epoch is on disk (state.pt)
            proc.kill()
            break
    proc.wait()
    assert (tmp_path / "cut" / "layers-1" / "fold5" / "seed0" / "state.pt").exists()
    assert not (tmp_path / "cut" / "ablation.md").exists()

    resumed = cli("ablate.py", "--resume", "--out", tmp_path / "cut")  # the folder remembers its sweep
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed after epoch 1" in resumed.stdout and resumed.stdout.count("--- ") == 2
    assert (tmp_path / "cut" / "ablation.md").read_text() == (tmp_path / "whole" / "ablation.md").read_text()


def test_table2_runs_its_seven_rows_with_the_paper_settings(small_corpus, tmp_path):
    done = cli("ablate.py", "--demo", "--demo-corpus", small_corpus, "--table2", "--epochs", "1", "--max-len", "8000",
               "--layers", "1", "--out", tmp_path / "t2")
    assert done.returncode == 0, done.stderr[-2000:]
    cells = sorted((tmp_path / "t2").glob("*/config.json"))
    assert len(cells) == 7
    settings = {tuple(json.loads(p.read_text())["config"][k] for k in ("pooling", "mixup", "center_weight", "augment",
                                                                       "val_fraction"))
                for p in cells}
    assert settings == {("avg", "none", 0.0, "none", 0.1), ("first", "none", 0.0, "none", 0.1),
                        ("first", "conventional", 0.0, "authors", 0.1), ("first", "adaptive", 0.0, "authors", 0.1),
                        ("first", "adaptive", 0.0005, "authors", 0.1), ("first", "adaptive", 0.001, "authors", 0.1),
                        ("first", "adaptive", 0.002, "authors", 0.1)}
    table = (tmp_path / "t2" / "ablation.md").read_text()
    assert table.count("\n| ") == 8 and "74.86" in table and "70.91" in table  # header + 7 rows, paper beside ours
    rows = [line for line in table.splitlines() if line.startswith("| first") or line.startswith("| avg")]
    assert "(reference)" in rows[2] and "conventional" in rows[2]  # Sec. 3.4's claim: compared with conventional mixup
    assert "Reference: row 3" in table


def test_ablation_over_two_folds_and_two_seeds_pairs_jobs_and_reruns_nothing(small_corpus, tmp_path):
    args = ["--demo", "--demo-corpus", small_corpus, "--mixup", "conventional", "adaptive", "--folds", "1", "5",
            "--seeds", "2", "--epochs", "1", "--max-len", "8000", "--out", tmp_path / "abl"]
    first = cli("ablate.py", *args)
    assert first.returncode == 0, first.stderr[-2000:]
    trained = sorted(line.split()[1] for line in first.stdout.splitlines() if line.startswith("--- "))
    assert trained == sorted(f"mixup-{m}_augment-authors/fold{f}/seed{s}" for m in ("conventional", "adaptive")
                             for f in (1, 5) for s in (0, 1))
    header = (tmp_path / "abl" / "ablation.csv").read_text().splitlines()[0].split(",")
    for m in ("wa", "ua"):
        assert {f"{m}_mean", f"{m}_std", f"{m}_lo", f"{m}_hi", f"d_{m}", f"d_{m}_lo", f"d_{m}_hi", f"p_{m}"} <= set(header)
    assert "jobs" in header
    with open(tmp_path / "abl" / "ablation.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["jobs"] for r in rows] == ["4", "4"] and float(rows[0]["d_ua"]) == 0.0
    # the adaptive row's paired differences, worked by hand from the jobs' metrics.json
    cell = lambda m: tmp_path / "abl" / f"mixup-{m}_augment-authors"
    job = lambda m, f, s: cell(m) / f"fold{f}/seed{s}/metrics.json"
    score = lambda m, f, s, k: json.loads(job(m, f, s).read_text())[k]
    pairs = [(f, s) for f in (1, 5) for s in (0, 1)]

    def check_pairs(rows):
        for k in ("wa", "ua"):
            d = [100 * (score("adaptive", f, s, k) - score("conventional", f, s, k)) for f, s in pairs]
            assert float(rows[1][f"d_{k}"]) == pytest.approx(sum(d) / 4, abs=1e-4)  # adaptive minus conventional
            flips = [abs(sum(sign * x for sign, x in zip(signs, d))) / 4 for signs in itertools.product((1, -1), repeat=4)]
            p = sum(f >= abs(sum(d)) / 4 - 1e-9 for f in flips) / 16  # the exact sign-flip p: 16 sign patterns
            assert float(rows[1][f"p_{k}"]) == pytest.approx(p, abs=1e-4)
            lo, hi = float(rows[1][f"d_{k}_lo"]), float(rows[1][f"d_{k}_hi"])
            assert [lo, hi] == pytest.approx(stats.bootstrap_interval(d), abs=1e-4)  # of these pairs, this sign
        return d

    check_pairs(rows)  # one epoch of the tiny model may score both cells alike: then d is all zeros
    for name in ("ablation.png", "ablation_diff.png"):
        assert (tmp_path / "abl" / name).read_bytes()[:4] == b"\x89PNG"
    table = (tmp_path / "abl" / "ablation.md").read_text()
    assert "folds 1, 5 x seeds 0, 1" in table and "(reference)" in table

    # scores that surely differ, of both signs: a second run trains nothing and rebuilds the report from them
    for (f, s), planted in zip(pairs, (2.5, -1.0, 4.0, 0.5)):
        for m, base in (("conventional", 0.5), ("adaptive", 0.5 + planted / 100)):
            metrics = json.loads(job(m, f, s).read_text())
            metrics.update(wa=base, ua=base - 0.1)
            job(m, f, s).write_text(json.dumps(metrics))
    second = cli("ablate.py", *args)
    assert second.returncode == 0 and "--- " not in second.stdout, second.stderr[-2000:]
    with open(tmp_path / "abl" / "ablation.csv") as f:
        rows = list(csv.DictReader(f))
    assert check_pairs(rows) == pytest.approx([2.5, -1.0, 4.0, 0.5]) and float(rows[1]["p_ua"]) == pytest.approx(6 / 16)


# ==== bench.py: the fast path computes what the default path computes ====

CPU = torch.device("cpu")
# 1 s items and max_len 1 s: fixed padding adds nothing, so both paths see the same samples
DEFAULT = settings.Config(padding="fixed", max_len=16_000, precision="fp32")
FAST = settings.Config(padding="dynamic", max_len=16_000, precision="bf16")


def tiny_model(pooling="first"):
    torch.manual_seed(0)
    return SERModel(HubertModel(tiny_config()), layers=3, pooling=pooling).eval()  # eval: no dropout


def run(model, waves, cfg):
    """(z, logits) in fp32 for waveforms padded and autocast as reproduce.py does under cfg."""
    x, mask = data.pad(waves, [len(w) for w in waves], cfg.padding, cfg.max_len)
    with torch.no_grad(), runtime.autocast(cfg.precision, CPU):
        z, logits = model(x, mask)
    return z.float(), logits.float()


def test_fast_bf16_logits_equal_default_fp32_logits_within_bf16_tolerance_on_an_unpadded_batch():
    torch.manual_seed(1)
    waves = [0.1 * torch.randn(16_000) for _ in range(3)]
    model = tiny_model()
    _, default = run(model, waves, DEFAULT)
    _, fast = run(model, waves, FAST)
    assert not torch.equal(fast, default)  # bf16 did run
    # bf16 keeps 8 bits of mantissa (rtol 1.6e-2 is torch's own bf16 tolerance); logits near 0
    # need an absolute bound, 2% of the largest logit
    torch.testing.assert_close(fast, default, rtol=1.6e-2, atol=0.02 * default.abs().max().item())


def test_dynamic_padding_with_an_all_ones_mask_equals_fixed_padding_without_mask_in_fp32():
    torch.manual_seed(1)
    waves = [0.1 * torch.randn(16_000) for _ in range(3)]
    model = tiny_model()
    assert data.pad(waves, [16_000] * 3, FAST.padding, FAST.max_len)[1].all()  # the fast path does pass a mask, of ones
    z, logits = run(model, waves, DEFAULT)
    z_fast, logits_fast = run(model, waves, dataclasses.replace(FAST, precision="fp32"))
    torch.testing.assert_close(z_fast, z, rtol=0, atol=1e-5)
    torch.testing.assert_close(logits_fast, logits, rtol=0, atol=1e-5)


@pytest.mark.parametrize("pooling", ["first", "avg"])
def test_an_unpadded_item_has_the_same_pooled_feature_alone_and_beside_a_longer_neighbour(pooling):
    torch.manual_seed(2)
    item, neighbour = 0.1 * torch.randn(12_345), 0.1 * torch.randn(30_000)
    model = tiny_model(pooling)
    fp32 = dataclasses.replace(FAST, precision="fp32", max_len=100_000)
    z_alone, logits_alone = run(model, [item], fp32)
    z_batch, logits_batch = run(model, [item, neighbour], fp32)  # item padded by 17,655 masked zeros
    torch.testing.assert_close(z_batch[:1], z_alone, rtol=0, atol=1e-5)
    torch.testing.assert_close(logits_batch[:1], logits_alone, rtol=0, atol=1e-5)


def test_flop_count_of_one_more_layer_is_six_per_matmul_weight_per_frame_plus_attention():
    config = tiny_config()
    layer = HubertModel(config).encoder.layers[0]
    weights = sum(m.weight.numel() for m in layer.modules() if isinstance(m, torch.nn.Linear))  # Q, K, V, O, FF
    T = (16_000 - 400) // 320 + 1
    extra = bench.train_flops(config, 2, 16_000) - bench.train_flops(config, 1, 16_000)
    assert extra == 3 * (2 * T * weights + 4 * T * T * config.hidden_size)


def test_flop_count_of_a_one_layer_tiny_model_on_one_second_is_worked_by_hand():
    # tiny_config: conv 32 channels x 7 with kernels 10,3,3,3,3,2,2 and strides 5,2,2,2,2,2,2; hidden 64,
    # feed-forward 128, positional convolution of kernel 16 in 4 groups; 16,000 samples
    frames = [3199, 1599, 799, 399, 199, 99, 49]  # (T - kernel) // stride + 1, layer by layer
    conv = 2 * 3199 * 1 * 32 * 10 + sum(2 * t * 32 * 32 * k for t, k in zip(frames[1:], (3, 3, 3, 3, 2, 2)))
    assert conv == 21_060_992
    projection = 2 * 49 * 32 * 64  # 200,704
    positional = 2 * 49 * 64 * 16 * 16  # each output channel sees 16 of 64 inputs over 16 taps: 1,605,632
    layer = 2 * 49 * (4 * 64 * 64 + 2 * 64 * 128) + 2 * 2 * 49 * 49 * 64  # Q, K, V, O, feed-forward; QK^T and AV
    heads = 2 * (64 * 64 + 64 * 4)  # f0 and f1
    assert bench.train_flops(tiny_config(), 1, 16_000) == 3 * (conv + projection + positional + layer + heads) == 80_105_856


def test_bench_quick_runs_and_its_last_line_is_the_speedup(tmp_path):
    done = cli("bench.py", "--quick", "--corpus", tmp_path / "replica", timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert re.fullmatch(r"speedup fast/authors: \d+\.\d\dx on .+", lines[-1]), lines[-1]
    header = max(k for k, line in enumerate(lines) if line.startswith("| variant |"))  # the table just before it
    rows = [line.split(" | ")[0].strip("| ") for line in lines[header + 2:-1]]
    assert rows[:2] == ["authors", "default"] and rows[-1] == "fast" and set(rows) <= {"authors", "default", "fast fp32", "fast"}
    cells = {row: line.strip("| ").split(" | ") for row, line in zip(rows, lines[header + 2:-1])}
    audio = {row: float(c[5]) for row, c in cells.items()}  # the table's audio s/s column
    speedup = float(re.search(r"(\d+\.\d\d)x", lines[-1]).group(1))
    assert cells["fast"][-1] == f"{speedup:.2f}x"  # the last line is the fast row's ratio
    assert speedup == pytest.approx(audio["fast"] / audio["authors"], abs=0.01 + 0.01 * speedup)  # up to the table's rounding


def test_the_grad_accum_that_fits_is_the_smallest_whose_micro_batch_fits_with_the_allowance():
    need = lambda micro, g: 5.0 + micro + (0.5 if g > 1 else 0)  # GiB of a step's tensors; ALLOWANCE 1.5 on top
    assert bench.fits(need, 24) == (1, 16, 22.5)
    assert bench.fits(need, 12) == (4, 4, 11.0)
    assert bench.fits(need, 10) == (8, 2, 9.0)  # micro-batch 4 needs 9 + 0.5 + 1.5
    assert bench.fits(need, 7.5) is None  # 6 + 0.5 + 1.5 at micro-batch 1
    a, b, worst = bench.fit_line([(1, 6.0), (2, 7.5), (4, 10.5)])
    assert (round(a, 6), round(b, 6), round(worst, 6)) == (4.5, 1.5, 0.0)


def test_the_memory_summary_adds_what_grad_accum_holds_besides_its_micro_batch(capsys):
    # HuBERT-Large's figures on a CPU (docs/performance.md): fp32 1, 2, 4 and batch 4 in 4 micro-batches of 1
    measured = {("fp32", 1, 1): 5.23, ("fp32", 2, 1): 6.02, ("fp32", 4, 1): 7.41, ("fp32", 4, 4): 5.77,
                ("bf16", 1, 1): 5.48, ("bf16", 2, 1): 5.78, ("bf16", 4, 1): 6.42, ("bf16", 4, 4): 5.81}
    bench.summarise_memory(measured, (1, 2, 4))
    rows = {line.split(" | ")[0]: line for line in capsys.readouterr().out.splitlines() if " GB | " in line}
    # fp32 at micro-batch 8: 4.54 + 0.722 x 8 = 10.31, + 0.54 held across micro-batches + 1.5 > 12
    assert rows["| 12 GB"].endswith("| --grad-accum 4 (micro-batch 4, 9.4 GiB) |")
    assert rows["| 16 GB"].endswith("| --grad-accum 2 (micro-batch 8, 12.4 GiB) |")
    assert rows["| 24 GB"] == "| 24 GB | the defaults (11.7 GiB) | the defaults (17.6 GiB) |"


def test_bench_memory_quick_says_how_it_measured_and_what_fits(tmp_path):
    done = cli("bench.py", "--memory", "--quick", timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    assert "estimated from a CPU: growth of the peak resident memory" in out and "+ 1.5 GiB" in out
    rows = re.findall(r"^\| (fp32|bf16) \| (\d+) \| (\d+) \| (\d+) \| (\d+\.\d\d) \|$", out, re.M)
    assert [r[:4] for r in rows] == [(p, m, "1", m) for p in ("fp32", "bf16") for m in ("1", "2")]
    assert all(float(r[4]) > 0 for r in rows)  # the weights at least
    assert "reproduce.py --fold all with the defaults (batch 16" in out
    assert [line.split(" | ")[0] for line in out.splitlines() if line.endswith(" |") and " GB | " in line] == [
        f"| {size} GB" for size in bench.GPU_SIZES]


def test_authors_model_and_suite_model_of_the_bench_compute_the_same_logits_on_the_same_weights():
    authors = bench.build("authors", {}, 3, CPU).eval()  # all 4 layers run, hidden_states[3] taken
    suite = bench.build("suite", {}, 3, CPU).eval()  # 3 layers
    assert len(authors.backbone.encoder.layers) == 4 and len(suite.backbone.encoder.layers) == 3
    x = 0.1 * torch.randn(2, 20_000)
    with torch.no_grad():
        torch.testing.assert_close(authors(x)[1], suite(x)[1], rtol=0, atol=1e-5)


# ==== other backbones through the command line ====

@pytest.mark.parametrize("family", FAMILIES)
def test_a_tiny_checkpoint_of_each_family_in_a_folder_trains_a_demo_epoch(family, small_corpus, tmp_path):
    torch.manual_seed(0)
    AutoModel.from_config(tiny_config(family)).save_pretrained(tmp_path / family)
    done = cli("reproduce.py", "--demo", "--demo-corpus", small_corpus, "--backbone", tmp_path / family, "--layers", "2",
               "--fold", "1", "--epochs", "1", "--max-len", "8000", "--out", tmp_path / "run")
    assert done.returncode == 0, done.stderr[-2000:]
    model = json.loads((tmp_path / "run/fold1/seed0/model.json").read_text())["model"]
    assert model["backbone_config"]["model_type"] == family and model["backbone_config"]["num_hidden_layers"] == 2
    assert json.loads((tmp_path / "run/config.json").read_text())["config"]["backbone"] == str(tmp_path / family)
    metrics = json.loads((tmp_path / "run/fold1/seed0/metrics.json").read_text())  # written after training and testing
    assert [row["epoch"] for row in metrics["history"]] == [1] and metrics["n_test"] == sum(map(sum, metrics["confusion"]))


def test_a_checkpoint_of_another_family_is_refused_before_anything_is_written(small_corpus, tmp_path):
    BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64).save_pretrained(tmp_path / "bert")
    done = cli("reproduce.py", "--demo", "--demo-corpus", small_corpus, "--hubert", tmp_path / "bert", "--out", tmp_path / "run")
    assert done.returncode == 2 and len(done.stderr.splitlines()) == 1 and "'bert'" in done.stderr
    assert not (tmp_path / "run").exists()
