"""Leave-one-session-out training on IEMOCAP: the paper's Table 3 row, over as many seeds as asked.

    python reproduce.py --fold all --iemocap /data/IEMOCAP_full_release
    python reproduce.py --fold all --demo --seeds 3          # synthetic corpus, tiny HuBERT, CPU
    python reproduce.py ... --out DIR --list-jobs            # one shell command per unfinished job
    torchrun --nproc-per-node 4 reproduce.py ...             # each job data-parallel on 4 GPUs
    python reproduce.py --summary --out DIR                  # rebuild results.{json,md,png}, no training

Fold k trains on the four other sessions (10% of them held out for early stopping, Sec. 3.4)
and tests on session k (Sec. 3.1). Each (fold, seed) is one job with its own folder under
--out; any number of processes may share a run (see runs.py). Every default below is what the
authors ran (README, "Differences from the authors' script").
"""
import json
import sys
from pathlib import Path

import corpus as corpora
import runs
from settings import UserError, check_backbone, check_config, config_parser, guarded, make_config
from train import run_job, world


def parser():
    p = config_parser(__doc__.split("\n\n")[0])
    p.add_argument("--list-jobs", action="store_true",
                   help="print one complete shell command per unfinished job (for GNU parallel, xargs -P, a SLURM array) and exit")
    p.add_argument("--job", metavar="foldK/seedS", help="train only this job of the run (what --list-jobs lines do)")
    p.add_argument("--summary", action="store_true", help="rebuild results.json, results.md and results.png of --out and exit")
    return p


def folds_of(cfg, corpus):
    if cfg.fold == "all":
        return corpus.folds
    if cfg.fold not in corpus.folds:
        raise UserError(f"--fold {cfg.fold}: must be one of {', '.join(corpus.folds)} or all")
    return [cfg.fold]


def run(cfg, given):
    out = Path(cfg.out) if cfg.out else None
    if given.get("summary"):
        if not out or not (out / "config.json").exists():
            raise UserError("--summary needs the --out folder of a run (one holding config.json)")
        print(runs.summarise(out), end="")
        return 0
    if cfg.resume and not out:
        raise UserError("--resume needs the --out folder of the run to continue")
    if given.get("list_jobs") and not out:
        raise UserError("--list-jobs needs --out: every listed job must write into the same run folder")
    check_config(cfg)
    corpus = corpora.load(cfg)
    check_backbone(cfg)
    jobs = [runs.Job(f, s) for s in range(cfg.seed, cfg.seed + cfg.seeds) for f in folds_of(cfg, corpus)]
    mine = jobs
    if given.get("job"):
        mine = [runs.parse_job(given["job"])]
        if mine[0] not in jobs:
            raise UserError(f"--job {given['job']}: not a job of this run ({jobs[0].name} .. {jobs[-1].name})")
    if given.get("list_jobs"):
        runs.list_jobs(__file__, given, out, [j.name for j in mine], {"": cfg})
        return 0

    out, cache = runs.start({"": cfg}, out, "%Y%m%d-%H%M%S", corpus, [j.name for j in jobs])
    rank, size = world()
    if rank == 0:
        print(f"run folder {out}  |  {corpus.name}: {len(corpus.utterances)} utterances, {len(corpus.classes)} classes  |  "
              f"{len(mine)} jobs  |  device {cfg.device}, {cfg.precision}" + (f", {size} processes" if size > 1 else ""),
              flush=True)

    def train(job):
        if rank == 0:
            print(f"--- {job.name}", flush=True)
        run_job(cfg, corpus, job.fold, job.seed, out / job.name, cache)

    def finished(job):
        print(runs.summarise(out), flush=True)

    skipped = runs.work([(out / j.name, j) for j in mine], cfg.resume, train, finished)
    if rank != 0:
        return 0
    if (out / "results.md").exists():
        print(f"results in {out / 'results.md'}")
    runs.tell_skipped(out, skipped)
    return 0


def saved_settings(out):
    """The settings in --out's config.json, for the flags not given: `--resume --out DIR` alone
    continues a run as it was started (where it runs, and on how many workers, stays this process's)."""
    path = Path(out) / "config.json" if out else None
    if not path or not path.exists():
        return {}
    saved = json.loads(path.read_text())["config"]
    return {k: v for k, v in saved.items() if k not in ("out", "resume", "device", "workers", "no_save")}


def main(argv=None):
    given = vars(parser().parse_args(argv))
    settings = {k: v for k, v in given.items() if k not in ("list_jobs", "job", "summary")}
    return guarded(lambda: run(make_config(saved_settings(given.get("out")), settings), given))


if __name__ == "__main__":
    sys.exit(main())
