"""A run is a set of jobs, one per (fold, seed), each in its own folder under the run folder:

    RUN/config.json                 the settings, the corpus and where the run ran
    RUN/fold1/seed0/lock            a lease held while a process trains the job (claims.py)
    RUN/fold1/seed0/split/          the utterance ids of its train, val and test parts (corpus.write_split)
    RUN/fold1/seed0/metrics.json    the finished job (never rerun)
    RUN/results.{json,md,png}       rebuilt from every finished job's metrics.json (summary.py)

This module keeps the run folder and its settings: config.json written once and checked by every
process that joins, the jobs registered in it, the command line of each (--list-jobs), and what
every process does before its first job (start). Any number of processes may share a run
(claims.py, docs/runs.md).
"""
import json
import os
import shlex
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from audio import decode
from corpus import fold_key
from files import HOST, read_json, write_json, writing
from runtime import barrier, broadcast, environment, start_runtime
from settings import RUN_ONLY, THIS_PROCESS, UserError, check_out, flag, known

# flags whose value is a path: --list-jobs writes them absolute
PATHS = {"iemocap", "demo_corpus", "backbone", "manifest", "audio_root", "test_on", "test_root"}


@dataclass(frozen=True)
class Job:
    """One (fold, seed) of a run, trained with the settings cfg; in an ablation, of the cell whose
    folder is `cell`."""
    fold: str
    seed: int
    cfg: object = None  # settings.Config
    cell: str = ""

    @property
    def name(self):
        """The job's folder under --out: foldK/seedS, or CELL/foldK/seedS."""
        return f"{self.cell}/" * bool(self.cell) + f"fold{self.fold}/seed{self.seed}"


def run_folders(jobs):
    """{folder under --out: settings} of the run folders the jobs belong to (each holds a config.json):
    --out itself for reproduce.py, one folder per cell for ablate.py."""
    return {job.cell: job.cfg for job in jobs}


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
        saved = read_config(path)
        if [saved["config"].get(k) for k in ("test_on", "test_root")] != [list(cfg.test_on), list(cfg.test_root)]:
            saved["config"].update(test_on=list(cfg.test_on), test_root=list(cfg.test_root))  # test sets added
            write_json(saved, path)  # later (settings.with_test_sets): --resume --out alone scores them too
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
            head += [str(Path(x).absolute()) if k in PATHS and x and Path(str(x)).exists() else str(x)
                     for x in (v if isinstance(v, (list, tuple)) else [v])]
    return [shlex.join(head + ["--out", str(Path(out).absolute()), "--job", name, "--resume"]) for name in names]


def list_jobs(script, given, out, jobs, mine):
    """--list-jobs: print the command line of each unfinished job of `mine` (among the run's `jobs`). The run
    folders are checked first: a folder that would refuse the lines gets none listed."""
    check_out(out)
    for sub, cfg in run_folders(jobs).items():
        check_settings(cfg, Path(out) / sub)
    todo = [job.name for job in mine if not (Path(out) / job.name / "metrics.json").exists()]
    for line in command_lines(script, given, out, todo):
        print(line)
    print(f"{len(todo)} of {len(mine)} jobs unfinished in {out}", file=sys.stderr)


def start(jobs, out, stamp, corpus, audio=None):
    """What every process of a run does before its first job: join torchrun's group, settle the
    device, agree on the run folder (rank 0's: out, or runs/<time.strftime(stamp)>), check it and
    the settings, decode the corpus's audio into `audio` (what is decoded already: the test sets';
    a broken wav stops here, before anything is written); rank 0 then writes each config.json and
    registers every job's folder, so the summary counts jobs not started yet. Returns (out,
    runtime.Runtime, the decoded audio)."""
    folders, base = run_folders(jobs), jobs[0].cfg
    rt = start_runtime(base.device, base.precision, base.batch_size, base.demo)
    out = Path(broadcast(str(out or Path("runs") / time.strftime(stamp))))
    check_out(out)
    for sub, cfg in folders.items():
        check_settings(cfg, out / sub, rt)
    if not base.no_tensorboard:
        from board import summary_writer
        summary_writer()  # tensorboard is installed (or one line says so), before the audio is decoded
    audio = decode(corpus.utterances, audio)
    if rt.rank == 0:
        for sub, cfg in folders.items():
            write_config(cfg, rt, out / sub, corpus)
        for job in jobs:
            (out / job.name).mkdir(parents=True, exist_ok=True)
    barrier()
    return out, rt, audio
