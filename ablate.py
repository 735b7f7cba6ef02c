"""The paper's ablations (Fig. 2, Table 1, Table 2) over folds and seeds, each cell compared
with a reference cell on paired jobs; every job trained by train.run_job, reproduce.py's own.

    python ablate.py --layers 12 22                       # Fig. 2   (Sec. 3.3 protocol)
    python ablate.py --dropout 0 0.1 0.2 0.3 0.4 0.5      # Table 1  (Sec. 3.3 protocol)
    python ablate.py --table2                             # Table 2  (Sec. 3.4 protocol)
    python ablate.py --table2 --folds all --seeds 3       # ... on every fold, 3 seeds: which claims survive?
    python ablate.py --pooling first avg --mixup none adaptive --center-weight 0 0.002   # any grid
    python ablate.py --backbone facebook/hubert-large-ll60k microsoft/wavlm-large --layers 12   # backbones

The paper trains on sessions 1-4 and tests on session 5 (--folds 5, the default); --folds all
runs every cell on the five leave-one-session-out folds. Sec. 3.3: exactly 5 epochs, no
validation, the last epoch tested. Sec. 3.4: 10% validation, early stopping (patience 10), the
best epoch tested. Each cell is a run folder (OUT/<cell>/, as reproduce.py writes) and each
(cell, fold, seed) one job: claimable by concurrent processes, listed by --list-jobs, trainable
under torchrun, never rerun once finished.
"""
import argparse
import csv
import itertools
import re
import sys
from pathlib import Path

import numpy as np

import corpus as corpora
import paper
import reproduce
import runs
import stats
from figures import pyplot
from files import atomic_write, locked, read_json, write_json
from settings import THIS_PROCESS, Config, DamagedFile, UserError, config_parser, guarded, make_config, with_test_sets

SWEEPS = ["backbone", "layers", "dropout", "pooling", "mixup", "center_weight"]  # flags that take a list of values

# Sec. 3.3 trains the bare model: Table 1's 0.4 row equals Table 2's row 2 (first frame, no mixup, no center loss).
PROTOCOL_33 = dict(epochs=5, val_fraction=0.0, mixup="none", center_weight=0.0, augment="none")
PROTOCOL_34 = dict(val_fraction=0.1, patience=10)

# Table 2's rows: pooling, mixup, center-loss weight; rows 3-7 add the augmentation chain (Sec. 3.4).
TABLE2 = [row for row, _ in paper.TABLE2]
TABLE2_REFERENCE = 3  # conventional mixup: the rows below it answer the claim of Sec. 3.4
METRICS = ("wa", "ua")
SWEEP_FILE = "sweep.json"  # in the ablation folder: the flags of its sweep


def paper_numbers(cell, protocol, config):
    """(WA, UA) in % that the paper reports for this cell, or None: Fig. 2 gives no numbers, and
    the paper ran IEMOCAP only (config: the cell's config.json, as runs.aggregate reads it)."""
    if "backbone" in cell or not config["corpus"]["paper"]:
        return None
    if protocol == "3.3" and cell.get("layers", 22) == 22 and "dropout" in cell:
        return paper.TABLE1.get(cell["dropout"])  # Table 1 kept 22 layers
    if protocol == "3.4":
        key = tuple(cell.get(k, getattr(Config, k)) for k in ("pooling", "mixup", "center_weight"))
        return {tuple(row.values()): numbers for row, numbers in paper.TABLE2}.get(key)
    return None


def cells(args):
    """The cells to train, as dicts of the swept settings, the protocol they follow and the reference cell."""
    table2 = args.pop("table2", False)
    if table2:
        for k in SWEEPS:  # settings Table 2 does not vary may be fixed, one value each (e.g. --layers 12)
            if k in args:
                if k in TABLE2[0] or len(args[k]) > 1:
                    raise UserError(f"--table2 sets pooling, mixup and center weight itself; "
                                    f"--{k.replace('_', '-')} takes one value with it")
                args[k] = args[k][0]
        grid, protocol = [dict(row) for row in TABLE2], "3.4"
    else:
        swept = {k: args.pop(k) for k in SWEEPS if k in args}
        if not swept:
            raise UserError("nothing to sweep: give --backbone, --layers, --dropout, --pooling, --mixup or --center-weight "
                            "(each takes a list), or --table2")
        grid = [dict(zip(swept, values)) for values in itertools.product(*swept.values())]
        # Sec. 3.3 for the model's own settings (a backbone sweep follows whichever else is swept)
        protocol = "3.3" if set(swept) - {"backbone"} and set(swept) <= {"layers", "dropout", "backbone"} else "3.4"
    if protocol == "3.4" and "augment" not in args:  # Table 2: rows with mixup also use the augmentation chain
        for c in grid:
            c["augment"] = "none" if c.get("mixup", Config.mixup) == "none" else Config.augment
    names = [cell_name(c) for c in grid]
    twins = sorted({n for n in names if names.count(n) > 1})
    if twins:
        raise UserError(f"two cells would share the folder {twins[0]}: give each swept value once, spelt one way")
    reference = args.pop("reference", None)
    if reference is None:
        ref = TABLE2_REFERENCE - 1 if table2 else 0
    elif reference.isdigit() and 1 <= int(reference) <= len(grid):
        ref = int(reference) - 1
    elif reference in names:
        ref = names.index(reference)
    else:
        raise UserError(f"--reference {reference}: name a cell ({', '.join(names)}) or its row, 1..{len(grid)}")
    return grid, protocol, ref


def cell_name(cell):
    """The cell's folder: its swept settings, e.g. layers-12 or pooling-first_mixup-adaptive."""
    return "_".join(f"{k}-{re.sub(r'[^A-Za-z0-9.+-]+', '.', str(v)).strip('.')}" for k, v in cell.items()) or "default"


def run(args):
    """Every cell x fold x seed is a job of reproduce.py's kind, trained by reproduce.train_jobs, the
    report rebuilt after each. An ablation folder remembers its sweep (SWEEP_FILE): `--resume --out DIR`
    alone continues it."""
    saved = saved_sweep(args.get("out"))
    args = {**saved, **args}  # flags not given: the ablation folder's own sweep
    given = dict(args)
    grid, protocol, ref = cells(args)
    folds_arg = args.pop("folds", None)
    args.pop("list_jobs", None), args.pop("job", None)
    configs = [with_test_sets(make_config(PROTOCOL_33 if protocol == "3.3" else PROTOCOL_34, args, cell), saved)
               for cell in grid]
    given.update({k: list(getattr(configs[0], k)) for k in ("test_on", "test_root") if getattr(configs[0], k)})
    base = configs[0]
    if (base.resume or given.get("list_jobs")) and not base.out:
        raise UserError("--resume and --list-jobs need the --out folder of the ablation")
    out = Path(base.out) if base.out else None
    corpus, folds, test_sets = reproduce.checked(configs, folds_arg, "--folds", out, [cell_name(cell) for cell in grid])
    if folds_arg is None:  # the paper's protocol: test on session 5, IEMOCAP's last fold (another corpus: its last)
        folds = corpus.folds[-1:]
    seeds = range(base.seed, base.seed + base.seeds)
    jobs = [runs.Job(f, s, cfg, cell_name(cell)) for cell, cfg in zip(grid, configs) for s in seeds for f in folds]
    about = (f"Sec. {protocol} protocol  |  {len(grid)} cells x folds {', '.join(folds)} x {len(seeds)} seeds  |  "
             f"reference: {cell_name(grid[ref])}")
    return reproduce.train_jobs(__file__, given, jobs, corpus, out, "ablate-%Y%m%d-%H%M%S",
                                lambda out: report(grid, protocol, ref, out), about, results="ablation.md",
                                started=lambda out: remember_sweep(out, given), test_sets=test_sets)


def saved_sweep(out):
    """The flags of the ablation in --out (its SWEEP_FILE), those that say what it computes: {} if none."""
    path = Path(out) / SWEEP_FILE if out else None
    if not path or not path.exists():
        return {}
    return read_json(path, "it holds the ablation's sweep: give the sweep's flags again", keys=("sweep",))["sweep"]


def remember_sweep(out, given):
    """SWEEP_FILE: the flags of this call that say what the ablation computes (the run folder's own
    settings, which the process chooses, left out), for `--resume --out DIR` alone."""
    sweep = {k: v for k, v in given.items() if k not in THIS_PROCESS | {"list_jobs", "job"}}
    write_json(dict(sweep=sweep), Path(out) / SWEEP_FILE)


# ---------------------------------------------------------------------------- the report


def cell_results(out, cell, damaged):
    """{(fold, seed): metrics} of the cell's finished jobs; a damaged metrics.json is added to `damaged`."""
    done = {}
    for path in sorted((out / cell_name(cell)).glob("fold*/seed*/metrics.json")):
        try:
            m = runs.read_metrics(path)
        except DamagedFile:
            damaged.append(str(path.relative_to(out)))
            continue
        done[m["fold"], m["seed"]] = m
    return done


def compare(rows, ref):
    """Per cell: mean, std and t-interval over its jobs; the paired difference to the reference
    cell over the (fold, seed) pairs both have, its bootstrap interval and sign-flip p."""
    for r in rows:
        for m in METRICS:
            x = [100 * j[m] for j in r["done"].values()]
            r[m] = dict(mean=float(np.mean(x)) if x else None, std=stats.std(x), ci=stats.t_interval(x))
            pairs = sorted(set(r["done"]) & set(rows[ref]["done"]))
            d = [100 * (r["done"][p][m] - rows[ref]["done"][p][m]) for p in pairs]
            r[f"d_{m}"] = dict(mean=float(np.mean(d)) if d else None, n=len(d),
                               ci=stats.bootstrap_interval(d) if d else None, p=stats.sign_flip_p(d) if d else None)
    return rows


def report(grid, protocol, ref, out):
    """ablation.md (returned, to print; with --test-on, the cells on each test set of another corpus too),
    ablation.csv, ablation.png (scores per cell; for --layers, Fig. 2) and ablation_diff.png (the paired
    differences to the reference, a forest plot).
    Serialised by flock(2) on OUT/.report.lock, as runs.summarise."""
    with locked(out / ".report.lock"):
        configs, damaged = [runs.read_config(out / cell_name(c) / "config.json") for c in grid], []
        rows = compare([dict(cell=c, done=cell_results(out, c, damaged), paper=paper_numbers(c, protocol, config))
                        for c, config in zip(grid, configs)], ref)
        table = markdown(rows, protocol, ref, damaged) + cross_corpus(rows, ref)
        atomic_write(out / "ablation.md", lambda tmp: tmp.write_text(table))
        write_csv(rows, out / "ablation.csv")
        if any(r["done"] for r in rows):
            plot_cells(rows, out / "ablation.png", protocol)
            plot_differences(rows, ref, out / "ablation_diff.png")
    return table


def cross_corpus(rows, ref):
    """ablation.md's tables of the test sets of other corpora (--test-on), one per set: each cell's scores
    there and its paired difference to the reference cell, computed as in-corpus (compare)."""
    names = list(dict.fromkeys(t for r in rows for m in r["done"].values() for t in m.get("targets", {})))
    lines = []
    for name in names:
        on = compare([dict(cell=r["cell"], done={p: m["targets"][name] for p, m in r["done"].items()
                                                 if name in m.get("targets", {})}) for r in rows], ref)
        keys = list(dict.fromkeys(k for r in on for k in r["cell"]))
        lines += ["", f"Cross-corpus, on {name} (--test-on): the same jobs' best models, the same statistics.", "",
                  "| " + " | ".join(keys + ["jobs", "WA (%)", "UA (%)", "ΔWA vs ref", "ΔUA vs ref"]) + " |",
                  "|---" * (len(keys) + 5) + "|"]
        lines += ["| " + " | ".join([str(r["cell"].get(k, "")) for k in keys] + [str(len(r["done"])), score(r, "wa"),
                                    score(r, "ua"), difference(r, "wa", i == ref), difference(r, "ua", i == ref)]) + " |"
                  for i, r in enumerate(on)]
    return "\n".join(lines) + ("\n" if lines else "")


def score(r, m):
    """A cell's mean ± std [t-interval] of metric m, in %."""
    return fmt(r[m]["mean"]) + ("" if r[m]["std"] is None else
                                f" ± {fmt(r[m]['std'])} [{fmt(r[m]['ci'][0])}, {fmt(r[m]['ci'][1])}]")


def difference(r, m, reference):
    """A cell's mean paired difference to the reference [bootstrap interval] and sign-flip p, in points."""
    d = r[f"d_{m}"]
    return ("(reference)" if reference else "-" if d["mean"] is None else
            f"{d['mean']:+.2f} [{d['ci'][0]:+.2f}, {d['ci'][1]:+.2f}] p={d['p']:.3g}")


def fmt(v, digits=2):
    return "-" if v is None else f"{v:.{digits}f}"


def markdown(rows, protocol, ref, damaged=()):
    keys = list(dict.fromkeys(k for r in rows for k in r["cell"]))
    folds = sorted({f for r in rows for f, _ in r["done"]}, key=corpora.fold_key)
    seeds = sorted({s for r in rows for _, s in r["done"]})
    head = keys + ["jobs", "WA (%)", "UA (%)", "paper WA", "paper UA", "ΔWA vs ref", "ΔUA vs ref"]
    lines = [f"Sec. {protocol} protocol"
             + (": exactly 5 epochs, no validation, the last epoch tested" if protocol == "3.3"
                else ": 10% validation, early stopping, the best epoch tested")
             + f"; folds {', '.join(folds) or '-'} x seeds {', '.join(map(str, seeds)) or '-'}. "
             f"Reference: row {ref + 1} ({cell_name(rows[ref]['cell'])}).", "",
             "| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for i, r in enumerate(rows):
        paper = r["paper"] or ("-", "-")
        lines.append("| " + " | ".join([str(r["cell"].get(k, "")) for k in keys] + [str(len(r["done"])), score(r, "wa"),
                                        score(r, "ua"), str(paper[0]), str(paper[1]), difference(r, "wa", i == ref),
                                        difference(r, "ua", i == ref)]) + " |")
    lines += ["", "Scores: mean ± std over the cell's (fold, seed) jobs [Student-t 95 % interval]. Δ: mean paired "
              "difference to the reference over the jobs both cells have (same fold and seed: same split, "
              "initialisation and draws), in points, [bootstrap 95 % interval, 10,000 resamples of the pairs], "
              "two-sided sign-flip permutation p (exact up to 16 pairs). With one pair the interval is a point and "
              "p = 1: repeat with --seeds or --folds all. With n pairs p cannot fall below 2/2^n (5 pairs: 0.0625), "
              "and a bootstrap interval over few pairs is too narrow: trust a difference that p also supports."]
    if damaged:
        lines += ["", f"{len(damaged)} damaged job(s) left out: {', '.join(damaged)} (delete such a job's folder and "
                      "rerun with --resume to train it again)."]
    return "\n".join(lines) + "\n"


def write_csv(rows, path):
    keys = list(dict.fromkeys(k for r in rows for k in r["cell"]))
    cols = [f"{m}_{s}" for m in METRICS for s in ("mean", "std", "lo", "hi")]
    cols += [c for m in METRICS for c in (f"d_{m}", f"d_{m}_lo", f"d_{m}_hi", f"p_{m}")]

    def values(r):
        v = {}
        for m in METRICS:
            ci = r[m]["ci"] or [None, None]
            v.update({f"{m}_mean": r[m]["mean"], f"{m}_std": r[m]["std"], f"{m}_lo": ci[0], f"{m}_hi": ci[1]})
            d = r[f"d_{m}"]
            dci = d["ci"] or [None, None]
            v.update({f"d_{m}": d["mean"], f"d_{m}_lo": dci[0], f"d_{m}_hi": dci[1], f"p_{m}": d["p"]})
        return [("" if v[c] is None else f"{v[c]:.4f}") for c in cols]

    def write(tmp):
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(keys + cols + ["jobs", "paper_wa", "paper_ua"])
            for r in rows:
                w.writerow([r["cell"].get(k, "") for k in keys] + values(r) + [len(r["done"]), *(r["paper"] or ("", ""))])
    atomic_write(path, write)


def plot_cells(rows, path, protocol):
    """WA and UA of each cell, mean ± std over its jobs. A sweep of --layers alone is Fig. 2."""
    plt = pyplot()
    rows = [r for r in rows if r["done"]]
    numeric = len(rows[0]["cell"]) == 1 and all(isinstance(v, (int, float)) for r in rows for v in r["cell"].values())
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(rows) + 2), 3.8), layout="constrained")
    if numeric:
        rows = sorted(rows, key=lambda r: next(iter(r["cell"].values())))
        x, key = [next(iter(r["cell"].values())) for r in rows], next(iter(rows[0]["cell"]))
        ax.set_xticks(x)
        ax.set_xlabel({"layers": "self-attention layers kept"}.get(key, key))
    else:
        x = np.arange(len(rows))
        ax.set_xticks(x, ["\n".join(f"{k} {v}" for k, v in r["cell"].items()) for r in rows], fontsize=7)
        ax.set_xlim(-0.6, len(rows) - 0.4)
    for m, shift in zip(METRICS, (-0.08, 0.08)):
        mean = [r[m]["mean"] for r in rows]
        err = [r[m]["std"] or 0 for r in rows]
        ax.errorbar(np.asarray(x, dtype=float) + (0 if numeric else shift), mean, yerr=err, marker="o", capsize=3,
                    ls="-" if numeric else "none", label=m.upper())
    jobs = sorted({len(r["done"]) for r in rows})
    title = "Fig. 2: layers" if numeric and "layers" in rows[0]["cell"] else "cells"
    ax.set(ylabel="%", title=f"{title} (Sec. {protocol} protocol; mean ± std over {'/'.join(map(str, jobs))} jobs)")
    ax.grid(alpha=0.3)
    ax.legend()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)


def plot_differences(rows, ref, path):
    """Forest plot: each cell's mean paired difference to the reference with its bootstrap interval."""
    plt = pyplot()
    others = [r for i, r in enumerate(rows) if i != ref and r["d_wa"]["mean"] is not None]
    fig, axes = plt.subplots(1, 2, figsize=(10, 0.45 * max(len(others), 1) + 1.6), sharey=True, layout="constrained")
    y = np.arange(len(others))[::-1]
    for ax, m in zip(axes, METRICS):
        d = [r[f"d_{m}"] for r in others]
        mean = np.array([e["mean"] for e in d])
        lo, hi = np.array([e["ci"][0] for e in d]), np.array([e["ci"][1] for e in d])
        ax.errorbar(mean, y, xerr=[mean - lo, hi - mean], fmt="o", capsize=3)
        for yi, e in zip(y, d):
            ax.annotate(f"p={e['p']:.2g}", (e["ci"][1], yi), xytext=(4, 0), textcoords="offset points", va="center", fontsize=7)
        ax.axvline(0, color="k", lw=0.8)
        ax.set(xlabel=f"Δ{m.upper()} (points)")
        ax.margins(x=0.15)  # room for the p beside the largest interval
        left, right = ax.get_xlim()
        ax.set_xlim(min(left, -1), max(right, 1))  # at least a point each side: equal cells do not zoom into float noise
        ax.grid(alpha=0.3, axis="x")
    axes[0].set_yticks(y, [cell_name(r["cell"]) for r in others], fontsize=8)
    fig.suptitle(f"paired differences to the reference, {cell_name(rows[ref]['cell'])}: mean [bootstrap 95 % interval]",
                 fontsize=10)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)


def main(argv=None):
    p = config_parser(__doc__.split("\n\n")[0], sweep=SWEEPS, skip={"fold"})
    unset = dict(default=argparse.SUPPRESS)  # a flag not given is absent: the ablation folder's sweep may give it
    p.add_argument("--table2", action="store_true", **unset, help="the seven rows of Table 2 (Sec. 3.4 protocol)")
    p.add_argument("--folds", nargs="+", metavar="K", **unset, help="folds each cell runs on: 5 (the paper's: test on session "
                   "5; the default, on another corpus its last fold), all, or a list")
    p.add_argument("--reference", metavar="CELL", **unset, help="the cell every other is compared with, by folder name or row "
                   f"number (default: the first cell; with --table2 row {TABLE2_REFERENCE}, conventional mixup)")
    p.add_argument("--list-jobs", action="store_true", **unset, help="print one complete shell command per unfinished job and exit")
    p.add_argument("--job", metavar="CELL/foldK/seedS", **unset, help="train only this job (what --list-jobs lines do)")
    return guarded(run, vars(p.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
