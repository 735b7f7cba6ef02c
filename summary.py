"""The summary of a run, rebuilt from every finished job's metrics.json: results.json (the
numbers), results.md (the table beside the paper's Table 3) and results.png (learning curves and
the pooled confusion matrix)."""
from pathlib import Path

import numpy as np

import crosscorpus
import paper
import stats
from corpus import fold_key
from figures import draw_confusion, pyplot
from files import atomic_write, locked, write_json
from runs import jobs_on_disk, read_config, read_metrics
from settings import DamagedFile

PAPER = {m: round(v / 100, 4) for m, v in paper.TABLE3.items()}  # Table 3, as fractions like our scores



def summarise(run):
    """results.json, results.md and results.png of the run folder, from every finished job's
    metrics.json; with test sets of other corpora, their table and cross_corpus.png too. Serialised by flock(2) on RUN/.summary.lock: two processes finishing at
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
        targets = crosscorpus.summarise(run, done, summary["classes"])  # --test-on: other corpora
        if targets:
            summary["targets"] = targets
        table = markdown(summary)
        write_json(summary, run / "results.json")
        atomic_write(run / "results.md", lambda tmp: tmp.write_text(table))
        if done:
            plot(summary, done, run / "results.png")
        if targets:
            crosscorpus.plot(targets, summary["classes"], run / "cross_corpus.png")
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
    lines += crosscorpus.markdown(s.get("targets", {}))
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
