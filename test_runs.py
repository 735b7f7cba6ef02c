"""Runs made of jobs (runs.py, reproduce.py): claims shared by processes, --list-jobs, --summary,
data parallel under torchrun, and the statistics of the summary."""
import fcntl
import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time

import pytest

import claims
import summary
from conftest import HERE, TINY, cli, curves


def numbers(run, job):
    """A finished job's metrics without its timings."""
    m = json.loads((run / job / "metrics.json").read_text())
    m["history"] = [{k: v for k, v in row.items() if k not in ("seconds", "audio_per_s")} for row in m["history"]]
    return m


def all_jobs(seeds):
    return [f"fold{f}/seed{s}" for s in range(seeds) for f in range(1, 6)]


@pytest.fixture(scope="module")
def single_run(small_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "run"
    done = cli("reproduce.py", *TINY, "--demo-corpus", small_corpus, "--fold", "all", "--out", out)
    assert done.returncode == 0, done.stderr[-2000:]
    return out


def test_a_run_writes_one_folder_per_job_and_the_summary_of_all(single_run):
    results = json.loads((single_run / "results.json").read_text())
    assert results["finished"] == results["expected"] == 5 and results["missing"] == []
    assert [f["fold"] for f in results["folds"]] == ["1", "2", "3", "4", "5"]
    assert sorted((r["fold"], r["seed"]) for r in results["runs"]) == [(str(f), 0) for f in range(1, 6)]
    assert results["ci95"] is None and results["std"] == {"wa": None, "ua": None}  # one seed: no spread
    assert "no confidence interval" in (single_run / "results.md").read_text()
    for job in all_jobs(1):
        assert {"metrics.json", "model.json", "split"} <= {p.name for p in (single_run / job).iterdir()}
        assert not (single_run / job / "lock").exists()
    assert (single_run / "results.png").read_bytes()[:4] == b"\x89PNG"


def test_list_jobs_lines_run_one_after_another_give_the_numbers_of_one_call(single_run, small_corpus, tmp_path):
    out = tmp_path / "listed"  # without TensorBoard: its numbers are those of single_run, which wrote event files
    listing = ["reproduce.py", *TINY, "--demo-corpus", small_corpus, "--fold", "all", "--out", out, "--list-jobs",
               "--no-tensorboard"]
    listed = cli(*listing)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert len(lines) == 5 and not out.exists()  # listing writes nothing
    for line in lines[1:4:2]:  # two of them (fold 2 and fold 4), each in a process of its own
        argv = shlex.split(line)
        assert argv[:2] == [sys.executable, str(HERE / "reproduce.py")] and "--resume" in argv
        done = subprocess.run(argv, capture_output=True, text=True, cwd="/", env={**os.environ, "HF_HUB_OFFLINE": "1"})
        assert done.returncode == 0, done.stderr[-2000:]
    for job in ("fold2/seed0", "fold4/seed0"):
        assert numbers(out, job) == numbers(single_run, job), job
        assert (single_run / job / "tb").is_dir() and not (out / job / "tb").exists()
    results = json.loads((out / "results.json").read_text())
    assert results["finished"] == 2 and results["expected"] == 5
    again = cli(*listing)  # the jobs not yet finished, and only those
    assert again.returncode == 0 and again.stdout.splitlines() == [lines[0], lines[2], lines[4]], again.stderr
    assert "3 of 5 jobs unfinished" in again.stderr


def test_two_processes_share_the_jobs_of_one_run_without_overlap(single_run, small_corpus, tmp_path):
    out = tmp_path / "shared"
    argv = [sys.executable, str(HERE / "reproduce.py"), *TINY, "--demo-corpus", str(small_corpus), "--fold", "all",
            "--seeds", "2", "--out", str(out)]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e[-2000:] for _, e in outputs]
    trained = [[line.split()[1] for line in stdout.splitlines() if line.startswith("--- ")] for stdout, _ in outputs]
    assert all(trained), "both processes trained some jobs"
    assert sorted(trained[0] + trained[1]) == sorted(all_jobs(2))  # every job exactly once
    results = json.loads((out / "results.json").read_text())
    assert results["finished"] == results["expected"] == 10 and len(results["runs"]) == 10
    assert results["ci95"] is not None and results["std"]["ua"] is not None
    for job in all_jobs(1):  # jobs do not depend on who trains them, nor on what else runs
        assert numbers(out, job) == numbers(single_run, job), job


def test_summary_of_a_half_finished_run_marks_what_is_missing(single_run, tmp_path):
    copy = shutil.copytree(single_run, tmp_path / "half")
    for job in ("fold2/seed0", "fold4/seed0"):
        (copy / job / "metrics.json").unlink()
    (copy / "results.md").unlink()
    done = cli("reproduce.py", "--summary", "--out", copy)
    assert done.returncode == 0, done.stderr
    assert "3 of 5 jobs finished. Missing: fold2/seed0, fold4/seed0." in done.stdout
    results = json.loads((copy / "results.json").read_text())
    assert (results["finished"], results["expected"]) == (3, 5)
    assert results["missing"] == ["fold2/seed0", "fold4/seed0"] and results["ci95"] is None
    assert [f["fold"] for f in results["folds"]] == ["1", "3", "5"]
    assert (copy / "results.md").read_text() == done.stdout


def test_a_job_held_by_a_live_process_or_another_host_is_not_taken(single_run, small_corpus, tmp_path):
    copy = shutil.copytree(single_run, tmp_path / "held")
    for job in ("fold1/seed0", "fold3/seed0"):
        (copy / job / "metrics.json").unlink()
    live = copy / "fold1/seed0/lock"
    live.write_text(json.dumps(dict(host=claims.HOST, pid=os.getpid(), since="now")))
    foreign = copy / "fold3/seed0/lock"
    foreign.write_text(json.dumps(dict(host="gpu-node-17", pid=4242, since="yesterday")))
    with open(live) as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as the process training the job holds it
        done = cli("reproduce.py", *TINY, "--demo-corpus", small_corpus, "--fold", "all", "--out", copy, "--resume")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "--- " not in done.stdout  # nothing trained
    assert f"fold1/seed0: being trained ({claims.HOST}, pid {os.getpid()}" in done.stderr
    assert f"fold3/seed0: held by gpu-node-17, pid 4242, since yesterday; if that process is gone, delete {foreign}" in done.stderr
    assert live.exists() and foreign.exists()
    assert not (copy / "fold1/seed0/metrics.json").exists()


def backdate(path, seconds):
    """Set a file's modification time `seconds` in the past, as if its last renewal were that old."""
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_a_lock_of_another_host_not_renewed_for_an_hour_is_taken_over_by_its_list_jobs_line(single_run, tmp_path):
    copy = shutil.copytree(single_run, tmp_path / "requeued")
    job = copy / "fold3/seed0"
    (job / "metrics.json").unlink()
    (job / "lock").write_text(json.dumps(dict(host="gpu-node-17", pid=4242, since="yesterday")))  # killed there
    backdate(job / "lock", 3600)
    done = cli("reproduce.py", "--out", copy, "--job", "fold3/seed0", "--resume")  # the job's --list-jobs line, here
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("--- ") == 1 and "--- fold3/seed0" in done.stdout
    assert numbers(copy, "fold3/seed0") == numbers(single_run, "fold3/seed0")
    assert not [p.name for p in job.iterdir() if p.name.startswith(("lock", ".now"))]  # no lock, no mark left


def test_a_lock_renewed_seconds_ago_is_respected_whoever_holds_it_and_a_single_job_waits_for_it(tmp_path):
    job = tmp_path / "fold3/seed0"
    job.mkdir(parents=True)
    lock = job / "lock"
    foreign = json.dumps(dict(host="gpu-node-17", pid=4242, since="yesterday"))
    for content, holder in [(foreign, "gpu-node-17, pid 4242, since yesterday"),
                            (foreign[:20], "an unknown process, its lock file damaged")]:  # cut in half: not JSON
        lock.write_text(content)
        backdate(lock, 5)
        held, why = claims.claim(job, resume=True)
        assert held is None and why[0] == "held", why
        assert why[1].startswith(f"held by {holder}; if that process is gone"), why
        assert "it was renewed 5 s ago" in why[1] and lock.read_text() == content
        backdate(lock, 3600)  # the same lock, dead: its age decides, whoever wrote it
        held, why = claims.claim(job, resume=False)
        assert held is None and why[0] == "interrupted", why
        assert f"(held by {holder}) was last renewed 60 min ago" in why[1], why
        held, why = claims.claim(job, resume=True)
        assert why is None and json.loads(lock.read_text())["pid"] == os.getpid()
        held.release()
        assert not list(job.iterdir())

    # one job asked for with --resume (a --list-jobs line) waits: a live holder renews its lock, a dead one lapses
    lock.write_text(foreign)
    renewing = threading.Event()

    def renew():  # as the claim of a live process on another host does (for 5 s: a wait that misses it ends)
        for _ in range(50):
            if renewing.wait(0.1):
                break
            os.utime(lock)

    holder = threading.Thread(target=renew)
    holder.start()
    start = time.monotonic()
    held, why = claims.claim(job, resume=True, lease=3, wait=True)
    renewing.set()
    holder.join()
    assert held is None and why[0] == "held" and time.monotonic() - start < 1.5, why
    backdate(lock, 1)
    start = time.monotonic()
    held, why = claims.claim(job, resume=True, lease=3, wait=True)
    assert why is None and 1.9 <= time.monotonic() - start < 3.5  # taken over once 3 s unrenewed
    held.release()


# Two processes that found one dead lock: each waits at the gate until both have judged it dead, then takes it over.
RACER = """
import os, sys, time
from pathlib import Path
import claims, reproduce
gate, take_over = Path(sys.argv[1]), claims._take_over
def at_the_gate(*a):
    (gate / str(os.getpid())).touch()
    for _ in range(1200):
        if len(list(gate.iterdir())) == 2:
            break
        time.sleep(0.05)
    return take_over(*a)
claims._take_over = at_the_gate
sys.exit(reproduce.main(sys.argv[2:]))
"""


def test_of_two_processes_racing_for_one_dead_lock_exactly_one_trains_the_job(single_run, tmp_path):
    copy = shutil.copytree(single_run, tmp_path / "race")
    job = copy / "fold2/seed0"
    (job / "metrics.json").unlink()
    (job / "lock").write_text(json.dumps(dict(host="gpu-node-17", pid=4242, since="yesterday")))
    backdate(job / "lock", 3600)
    gate = tmp_path / "gate"
    gate.mkdir()
    argv = [sys.executable, "-c", RACER, str(gate), "--out", str(copy), "--job", "fold2/seed0", "--resume"]
    procs = [subprocess.Popen(argv, cwd=HERE, env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e[-2000:] for _, e in outputs]
    assert len(list(gate.iterdir())) == 2  # both found the lock dead
    assert sorted(out.count("--- fold2/seed0") for out, _ in outputs) == [0, 1]
    assert sum("fold2/seed0: taken over by another process meanwhile" in err for _, err in outputs) == 1
    assert numbers(copy, "fold2/seed0") == numbers(single_run, "fold2/seed0")
    assert not [p.name for p in job.iterdir() if p.name.startswith(("lock", ".now"))]


def test_a_claim_renews_its_lock_through_a_step_longer_than_the_lease(small_corpus, tmp_path, monkeypatch):
    import reproduce
    import train
    seen = []

    def slow(cfg, corpus, audio, job, folder, rt, test_sets=()):  # one step of 1.5 s, the lease 0.6 s (--lease-minutes 0.01)
        time.sleep(1.5)
        seen.append((claims._now(folder) - os.stat(folder / "lock").st_mtime,
                     [t.daemon for t in threading.enumerate() if t.name.startswith("renews")]))

    monkeypatch.setattr(train, "run_job", slow)
    out = tmp_path / "run"
    assert reproduce.main([*TINY, "--demo-corpus", str(small_corpus), "--fold", "1", "--lease-minutes", "0.01",
                           "--out", str(out)]) == 0
    (age, renewers), = seen
    assert age < 0.6 and renewers == [True]  # renewed meanwhile, by a thread that cannot keep the process alive
    assert not (out / "fold1/seed0/lock").exists()
    assert not [t for t in threading.enumerate() if t.name.startswith("renews")]  # stopped with the release


def test_torchrun_two_processes_give_the_single_process_losses_and_scores(small_corpus, tmp_path):
    args = ["--demo", "--demo-corpus", small_corpus, "--fold", "2", "--epochs", "2", "--max-len", "16000",
            "--dropout", "0", "--augment", "none", "--precision", "fp32", "--grad-accum", "2"]
    one = cli("reproduce.py", *args, "--out", tmp_path / "one")
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          str(HERE / "reproduce.py"), *map(str, args), "--out", str(tmp_path / "two")],
                         capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
                         timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = numbers(tmp_path / "one", "fold2/seed0"), numbers(tmp_path / "two", "fold2/seed0")
    assert len(a["history"]) == 2
    for row_a, row_b in zip(a["history"], b["history"], strict=True):
        assert row_b["loss"] == pytest.approx(row_a["loss"], abs=1e-5)
    assert (a["wa"], a["ua"], a["confusion"]) == (b["wa"], b["ua"], b["confusion"])
    # one set of TensorBoard event files, rank 0's: every file of one process, the single-process steps
    files = sorted((tmp_path / "two").rglob("events.out.tfevents.*"))
    assert files and {f.parent for f in files} == {tmp_path / "two/fold2/seed0/tb"}
    assert len({f.name.split(".")[-2] for f in files}) == 1  # events.out.tfevents.<time>.<host>.<pid>.<n>
    one_tb, two_tb = curves(tmp_path / "one/fold2/seed0/tb"), curves(tmp_path / "two/fold2/seed0/tb")
    assert [s for s, _ in two_tb["train/loss"]] == [s for s, _ in one_tb["train/loss"]]
    assert [v for _, v in two_tb["train/loss"]] == pytest.approx([v for _, v in one_tb["train/loss"]], abs=1e-5)
    config = json.loads((tmp_path / "two" / "config.json").read_text())
    assert config["environment"]["world_size"] == 2
    assert two.stdout.count("--- fold2/seed0") == 1  # rank 0 alone prints


def test_more_processes_than_a_batch_holds_is_one_line(small_corpus, tmp_path):
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(HERE / "reproduce.py"), *TINY, "--demo-corpus", str(small_corpus), "--batch-size", "1",
                           "--out", str(tmp_path / "r")], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert done.returncode != 0
    assert done.stderr.count("error: torchrun started 2 processes, more than --batch-size 1") == 1
    assert 'reproduce.py", line' not in done.stderr  # torchrun reports the failure; the suite has no traceback
    assert not (tmp_path / "r").exists()


def fake_metrics(wa, ua):
    return dict(wa=wa, ua=ua, recall={"a": ua, "b": ua}, best_epoch=3, confusion=[[1, 0], [0, 1]], history=[])


def test_summary_statistics_of_three_seeds_by_hand():
    # LOSO score of a seed = mean of its folds: 0.70, 0.72, 0.74
    done = {}
    for seed, loso in enumerate([0.70, 0.72, 0.74]):
        done["1", seed] = fake_metrics(loso - 0.01, loso)
        done["2", seed] = fake_metrics(loso + 0.01, loso)
    config = dict(config=dict(demo=False), corpus=dict(name="test", classes=["a", "b"], paper=True))
    s = summary.aggregate(sorted(done), done, config)
    assert s["mean"]["ua"] == pytest.approx(0.72) and s["std"]["ua"] == pytest.approx(0.02)
    half = 4.302653 * 0.02 / 3 ** 0.5
    assert s["ci95"]["ua"] == pytest.approx([0.72 - half, 0.72 + half], abs=1e-6)
    assert s["mean"]["wa"] == pytest.approx(0.72) and s["ci95"]["wa"] == pytest.approx(s["ci95"]["ua"], abs=1e-9)
    assert [f["ua"] for f in s["folds"]] == pytest.approx([0.72, 0.72])
    assert s["folds"][0]["ua_std"] == pytest.approx(0.02)
    assert s["finished"] == s["expected"] == 6 and s["confusion"] == [[6, 0], [0, 6]]
    assert s["paper"] == {"wa": 0.7537, "ua": 0.7604}  # Table 3


def test_a_run_folder_from_before_the_backbone_flag_was_renamed_resumes_as_it_was(single_run, small_corpus, tmp_path):
    copy = shutil.copytree(single_run, tmp_path / "old")
    config = json.loads((copy / "config.json").read_text())
    config["config"] = {("hubert" if k == "backbone" else k): v for k, v in config["config"].items()}
    (copy / "config.json").write_text(json.dumps(config))
    (copy / "fold4/seed0/metrics.json").unlink()
    done = cli("reproduce.py", "--resume", "--out", copy)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("--- ") == 1 and "--- fold4/seed0" in done.stdout
    assert numbers(copy, "fold4/seed0") == numbers(single_run, "fold4/seed0")
