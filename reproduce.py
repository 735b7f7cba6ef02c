"""Leave-one-session-out training on IEMOCAP: the paper's Table 3 row, over as many seeds as asked.

    python reproduce.py --fold all --iemocap /data/IEMOCAP_full_release
    python reproduce.py --fold all --demo --seeds 3          # synthetic corpus, tiny HuBERT, CPU
    python reproduce.py ... --out DIR --list-jobs            # one shell command per unfinished job
    torchrun --nproc-per-node 4 reproduce.py ...             # each job data-parallel on 4 GPUs
    python reproduce.py --summary --out DIR                  # rebuild results.{json,md,png}, no training

The protocol (Sec. 3.1, 3.5): fold k trains on the four other sessions (10% of them held out for
early stopping, Sec. 3.4) and tests on session k; the score is the mean of the five folds. Each
(fold, seed) is one job with its own folder under --out, trained and tested by train.run_job;
any number of processes may share a run (docs/runs.md). Every default below is what the authors
ran (README, "Differences from the authors' script").
"""
import sys
from pathlib import Path

import corpus as corpora
import runs
from settings import UserError, check_config, config_parser, guarded, make_config


def parser():
    p = config_parser(__doc__.split("\n\n")[0])
    p.add_argument("--list-jobs", action="store_true",
                   help="print one complete shell command per unfinished job (for GNU parallel, xargs -P, a SLURM array) and exit")
    p.add_argument("--job", metavar="foldK/seedS", help="train only this job of the run (what --list-jobs lines do)")
    p.add_argument("--summary", action="store_true", help="rebuild results.json, results.md and results.png of --out and exit")
    return p


def main(argv=None):
    return guarded(reproduce, vars(parser().parse_args(argv)))


def reproduce(given):
    """Every fold x every seed asked is a job; this process trains and tests the jobs it can claim,
    one after the other, and rebuilds the summary after each."""
    out = Path(given["out"]) if given.get("out") else None
    if given.get("summary"):
        if not out or not (out / "config.json").exists():
            raise UserError("--summary needs the --out folder of a run (one holding config.json)")
        print(runs.summarise(out), end="")
        return 0
    cfg = make_config(runs.saved_settings(out), given)  # flags not given: the run folder's own settings
    if cfg.resume and not out:
        raise UserError("--resume needs the --out folder of the run to continue")
    if given.get("list_jobs") and not out:
        raise UserError("--list-jobs needs --out: every listed job must write into the same run folder")
    check_config(cfg)
    corpus = corpora.load(cfg)
    import train  # torch and transformers load here, after the checks that need neither: --help and a bad
    from model import check_backbone  # setting answer at once

    check_backbone(cfg.backbone, cfg.layers)
    folds = corpus.folds if cfg.fold == "all" else [cfg.fold]
    if not set(folds) <= set(corpus.folds):
        raise UserError(f"--fold {cfg.fold}: must be one of {', '.join(corpus.folds)} or all")
    corpora.check_validation(corpus, folds, cfg.val_fraction)
    jobs = [runs.Job(f, s) for s in range(cfg.seed, cfg.seed + cfg.seeds) for f in folds]
    mine = [runs.parse_job(given["job"])] if given.get("job") else jobs
    if mine[0] not in jobs:
        raise UserError(f"--job {given['job']}: not a job of this run ({jobs[0].name} .. {jobs[-1].name})")
    if given.get("list_jobs"):
        runs.list_jobs(__file__, given, out, [j.name for j in mine], {"": cfg})
        return 0

    out, rt, audio = runs.start({"": cfg}, out, "%Y%m%d-%H%M%S", corpus, [j.name for j in jobs])
    if rt.rank == 0:
        print(f"run folder {out}  |  {corpus.name}: {len(corpus.utterances)} utterances, {len(corpus.classes)} classes  |  "
              f"{len(mine)} jobs  |  device {rt.device}, {rt.precision}" + (f", {rt.size} processes" if rt.size > 1 else ""),
              flush=True)
    claims = runs.Claims(out, mine, cfg.resume, cfg.lease_minutes)
    for job in claims:
        if rt.rank == 0:
            print(f"--- {job.name}", flush=True)
        train.run_job(cfg, corpus, audio, job, out / job.name, rt)
        if rt.rank == 0:
            print(runs.summarise(out), flush=True)
    if rt.rank == 0:
        if (out / "results.md").exists():
            print(f"results in {out / 'results.md'}")
        claims.tell_skipped()
    return 0


if __name__ == "__main__":
    sys.exit(main())
