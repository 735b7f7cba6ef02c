"""The paper's ablations (Fig. 2, Table 1, Table 2), each cell trained by reproduce.py's own loop.

    python ablate.py --layers 12 22                       # Fig. 2   (Sec. 3.3 protocol)
    python ablate.py --dropout 0 0.1 0.2 0.3 0.4 0.5      # Table 1  (Sec. 3.3 protocol)
    python ablate.py --table2                             # Table 2  (Sec. 3.4 protocol)
    python ablate.py --pooling first avg --mixup none adaptive --center-weight 0 0.002   # any grid

Every cell trains on sessions 1-4 and tests on session 5. Sec. 3.3: exactly 5
epochs, no validation set, the last epoch tested. Sec. 3.4: 10% of sessions 1-4
held out, early stopping with patience 10, the best epoch tested.
"""
import csv
import itertools
import sys
import time
from pathlib import Path

import numpy as np

from reproduce import Config, UserError, config_parser, guarded, load_corpus, make_config, resolve_device, run_fold, write_config

SWEEPS = ["layers", "dropout", "pooling", "mixup", "center_weight"]  # flags that take a list of values

# Sec. 3.3 trains the bare model: Table 1's 0.4 row equals Table 2's row 2 (first frame, no mixup, no center loss).
PROTOCOL_33 = dict(epochs=5, val_fraction=0.0, mixup="none", center_weight=0.0, augment="none")
PROTOCOL_34 = dict(val_fraction=0.1, patience=10)

# Table 2 rows: pooling, mixup, center-loss weight; rows 3-7 add the augmentation chain (Sec. 3.4).
TABLE2 = [dict(pooling="avg", mixup="none", center_weight=0.0),
          dict(pooling="first", mixup="none", center_weight=0.0),
          dict(pooling="first", mixup="conventional", center_weight=0.0),
          dict(pooling="first", mixup="adaptive", center_weight=0.0),
          dict(pooling="first", mixup="adaptive", center_weight=0.0005),
          dict(pooling="first", mixup="adaptive", center_weight=0.001),
          dict(pooling="first", mixup="adaptive", center_weight=0.002)]
TABLE2_PAPER = [(70.91, 71.80), (70.99, 72.83), (70.83, 74.06), (73.97, 75.03), (74.54, 76.20), (74.21, 75.99), (74.86, 76.31)]
TABLE1_PAPER = {0.0: (69.46, 70.66), 0.1: (69.94, 70.49), 0.2: (69.46, 70.41),
                0.3: (70.59, 70.61), 0.4: (70.99, 72.83), 0.5: (61.97, 67.35)}  # 22 layers


def paper_numbers(cell, protocol):
    """(WA, UA) in % that the paper reports for this cell, or None (Fig. 2 gives no numbers)."""
    if protocol == "3.3" and cell.get("layers", 22) == 22 and "dropout" in cell:
        return TABLE1_PAPER.get(cell["dropout"])
    if protocol == "3.4":
        key = tuple(cell.get(k, getattr(Config, k)) for k in ("pooling", "mixup", "center_weight"))
        return {tuple(row.values()): paper for row, paper in zip(TABLE2, TABLE2_PAPER)}.get(key)
    return None


def cells(args):
    """The cells to train, as dicts of the swept settings, and the protocol they follow."""
    if args.pop("table2"):
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
            raise UserError("nothing to sweep: give --layers, --dropout, --pooling, --mixup or --center-weight "
                            "(each takes a list), or --table2")
        grid = [dict(zip(swept, values)) for values in itertools.product(*swept.values())]
        protocol = "3.3" if set(swept) <= {"layers", "dropout"} else "3.4"
    if protocol == "3.4" and "augment" not in args:  # Table 2: rows with mixup also use the augmentation chain
        for c in grid:
            c["augment"] = "none" if c.get("mixup", Config.mixup) == "none" else Config.augment
    return grid, protocol


def cell_name(cell):
    return "_".join(f"{k}-{v}" for k, v in cell.items()) or "default"


def run(args):
    seeds = args.pop("seeds")
    grid, protocol = cells(args)
    protocol_settings = PROTOCOL_33 if protocol == "3.3" else PROTOCOL_34
    base = make_config(protocol_settings, args)
    resolve_device(base)
    out = Path(base.out or Path("runs") / time.strftime("ablate-%Y%m%d-%H%M%S"))
    utterances = load_corpus(base)
    cache = {}  # decoded audio shared by every cell
    print(f"ablation folder {out}  |  Sec. {protocol} protocol  |  {len(grid)} cells x {seeds} seeds  |  "
          f"train on sessions 1-4, test on session 5", flush=True)

    rows = []
    for cell in grid:
        results = []
        for seed in range(base.seed, base.seed + seeds):
            cell_dir = out / cell_name(cell) / f"seed{seed}"
            cfg = make_config(protocol_settings, args, cell, dict(seed=seed, fold="5", out=str(cell_dir),
                                                                  device=base.device, precision=base.precision))
            write_config(cfg, cell_dir)
            print(f"--- {cell_name(cell)}, seed {seed}", flush=True)
            results.append(run_fold(cfg, 5, cell_dir / "fold5", utterances, audio_cache=cache))
        wa, ua = 100 * np.array([r["wa"] for r in results]), 100 * np.array([r["ua"] for r in results])
        rows.append(dict(cell=cell, wa=wa, ua=ua, paper=paper_numbers(cell, protocol)))
        report(rows, protocol, seeds, out)
    print(f"results in {out / 'ablation.md'}")
    return 0


def report(rows, protocol, seeds, out):
    """ablation.md (printed too), ablation.csv and, for a layer sweep, Fig. 2 as ablation_layers.png."""
    keys = list(dict.fromkeys(k for r in rows for k in r["cell"]))
    fmt = (lambda a: f"{a.mean():.2f} +/- {a.std():.2f}") if seeds > 1 else (lambda a: f"{a.mean():.2f}")
    lines = ["| " + " | ".join(keys + ["WA (%)", "UA (%)", "paper WA (%)", "paper UA (%)"]) + " |",
             "|---" * (len(keys) + 4) + "|"]
    for r in rows:
        paper = r["paper"] or ("-", "-")
        lines.append("| " + " | ".join([str(r["cell"].get(k, "")) for k in keys] + [fmt(r["wa"]), fmt(r["ua"])]
                                       + [str(p) for p in paper]) + " |")
    note = (f"Sec. {protocol} protocol: train on sessions 1-4, test on session 5"
            + (", exactly 5 epochs, no validation" if protocol == "3.3" else ", 10% validation, early stopping")
            + (f"; mean +/- std over {seeds} seeds" if seeds > 1 else "") + ".")
    table = note + "\n\n" + "\n".join(lines) + "\n"
    (out / "ablation.md").write_text(table)
    print(table, flush=True)
    with open(out / "ablation.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(keys + ["wa_mean", "wa_std", "ua_mean", "ua_std", "seeds", "paper_wa", "paper_ua"])
        for r in rows:
            paper = r["paper"] or ("", "")
            w.writerow([r["cell"].get(k, "") for k in keys] + [f"{r['wa'].mean():.4f}", f"{r['wa'].std():.4f}",
                        f"{r['ua'].mean():.4f}", f"{r['ua'].std():.4f}", len(r["wa"]), *paper])
    layers = [r for r in rows if set(r["cell"]) == {"layers"}]
    if len(layers) >= 2:
        plot_layers(layers, out / "ablation_layers.png")


def plot_layers(rows, path):
    """Fig. 2: WA and UA against the number of transformer layers kept."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = sorted(rows, key=lambda r: r["cell"]["layers"])
    k = [r["cell"]["layers"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for metric in ("wa", "ua"):
        mean, std = np.array([r[metric].mean() for r in rows]), np.array([r[metric].std() for r in rows])
        ax.errorbar(k, mean, yerr=std if len(rows[0][metric]) > 1 else None, marker="o", capsize=3, label=metric.upper())
    ax.set(xlabel="self-attention layers kept", ylabel="%", title="Fig. 2: layers (Sec. 3.3, test on session 5)")
    ax.set_xticks(k)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    p = config_parser(__doc__.split("\n\n")[0], sweep=SWEEPS, skip={"fold"})
    p.add_argument("--table2", action="store_true", help="the seven rows of Table 2 (Sec. 3.4 protocol)")
    p.add_argument("--seeds", type=int, default=1, help="repeats per cell: --seed, --seed+1, ...")
    args = vars(p.parse_args(argv))
    return guarded(run, args)


if __name__ == "__main__":
    sys.exit(main())
