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
import crosscorpus
import runs
from settings import UserError, check_config, check_out, config_parser, guarded, make_config, with_test_sets


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
        from summary import summarise
        print(summarise(out), end="")
        return 0
    saved = runs.saved_settings(out)
    cfg = with_test_sets(make_config(saved, given), saved)  # flags not given: the run folder's own settings
    if (cfg.resume or given.get("list_jobs")) and not out:
        raise UserError("--resume and --list-jobs need the --out folder of the run (every job writes into it)")
    corpus, folds, test_sets = checked([cfg], None if cfg.fold == "all" else [cfg.fold], "--fold", out)
    jobs = [runs.Job(f, s, cfg) for s in range(cfg.seed, cfg.seed + cfg.seeds) for f in folds]
    about = f"{corpus.name}: {len(corpus.utterances)} utterances, {len(corpus.classes)} classes"
    from summary import summarise
    return train_jobs(__file__, given, jobs, corpus, out, "%Y%m%d-%H%M%S", summarise, about, test_sets=test_sets)


def checked(configs, folds, flag, out=None, cells=("",)):
    """Every check that comes before any work, cheapest first, so that a bad setting writes nothing: the
    settings' ranges; --out, and the settings already in its run folders (out/cell, one per config); the
    corpus (label files only) and the folds asked (`flag` names them); the backbone's config (its weights
    are not read); each fold's validation part; the test sets of other corpora (--test-on: labels, files,
    no utterance shared with the corpus). --demo's synthetic replica, written on its first run, is written
    after the backbone's check. Returns (the corpus, its folds to run, the test sets)."""
    for cfg in configs:
        check_config(cfg)
    if out:
        check_out(out)
        for cell, cfg in zip(cells, configs):
            runs.check_settings(cfg, out / cell)
    corpus = None if corpora.writes(configs[0]) else corpora.load(configs[0], folds, flag)
    from model import check_backbone  # torch and transformers load here, after the checks that need neither:
    for backbone, layers in {(c.backbone, c.layers) for c in configs}:  # --help and a bad setting answer at once
        check_backbone(backbone, layers)
    if corpus is None:
        corpus = corpora.load(configs[0], folds, flag)
    folds = corpora.choose_folds(corpus, folds, flag)
    for val_fraction in {c.val_fraction for c in configs}:
        corpora.check_validation(corpus, folds, val_fraction)
    return corpus, folds, crosscorpus.load(configs[0].test_on, configs[0].test_root, corpus)


def train_jobs(script, given, jobs, corpus, out, stamp, report, about, results="results.md", started=None,
               test_sets=()):
    """The jobs of a run (reproduce.py's folds x seeds, or ablate.py's cells x folds x seeds): with
    --list-jobs their command lines; else this process trains and tests each job it can claim
    (--job: that one alone) with train.run_job, one after the other, and prints report(out), the
    run's summary (written to out/results), after each. out: the run folder (None: a new one named by
    time.strftime(stamp)); started(out): what the first process writes there besides config.json.
    test_sets (--test-on): each job scored on them after its own test; a job finished before a test set
    was asked for is scored on it from its best.safetensors, without training."""
    import train
    from claims import Claims

    mine = [j for j in jobs if j.name == given["job"].strip("/")] if given.get("job") else jobs
    if not mine:
        raise UserError(f"--job {given['job']}: not a job of this run ({jobs[0].name} .. {jobs[-1].name})")
    if given.get("list_jobs"):
        runs.list_jobs(script, given, out, jobs, mine)
        return 0
    out, rt, audio = runs.start(jobs, out, stamp, corpus, crosscorpus.decode(test_sets, {}))
    if rt.rank == 0:
        if started:
            started(out)
        print(f"{'ablation' if jobs[0].cell else 'run'} folder {out}  |  {about}  |  {len(mine)} jobs  |  "
              f"device {rt.device}, {rt.precision}" + (f", {rt.size} processes" if rt.size > 1 else ""), flush=True)
    claims, trained = Claims(out, mine, jobs[0].cfg.resume, jobs[0].cfg.lease_minutes), 0
    for job in claims:
        if rt.rank == 0:
            print(f"--- {job.name}", flush=True)
        train.run_job(job.cfg, corpus, audio, job, out / job.name, rt, test_sets)
        trained += 1
        if rt.rank == 0:
            print(report(out), flush=True)
    if rt.rank == 0:
        if score_finished(mine, out, corpus, audio, test_sets, rt) or not trained:  # new scores, or the summary as
            print(report(out), flush=True)  # it stands: every job was finished earlier, or is another process's
        if (out / results).exists():
            print(f"results in {out / results}")
        claims.tell_skipped()
    return 0


def score_finished(jobs, out, corpus, audio, test_sets, rt):
    """The finished jobs of `jobs` not yet scored on every test set, scored from their best.safetensors
    (crosscorpus.score_finished); returns how many were. A job trained with --no-save has no weights
    left: one line says it cannot be scored."""
    scored = 0
    for job in jobs:
        if test_sets and (out / job.name / "metrics.json").exists():
            scored += crosscorpus.score_finished(out / job.name, job, corpus, audio, test_sets, rt)
    return scored


if __name__ == "__main__":
    sys.exit(main())
