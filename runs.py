"""A run is a set of jobs, one per (fold, seed), each in its own folder under the run folder:

    RUN/config.json                 the settings, the corpus and where the run ran
    RUN/fold1/seed0/lock            a lease held while a process trains the job: {"host", "pid", "since"}
    RUN/fold1/seed0/split/          the utterance ids of its train, val and test parts (corpus.write_split)
    RUN/fold1/seed0/metrics.json    the finished job (never rerun)
    RUN/results.{json,md,png}       rebuilt from every finished job's metrics.json

Any number of processes, on any machines that see the folder, may work on one run at once:
each claims a job by creating its lock atomically and moves on to the next job when the lock
exists. A lock is a lease: its process renews it (sets its modification time to now) every tenth
of --lease-minutes, and a lock not renewed for --lease-minutes is dead, whichever host holds it.
The lock is also held with flock(2) while the job trains, so a lock whose process died is told
apart from a live one on the same host at once. A dead lock is taken over with --resume
(docs/runs.md, "Locks are leases").
"""
import fcntl
import itertools
import json
import os
import shlex
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

import paper
import stats
from audio import decode
from corpus import fold_key
from settings import RUN_ONLY, THIS_PROCESS, DamagedFile, UserError, check_out, flag, known
from util import (HOST, atomic_write, barrier, broadcast, environment, locked, pyplot, read_json, start_runtime,
                  summary_writer, world, write_json, writing)

PAPER = {m: round(v / 100, 4) for m, v in paper.TABLE3.items()}  # Table 3, as fractions like our scores
# flags whose value is a path: --list-jobs writes them absolute
PATHS = {"iemocap", "demo_corpus", "backbone", "manifest", "audio_root"}


@dataclass(frozen=True)
class Job:
    fold: str
    seed: int

    @property
    def name(self):
        return f"fold{self.fold}/seed{self.seed}"


def parse_job(text):
    """'fold3/seed1' -> Job('3', 1)."""
    try:
        fold, seed = text.strip("/").split("/")
        assert fold.startswith("fold") and seed.startswith("seed") and len(fold) > 4
        return Job(fold[4:], int(seed[4:]))
    except (ValueError, AssertionError):
        raise UserError(f"--job {text}: must look like fold3/seed1") from None


def jobs_on_disk(run):
    """Every job that some process registered in this run (its folder exists), by fold, then seed."""
    found = []
    for d in Path(run).glob("fold*/seed*"):
        if d.is_dir() and d.name[4:].isdigit():
            found.append(Job(d.parent.name[4:], int(d.name[4:])))
    return sorted(found, key=lambda j: (fold_key(j.fold), j.seed))


# ---------------------------------------------------------------------------- a run's settings


def saved_settings(out):
    """The settings in --out's config.json, for the flags not given: `--resume --out DIR` alone
    continues a run as it was started (where it runs, and on how many workers, stays this process's)."""
    path = Path(out) / "config.json" if out else None
    if not path or not path.exists():
        return {}
    saved = known(read_config(path)["config"])
    return {k: v for k, v in saved.items() if k not in THIS_PROCESS}


def read_config(path):
    """A run's config.json: its settings, its corpus and where it ran."""
    return read_json(path, "it holds the run's settings: copy it back from where the run was made, or start the "
                           "run anew in another --out", keys=("config", "corpus"))


def read_metrics(path):
    """A finished job's metrics.json."""
    return read_json(path, f"delete the job's folder ({Path(path).parent}) and rerun with --resume to train it again",
                     keys=("fold", "seed", "wa", "ua", "recall", "confusion", "best_epoch", "history"))


def recorded(cfg, rt=None, out=None):
    """The settings as config.json records them: the device and precision this process settled on."""
    settings = asdict(cfg)
    if rt is not None:
        settings.update(device=str(rt.device), precision=rt.precision, out=str(out))
    return settings


def write_config(cfg, rt, out, corpus):
    """config.json, written once (atomically, by whichever process comes first): the settings,
    the corpus and where they ran. A process whose settings differ is refused, unless no job of
    the folder has started: then a run that failed before training is rerun, corrected, in place."""
    path = Path(out) / "config.json"
    Path(out).mkdir(parents=True, exist_ok=True)
    changed = check_settings(cfg, out, rt)
    if path.exists() and not changed:
        return
    resolved = dict(config=recorded(cfg, rt, out), corpus=dict(name=corpus.name, classes=list(corpus.classes),
                                                               paper=corpus.paper), environment=environment(rt.device))
    tmp = path.with_name(f"config.json.{HOST}-{os.getpid()}.tmp")
    try:
        with writing(path):
            tmp.write_text(json.dumps(resolved, indent=2) + "\n")
            if changed:
                os.replace(tmp, path)  # the folder's settings were never used: these replace them
            else:
                os.link(tmp, path)  # atomic, and fails if another process wrote it first
    except FileExistsError:
        check_settings(cfg, out, rt)
    finally:
        tmp.unlink(missing_ok=True)


def started(out):
    """Whether a job of the run folder has been claimed or trained."""
    return any((d / name).exists() for d in Path(out).glob("fold*/seed*") for name in ("lock", "state.pt", "metrics.json"))


def check_settings(cfg, out, rt=None):
    """Refuse a run folder whose config.json holds other settings than cfg (run-only fields aside)
    once a job has started. Returns the settings that differ (none were used yet, then)."""
    path = Path(out) / "config.json"
    if not path.exists():
        return []
    saved = known(read_config(path)["config"])
    mine = recorded(cfg, rt, out)
    changed = [k for k, v in mine.items() if k not in RUN_ONLY and saved.get(k) != v and
               not (k == "precision" and v == "auto")]
    if changed and started(out):
        shown = ", ".join(f"{flag(k)} {saved.get(k)} there, {mine[k]} here" for k in changed)
        raise UserError(f"{out} holds a run with other settings ({shown}): choose another --out")
    return changed


def command_lines(script, given, out, names):
    """One complete shell command per job name: python, the script, the settings as given (paths
    made absolute, so a line runs from any folder), --out, --job NAME and --resume. A flag left at
    None or False is not given, so the line gets its default as the call did."""
    head = [sys.executable, str(Path(script).absolute())]
    for k, v in given.items():
        if k in ("out", "resume", "list_jobs", "summary", "job") or v is None or v is False:
            continue
        head.append(flag(k))
        if v is not True:
            head += [str(Path(x).absolute()) if k in PATHS and Path(str(x)).exists() else str(x)
                     for x in (v if isinstance(v, list) else [v])]
    return [shlex.join(head + ["--out", str(Path(out).absolute()), "--job", name, "--resume"]) for name in names]


def list_jobs(script, given, out, names, configs):
    """--list-jobs: print the command line of each unfinished job among `names` (folders under out).
    configs: {folder under out: Config} of the run folders, checked first: a folder that would
    refuse the lines gets none listed."""
    check_out(out)
    for sub, cfg in configs.items():
        check_settings(cfg, Path(out) / sub)
    todo = [n for n in names if not (Path(out) / n / "metrics.json").exists()]
    for line in command_lines(script, given, out, todo):
        print(line)
    print(f"{len(todo)} of {len(names)} jobs unfinished in {out}", file=sys.stderr)


def start(configs, out, stamp, corpus, job_dirs):
    """What every process of a run does before its first job: join torchrun's group, settle the
    device, agree on the run folder (rank 0's: out, or runs/<time.strftime(stamp)>), check it and
    the settings, decode the audio (a broken wav stops here, before anything is written); rank 0
    then writes each config.json and registers every job's folder, so the summary counts jobs
    not started yet. configs: {folder under out: Config} ("" for out itself); job_dirs: folders
    under out. Returns (out, util.Runtime, the decoded audio)."""
    base = next(iter(configs.values()))
    rt = start_runtime(base.device, base.precision, base.batch_size, base.demo)
    out = Path(broadcast(str(out or Path("runs") / time.strftime(stamp))))
    check_out(out)
    for sub, cfg in configs.items():
        check_settings(cfg, out / sub, rt)
    if not base.no_tensorboard:
        summary_writer()  # tensorboard is installed (or one line says so), before the audio is decoded
    audio = decode(corpus.utterances)
    if rt.rank == 0:
        for sub, cfg in configs.items():
            write_config(cfg, rt, out / sub, corpus)
        for d in job_dirs:
            (out / d).mkdir(parents=True, exist_ok=True)
    barrier()
    return out, rt, audio


# ---------------------------------------------------------------------------- claims

RENEWALS = 10  # a claim renews its lock ten times per lease


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _now(folder):
    """The file system's time now: the modification time of a file touched in `folder`. A lock's age is
    measured against it, not against this machine's clock, so that machines whose clocks differ agree
    (an NFS server stamps both files with its own clock)."""
    probe = Path(folder) / f".now.{HOST}-{os.getpid()}"
    probe.touch()
    try:
        return os.stat(probe).st_mtime
    finally:
        probe.unlink(missing_ok=True)


def _fresh_stat(path):
    """os.stat of path, or None when it is gone. Opening the file makes an NFS client fetch its
    attributes afresh (close-to-open consistency) instead of answering from its cache."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        return os.fstat(fd)
    finally:
        os.close(fd)


def _look(lock):
    """(os.stat_result, holder, flock free) of the lock as it is now, or None when there is none.
    holder is what the lock file says ({"host", "pid", "since"}); {} when its content is damaged (not
    JSON, cut short): an unknown holder, whose lock its age alone judges."""
    try:
        fd = os.open(lock, os.O_RDWR)
    except FileNotFoundError:
        return None
    try:
        try:
            holder = json.loads(os.pread(fd, 1 << 16, 0))
        except ValueError:
            holder = {}
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # fails while its process (or a forked worker) lives
            free = True
        except BlockingIOError:
            free = False
        return os.fstat(fd), holder if isinstance(holder, dict) else {}, free
    finally:
        os.close(fd)


def _ago(seconds):
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.0f} h"


class Claim:
    """This process's hold on one job: the lock file, held with flock(2), and renewed (its modification
    time set to now) every `period` seconds by a daemon thread, which neither a long validation nor a
    long step delays, until release()."""

    def __init__(self, lock, fd, period):
        self.lock, self.fd, self.stopped = lock, fd, threading.Event()
        self.renewer = threading.Thread(target=self._renew, args=(period,), name=f"renews {lock}", daemon=True)
        self.renewer.start()

    def _renew(self, period):
        while not self.stopped.wait(period):
            try:
                os.utime(self.fd)
            except OSError:  # a file system that does not answer now: the next renewal tries again
                pass

    def release(self):
        self.stopped.set()
        self.renewer.join()
        try:
            if os.stat(self.lock).st_ino == os.fstat(self.fd).st_ino:  # not taken over after a lapse of this lease
                self.lock.unlink()
        except FileNotFoundError:
            pass
        os.close(self.fd)


def claim(job_dir, resume, lease=600.0, wait=False):
    """Try to take the job in job_dir. Returns (Claim, None) or (None, (kind, sentence)): kind is
    "finished", "held" (by a live process) or "interrupted" (its holder is dead: waits for --resume).
    A lock is dead when it was not renewed for `lease` seconds, whichever host holds it, or when it is
    this host's and no process holds its flock. wait: a live lock that its age alone judges (another
    host's) is watched until it is renewed (held) or lapses (then --resume takes it over)."""
    job_dir = Path(job_dir)
    lock, tmp = job_dir / "lock", job_dir / f"lock.{HOST}-{os.getpid()}.tmp"
    me = json.dumps(dict(host=HOST, pid=os.getpid(), since=time.strftime("%Y-%m-%d %H:%M:%S")))
    fd = None
    try:
        with writing(tmp):
            fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
            os.write(fd, me.encode())
            fcntl.flock(fd, fcntl.LOCK_EX)
            why = _claim(job_dir, lock, tmp, fd, resume, lease, wait)
    except BaseException:
        if fd is not None:
            os.close(fd)
        raise
    finally:
        tmp.unlink(missing_ok=True)
    if why:
        os.close(fd)
        return None, why
    held = Claim(lock, fd, lease / RENEWALS)
    if (job_dir / "metrics.json").exists():  # finished while we were claiming it
        held.release()
        return None, ("finished", "finished")
    if (job_dir / "state.pt").exists() and not resume:
        held.release()
        return None, ("interrupted", "interrupted: --resume continues it from its last finished epoch")
    return held, None


def _claim(job_dir, lock, tmp, fd, resume, lease, wait):
    """Make tmp (this process's lock file, open as fd) the job's lock: None when it is, else (kind, sentence)."""
    watched = None  # (inode, modification time) of the lock being waited on
    while not (job_dir / "metrics.json").exists():
        os.utime(fd)  # a lock is born renewed
        try:
            os.link(tmp, lock)  # atomic: fails when the lock exists, also over NFS
            return None
        except FileExistsError:
            seen = _look(lock)
        if seen is None:  # released meanwhile: finished, or free again
            continue
        st, holder, free = seen
        now = _now(job_dir)
        age, same = max(0.0, now - st.st_mtime), holder.get("host") == HOST
        where = (f"{holder['host']}, pid {holder.get('pid', '?')}, since {holder.get('since', '?')}"
                 if holder.get("host") else "an unknown process, its lock file damaged")
        if age <= lease and same and not free:
            return "held", f"being trained ({where}, renewed {_ago(age)} ago)"
        if age <= lease and not same:
            if wait and resume and watched in (None, (st.st_ino, st.st_mtime_ns)):
                if watched is None:
                    print(f"{job_dir}: held by {where}, renewed {_ago(age)} ago: waiting up to {_ago(lease - age)} "
                          "for it to be renewed (its process lives) or to lapse (then it is taken over)",
                          file=sys.stderr, flush=True)
                watched = st.st_ino, st.st_mtime_ns
                time.sleep(min(lease / RENEWALS, lease - age) + 0.01)
                continue
            return "held", (f"held by {where}; if that process is gone, delete {lock} and rerun with --resume, or "
                            f"rerun with --resume once it has gone {_ago(lease)} unrenewed (it was renewed "
                            f"{_ago(age)} ago)")
        if not resume:
            if age <= lease:  # this host's, and no process holds it
                pid = holder.get("pid")
                alive = "pid reused" if isinstance(pid, int) and pid > 0 and _pid_alive(pid) else "gone"
                return "interrupted", (f"interrupted, its process ({where}) is {alive}: "
                                       "--resume continues it from its last finished epoch")
            return "interrupted", (f"interrupted, its lock (held by {where}) was last renewed {_ago(age)} ago, more "
                                   f"than the lease of {_ago(lease)}: --resume continues it from its last finished "
                                   "epoch")
        if _take_over(lock, st, tmp, now, lease):
            return None
        return "held", "taken over by another process meanwhile"
    return "finished", "finished"


def _take_over(lock, dead, tmp, now, lease):
    """Replace the dead lock (`dead`: its os.stat) by tmp. Of the processes that found it dead at once,
    exactly one wins: the one whose os.link (atomic, also over NFS) creates a name unique to that
    dead lock, lock.dead-INODE-MTIME; then, if the lock is still that dead one, os.rename puts tmp in
    its place (atomic: the job is never without a lock, so no new claim slips in). The others find
    the name taken, or the lock replaced. Renaming the lock itself away first could move a live lock
    that replaced the dead one since it was judged; a link moves nothing. A winner killed between
    the two leaves its name behind, never renewed: older than a lease, the next one (.2, .3, ...)
    serves."""
    for n in itertools.count(1):
        mark = lock.with_name(f"lock.dead-{dead.st_ino}-{dead.st_mtime_ns}" + (f".{n}" if n > 1 else ""))
        try:
            os.link(tmp, mark)
        except FileExistsError:
            other = _fresh_stat(mark)
            if other is not None and now - other.st_mtime <= lease:
                return False  # another process is taking it over
            continue
        try:
            still = _fresh_stat(lock)
            if still is None or (still.st_ino, still.st_mtime_ns) != (dead.st_ino, dead.st_mtime_ns):
                return False  # taken over, released or renewed since it was judged
            os.rename(tmp, lock)
            return True
        finally:
            mark.unlink(missing_ok=True)


class Claims:
    """The jobs this process takes, in turn: `for job in Claims(out, jobs, resume, lease_minutes)` yields
    each job it could claim, held until the body of the loop is done with it, and skips the ones finished
    or held by another process (under torchrun rank 0 claims, and every rank gets the same jobs). A process
    with one job to do (--job, as every --list-jobs line) and --resume waits for a live lock of another
    host to be renewed or to lapse (runs.claim). Afterwards, tell_skipped() says why each job left alone
    was left."""

    def __init__(self, out, jobs, resume, lease_minutes, name=lambda job: job.name):
        self.out, self.jobs, self.resume, self.name = Path(out), jobs, resume, name
        self.lease, self.wait = 60 * lease_minutes, resume and len(jobs) == 1
        self.skipped = []  # (job folder, kind, sentence): "held" by others or "interrupted" (waits for --resume)

    def __iter__(self):
        for job in self.jobs:
            folder = self.out / self.name(job)
            held, why = claim(folder, self.resume, self.lease, self.wait) if world()[0] == 0 else (None, None)
            if not broadcast(held is not None):
                if world()[0] == 0 and why[0] != "finished":
                    self.skipped.append((folder, *why))
                continue
            try:
                yield job
            finally:
                if held:
                    held.release()

    def tell_skipped(self):
        """Say why each job left alone was left; interrupted ones end the call with exit status 2."""
        for folder, _, why in self.skipped:
            print(f"{folder.relative_to(self.out)}: {why}", file=sys.stderr)
        waiting = [kind for _, kind, _ in self.skipped if kind == "interrupted"]
        if waiting:
            raise UserError(f"{len(waiting)} interrupted job(s) left alone: rerun with --resume and --out {self.out}")


# ---------------------------------------------------------------------------- summary


def summarise(run):
    """results.json, results.md and results.png of the run folder, from every finished job's
    metrics.json. Serialised by flock(2) on RUN/.summary.lock: two processes finishing at
    once write in turn, and the later one reads what the earlier wrote. Returns the table."""
    run = Path(run)
    with locked(run / ".summary.lock"):
        config = read_config(run / "config.json")
        expected = [(j.fold, j.seed) for j in jobs_on_disk(run)]
        done, damaged = {}, []
        for fold, seed in expected:
            path = run / f"fold{fold}" / f"seed{seed}" / "metrics.json"
            if path.exists():
                try:
                    done[fold, seed] = read_metrics(path)
                except DamagedFile:  # the others are summarised; the table names this one
                    damaged.append(str(path.relative_to(run)))
        summary = aggregate(expected, done, config, damaged)
        table = markdown(summary)
        write_json(summary, run / "results.json")
        atomic_write(run / "results.md", lambda tmp: tmp.write_text(table))
        if done:
            plot(summary, done, run / "results.png")
    return table


def aggregate(expected, done, config, damaged=()):
    """The numbers of results.json: per fold mean +/- std over seeds; per seed the LOSO score
    (mean of its folds); over seeds the mean, std and Student-t 95 % interval of that score."""
    folds = sorted({f for f, _ in expected}, key=fold_key)
    seeds = sorted({s for _, s in expected})
    classes = config["corpus"]["classes"]
    per_fold = []
    for f in folds:
        runs = [done[f, s] for s in seeds if (f, s) in done]
        if not runs:
            continue
        entry = dict(fold=f, seeds=len(runs))
        for m in ("wa", "ua"):
            entry[m] = float(np.mean([r[m] for r in runs]))
            entry[f"{m}_std"] = stats.std([r[m] for r in runs])
        entry["recall"] = {c: float(np.mean([r["recall"][c] for r in runs])) for c in classes}
        entry["best_epoch"] = float(np.mean([r["best_epoch"] for r in runs]))
        per_fold.append(entry)
    complete = [s for s in seeds if all((f, s) in done for f in folds)]
    loso = {m: [float(np.mean([done[f, s][m] for f in folds])) for s in complete] for m in ("wa", "ua")}
    if complete:
        mean = {m: float(np.mean(loso[m])) for m in loso}
        std = {m: stats.std(loso[m]) for m in loso}
        ci95 = {m: stats.t_interval(loso[m]) for m in loso} if len(complete) >= 2 else None
    else:  # no seed has every fold yet: the mean of what there is, marked partial
        mean = {m: float(np.mean([e[m] for e in per_fold])) if per_fold else None for m in ("wa", "ua")}
        std, ci95 = {"wa": None, "ua": None}, None
    confusion = np.sum([r["confusion"] for r in done.values()], axis=0).tolist() if done else []
    return dict(folds=per_fold, mean=mean, std=std, ci95=ci95, loso_by_seed={str(s): {m: loso[m][k] for m in loso}
                                                                            for k, s in enumerate(complete)},
                seeds_complete=complete, finished=len(done), expected=len(expected),
                missing=[f"fold{f}/seed{s}" for f, s in expected if (f, s) not in done],
                damaged=list(damaged),
                runs=[dict(fold=f, seed=s, wa=r["wa"], ua=r["ua"], best_epoch=r["best_epoch"]) for (f, s), r in done.items()],
                classes=classes, confusion=confusion, corpus=config["corpus"]["name"],
                paper=PAPER if config["corpus"]["paper"] else None,
                demo=config["config"].get("demo", False))


def pct(x):
    return "-" if x is None else f"{100 * x:.2f}"


def markdown(s):
    lines = []
    if s["demo"]:
        lines += [f"--demo on the {s['corpus']}: a tiny random HuBERT and a short schedule; these numbers say the "
                  "pipeline works, not how IEMOCAP scores.", ""]
    n_seeds = len({r["seed"] for r in s["runs"]})
    damaged = (f", {len(s['damaged'])} damaged: {', '.join(s['damaged'])} (delete such a job's folder and rerun with "
               "--resume to train it again)") if s["damaged"] else ""
    unread = [m for m in s["missing"] if f"{m}/metrics.json" not in s["damaged"]]
    lines += [f"{s['finished']} of {s['expected']} jobs finished{damaged}." + (f" Missing: {', '.join(unread)}." if unread else ""),
              "", "| fold | WA (%) | UA (%) | best epoch | seeds |", "|---|---|---|---|---|"]
    pm = lambda m, e: pct(e[m]) + ("" if e[f"{m}_std"] is None else f" +/- {pct(e[f'{m}_std'])}")
    for e in s["folds"]:
        lines.append(f"| {e['fold']} | {pm('wa', e)} | {pm('ua', e)} | {e['best_epoch']:g} | {e['seeds']} |")
    k = len(s["seeds_complete"])
    if k:
        overall = lambda m: f"**{pct(s['mean'][m])}" + ("" if s["std"][m] is None else f" +/- {pct(s['std'][m])}") + "**"
        lines.append(f"| **mean of the folds** | {overall('wa')} | {overall('ua')} | | {k} |")
        if s["ci95"]:
            ci = lambda m: f"[{pct(s['ci95'][m][0])}, {pct(s['ci95'][m][1])}]"
            lines.append(f"| 95 % interval over seeds | {ci('wa')} | {ci('ua')} | | |")
    elif s["folds"]:
        lines.append(f"| mean of the finished folds (partial) | {pct(s['mean']['wa'])} | {pct(s['mean']['ua'])} | | |")
    if s["paper"]:
        lines.append(f"| paper (Table 3), one run | {pct(s['paper']['wa'])} | {pct(s['paper']['ua'])} | | |")
    lines.append("")
    if k >= 2:
        lines.append(f"+/- is the standard deviation over seeds: per fold of its test score, overall of the seeds' "
                     f"mean of the folds. The interval is Student's t over those {k} means ({k - 1} degrees of freedom).")
    elif k == 1 or n_seeds == 1:
        lines.append("One seed: no spread over seeds and no confidence interval; --seeds N repeats every fold.")
    if s["confusion"]:
        cls = s["classes"]
        lines += ["", "Pooled confusion matrix (rows: true, columns: predicted):", "",
                  "| | " + " | ".join(cls) + " |", "|---" * (len(cls) + 1) + "|"]
        lines += [f"| {c} | " + " | ".join(str(n) for n in row) + " |" for c, row in zip(cls, s["confusion"])]
    return "\n".join(lines) + "\n"


def plot(summary, done, path):
    """Learning curves of every job (one column per fold: training loss above, validation WA
    and UA below, one line per seed) and the pooled confusion matrix, row-normalised, counts
    in the cells."""
    plt = pyplot()

    folds = sorted({f for f, _ in done}, key=fold_key)
    n = len(folds)
    fig = plt.figure(figsize=(3 * n + 4.5, 6), layout="constrained")
    grid = fig.add_gridspec(2, n + 2)
    colours = plt.get_cmap("tab10")
    for c, fold in enumerate(folds):
        top, bottom = fig.add_subplot(grid[0, c]), fig.add_subplot(grid[1, c])
        for (f, seed), r in sorted(done.items()):
            if f != fold:
                continue
            epochs = [h["epoch"] for h in r["history"]]
            colour = colours(seed % 10)
            top.plot(epochs, [h["loss"] for h in r["history"]], color=colour, label=f"seed {seed}")
            if r["history"] and r["history"][0]["val_wa"] is not None:
                bottom.plot(epochs, [100 * h["val_wa"] for h in r["history"]], color=colour, label=f"WA seed {seed}")
                bottom.plot(epochs, [100 * h["val_ua"] for h in r["history"]], color=colour, ls="--", label=f"UA seed {seed}")
            bottom.axvline(r["best_epoch"], color=colour, lw=0.8, alpha=0.5)
        top.set_title(f"fold {fold}")
        top.set_xlabel("epoch")
        bottom.set_xlabel("epoch")
        if c == 0:
            top.set_ylabel("training loss (Eq. 6)")
            bottom.set_ylabel("validation WA (-) / UA (--), %")
        top.grid(alpha=0.3)
        bottom.grid(alpha=0.3)
    top.legend(fontsize=7)
    draw_confusion(fig.add_subplot(grid[:, n:]), summary["confusion"], summary["classes"],
                   f"pooled test confusion ({summary['finished']} jobs)")
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


def draw_confusion(ax, confusion, classes, title):
    """A confusion matrix (rows: true, columns: predicted), row-normalised, counts in the cells."""
    counts = np.array(confusion)
    rates = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(counts)):
        for j in range(len(counts)):
            ax.text(j, i, f"{counts[i, j]}\n{100 * rates[i, j]:.0f}%", ha="center", va="center", fontsize=8,
                    color="white" if rates[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(classes)), classes, rotation=45 if max(map(len, classes)) > 4 else 0)
    ax.set_yticks(range(len(classes)), classes)
    ax.set(xlabel="predicted", ylabel="true", title=title)
