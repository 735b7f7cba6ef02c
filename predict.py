"""Emotion of recordings, predicted by the fold models of a run (reproduce.py) or by a folder exported from them.

    python predict.py --run runs/X a.wav more/ list.txt      # CSV: path, emotion, p_<class>..., seconds, error
    python predict.py --run runs/X --fold 3 --crop a.wav      # fold 3's model on the first window, as its test saw it
    python predict.py --run runs/X --segments --plot talk.png talk.wav   # one row per window, and a plot
    python predict.py --run runs/X --vad --segments talk.wav  # one row per speech segment; silence is not classified
    python predict.py --run runs/X --shard 2/8 archive/       # the 2nd of 8 parts of the inputs (GNU parallel, SLURM)
    python predict.py --run runs/X --export model/ [--dtype bf16] [--onnx]  # a self-contained folder with a model card
    python predict.py --model model/ a.wav                    # predict from that folder alone
    python predict.py --bench --run runs/X [--n 200]          # batched vs one file at a time
    python predict.py --run runs/X --score TEST_SET.jsonl     # WA, UA, F1 of each model and the ensemble on another corpus

Each input is served as training served an utterance (data.UtteranceDataset): read as float32
mono, resampled to 16 kHz, cut to windows of the run's max_len samples (6.25 s in the paper), each
window divided by its own peak, padded to 400 samples if shorter. The model learned from an
utterance's first window only; a longer recording gets a window every half window (starts 0, hop,
2 hop, ... until a window reaches the end), and its row is the unweighted mean of its windows'
probabilities. --crop keeps the first window, exactly the input a fold's test evaluated. With --vad,
Silero VAD finds the speech first and only the speech segments are cut into windows.

Padding follows the run (model.json): a model trained with fixed padding (the authors' setting)
saw every utterance padded to max_len with its mean and no attention mask, so its windows are
padded that way here too; a model trained with --padding dynamic gets length-sorted batches
zero-padded to the batch's longest window (rounded up to 0.2 s), with the attention mask. Either way predict.py feeds
the model what its own test fed it, which is why --fold K --crop gives back the fold's test classes.

Several models (the folds of a run, the seeds of a fold) form an ensemble: the mean of their
softmax probabilities. They are loaded one at a time, each run over the decoded windows and freed,
so memory holds one model whatever the ensemble's size. The run folder alone suffices: model.json
holds the transformers config of the cut backbone, best.safetensors the weights; no hub, no
pretrained HuBERT, no network. Precision: bf16 autocast where the device computes in bf16 (a GPU
that has it, a CPU with AVX512-BF16 or AMX), else fp32; --int8 for a CPU without bf16.
"""
import argparse
import csv
import dataclasses
import importlib.util
import io
import json
import os
import re
import sys
import time
from pathlib import Path

import numpy as np

import audio
import runs
from corpus import read_split
from ensemble import PRECISIONS, load_export, load_run, predict, resolve
from export import ONNX_INSTALL
from figures import pyplot
from files import atomic_write
from settings import MIN_SAMPLES, Parser, UserError, guarded
from windows import missing, warn

# What a folder argument is searched for: what soundfile reads, and containers whose first audio
# stream FFmpeg reads (audio.load_audio).
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".opus", ".mp3", ".m4a", ".aac", ".mp4", ".mov", ".mkv", ".webm", ".avi")
LIST_EXTENSION = ".txt"  # a file argument with this extension lists paths, one a line



def parser():
    p = Parser(description=__doc__.split("\n\n")[0], epilog="\n\n".join(__doc__.split("\n\n")[1:]),
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="*", metavar="AUDIO",
                   help="audio files (any rate and channels: wav, flac, mp3, ..., or the audio of a video: mp4, "
                        f"avi, webm, ...), folders (searched recursively for {', '.join(AUDIO_EXTENSIONS)}) or {LIST_EXTENSION} files listing one path "
                        "a line (# comments; relative paths from the list's folder)")
    src = p.add_argument_group("model")
    which = src.add_mutually_exclusive_group()
    which.add_argument("--run", metavar="DIR",
                       help="run folder of reproduce.py: every finished job's model (fold*/seed*)")
    which.add_argument("--model", metavar="DIR", help="folder written by --export")
    src.add_argument("--fold", metavar="K", help="only fold K's models (its seeds averaged)")
    src.add_argument("--seed", type=int, metavar="S", help="only the models of seed S")
    inp = p.add_argument_group("input")
    inp.add_argument("--max-len", type=int, metavar="N",
                     help="window in samples at 16 kHz (default: the run's max_len, the crop it trained on); hop N/2")
    inp.add_argument("--crop", action="store_true", help="the first window only, as training and the fold's test")
    inp.add_argument("--vad", action="store_true", help="predict the speech only: Silero VAD's segments (package "
                     "silero-vad), each cut into windows when longer than one; silence is not classified")
    inp.add_argument("--shard", metavar="K/N", help="only the K-th of N equal parts of the inputs (after folders and "
                     "lists are expanded, in order): the N outputs, concatenated, are the table of one process")
    out = p.add_argument_group("output")
    out.add_argument("--out", metavar="FILE", help="write the table here (atomically) instead of stdout")
    out.add_argument("--json", action="store_true", help="JSON lines instead of CSV")
    out.add_argument("--segments", action="store_true", help="one row per window (with --vad: per speech segment), "
                     "with its start and end in seconds")
    out.add_argument("--plot", metavar="PNG", help="with one input file: its class probabilities per window over time")
    instead(p.add_argument_group("instead of predicting"))
    run = p.add_argument_group("how it runs")
    run.add_argument("--device", default="", metavar="DEV", help="cuda, cpu, ... (default: cuda when present)")
    run.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                     help="auto (default): bf16 autocast on a GPU or CPU that computes in bf16, else fp32")
    run.add_argument("--int8", action="store_true", help="CPU: the Linear layers in int8 (torch's dynamic "
                     "quantization), the rest in fp32; for a CPU without bf16")
    run.add_argument("--batch-size", type=int, metavar="N", help="windows per forward pass (default: 16; --score: the run's)")
    run.add_argument("--workers", type=int, default=2, metavar="N",
                     help="DataLoader processes decoding audio ahead (0: in this process; default: 2)")
    return p


def instead(group):
    """The flags of what predict.py does instead of predicting: --score, --export, --bench."""
    group.add_argument("--score", metavar="TEST_SET", help="score the models on a labelled test set of another corpus "
                       "(an EmoBox track2 file, EmoBox dataset folder or manifest, or a CSV of path and label, as "
                       "reproduce.py --test-on): WA, UA and macro-F1 of each model and of their ensemble, and the "
                       "ensemble's confusion matrix, each utterance's first window as the jobs score it")
    group.add_argument("--score-root", metavar="DIR", help="--score: the folder its relative audio paths start from "
                       "(as reproduce.py --test-root; default: the file's own folder)")
    group.add_argument("--export", metavar="DIR", help="write the selected models as a self-contained folder "
                       "(config.json, model.safetensors, README.md model card) and exit")
    group.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32",
                       help="--export: weights stored in this type (bf16: half the size; loaded back as fp32)")
    group.add_argument("--onnx", action="store_true", help="--export: also model.onnx (+ model.onnx.data), the "
                       "ensemble as one ONNX graph (windows in, mean probabilities out), checked with onnxruntime; "
                       f"needs {ONNX_INSTALL}")
    group.add_argument("--bench", action="store_true", help="time N test utterances of the run's corpus batched, then "
                       "one file at a time (batch 1, no workers) with the same models, and print the ratio")
    group.add_argument("--n", type=int, default=200, help="--bench: utterances (default: 200)")


# ---------------------------------------------------------------------------- inputs


def expand(inputs):
    """Paths to predict, in the order given: a folder becomes its audio files (recursively, sorted),
    a list file its lines. An input that does not exist is named at once, before anything is read;
    it keeps its place, to get its error row, unless no input exists at all (then one line, exit 2)."""
    missing = [arg for arg in inputs if not os.path.exists(arg)]
    if missing and len(missing) == len(inputs):
        raise UserError(f"no such file or folder: {', '.join(missing)}")
    paths = []
    for arg in inputs:
        p = Path(arg)
        if p.is_file() and p.suffix.lower() == LIST_EXTENSION:
            try:
                lines = p.read_text().splitlines()
            except (OSError, UnicodeDecodeError) as e:
                raise UserError(f"{arg}: cannot read this list of paths ({e})") from None
            for line in lines:
                line = line.strip()
                if line and not line.startswith("#"):
                    paths += expand_one(line if os.path.isabs(line) else os.path.join(os.path.dirname(arg), line))
        else:
            paths += expand_one(arg)
    return paths


def expand_one(arg):
    if not os.path.exists(arg):
        warn(missing(arg))  # named now, before anything is read; its row says so too
        return [arg]
    if not os.path.isdir(arg):
        return [arg]
    found = sorted(str(p.relative_to(arg)) for p in Path(arg).rglob("*")
                   if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file())
    if not found:
        warn(f"{arg}: no audio file ({', '.join(AUDIO_EXTENSIONS)}) in it")
    return [os.path.join(arg, f) for f in found]


def parse_shard(text):
    """'K/N' -> (K, N), 1 <= K <= N."""
    match = re.fullmatch(r"(\d+)/(\d+)", text)
    if not match or not 1 <= int(match[1]) <= int(match[2]):
        raise UserError(f"--shard {text}: must be K/N with 1 <= K <= N, as 3/8")
    return int(match[1]), int(match[2])


def shard(paths, k, n):
    """The k-th (1-based) of n contiguous parts of paths, as equal as can be: parts 1..n in turn are the list."""
    return paths[(k - 1) * len(paths) // n:k * len(paths) // n]


# ---------------------------------------------------------------------------- output


def columns(classes, segments):
    return ["path", *(["start", "end"] if segments else []), "emotion", *(f"p_{c}" for c in classes), "seconds",
            "error"]


def rows(recordings, setup, segments):
    """Dicts with the columns path, [start, end,] emotion, p_<class>..., seconds, error: a row per file, or
    with segments a row per part (a window, or with --vad a speech segment: the mean of its windows)."""
    rate, classes = setup.sample_rate, setup.classes
    for rec in recordings:
        if rec.error:
            yield dict(path=rec.path, **(dict(start=None, end=None) if segments else {}), emotion=None,
                       **{f"p_{c}": None for c in classes}, seconds=None, error=rec.error)
            continue
        seconds = rec.samples / rate
        if segments:
            part_of = np.array(rec.part_of)
            parts = [(dict(start=s / rate, end=e / rate), rec.probs[part_of == k].mean(0))
                     for k, (s, e) in enumerate(rec.parts)]
        else:
            parts = [({}, rec.prob())]
        for times, p in parts:
            yield dict(path=rec.path, **times, emotion=classes[int(np.argmax(p))],
                       **{f"p_{c}": float(v) for c, v in zip(classes, p)}, seconds=seconds, error=None)


def table(rows, header, as_json):
    """CSV (probabilities to 6 decimals, seconds to 4; the header even without rows, so that shards
    concatenate) or JSON lines (full precision)."""
    rows = list(rows)
    if as_json:
        return "".join(json.dumps(r) + "\n" for r in rows)
    def cell(k, v):
        if v is None:
            return ""
        return f"{v:.6f}" if k.startswith("p_") else f"{v:.4f}" if isinstance(v, float) else v
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([cell(k, v) for k, v in r.items()] for r in rows)
    return buf.getvalue()


def plot(rec, setup, window, path):
    """Each class's probability per window, at the window's centre in seconds."""
    plt = pyplot()

    rate = setup.sample_rate
    centres = [(s + e) / 2 / rate for s, e in zip(rec.starts, rec.ends)]
    fig, ax = plt.subplots(figsize=(8, 3.5), layout="constrained")
    for c, column in zip(setup.classes, rec.probs.T):
        ax.plot(centres, column, marker="o", ms=3, label=c)
    ax.set(xlabel="time (s, window centre)", ylabel="probability", ylim=(0, 1),
           title=f"{os.path.basename(rec.path)}: windows of {window / rate:.2f} s every {window // 2 / rate:.2f} s")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


def score(members, setup, args):
    """--score: each member and the ensemble on a labelled test set of another corpus, as the run's jobs scored
    it (crosscorpus.score_members): a run's own batch size and precision, unless --batch-size or --precision
    are given; a test set that shares an utterance with the run's splits is refused, as --test-on refuses it."""
    import crosscorpus
    from runtime import Runtime
    batch, precision, ids = args.batch_size or 16, args.precision, set()
    if args.run:
        saved = runs.read_config(Path(args.run) / "config.json")["config"]
        batch = args.batch_size or saved.get("batch_size", batch)
        precision = saved.get("precision", precision) if precision == "auto" else precision
        for m in members:
            ids |= {i for part in read_split(Path(args.run) / m.name / "split").values() for i in part}
    device, precision = resolve(args.device, precision if precision in ("fp32", "bf16") else "auto", args.int8)
    (test_set,) = crosscorpus.load([args.score], [args.score_root] if args.score_root else [],
                                   (f"the run {args.run}" if args.run else "the export", setup.classes, ids, set()))
    audio = crosscorpus.decode([test_set], {})
    found = crosscorpus.score_members(members, setup, test_set, audio, batch, Runtime(device, precision))
    if args.json:
        text = json.dumps(dict(test_set=test_set.name, file=args.score, n=len(test_set.utterances), precision=precision,
                               **{k: v for k, v in found.items() if k != "probs"})) + "\n"
    else:
        text = score_table(test_set, found, setup.classes, precision)
    atomic_write(args.out, lambda tmp: tmp.write_text(text)) if args.out else sys.stdout.write(text)
    return 0


def score_table(test_set, found, classes, precision):
    """--score's markdown: a row per model, the ensemble's last; the ensemble's confusion matrix."""
    pct = lambda x: f"{100 * x:.2f}"
    lines = [f"{test_set.name}: {len(test_set.utterances)} utterances ({args_counts(test_set)}); each utterance's "
             f"first window, {precision}", "", "| model | WA (%) | UA (%) | macro-F1 (%) |", "|---|---|---|---|"]
    rows = [*found["members"].items(), (f"ensemble of {len(found['members'])} (mean probabilities)", found["ensemble"])]
    lines += [f"| {name} | {pct(s['wa'])} | {pct(s['ua'])} | {pct(s['f1'])} |" for name, s in rows]
    lines += ["", "Confusion matrix of the ensemble (rows: true, columns: predicted):", "",
              "| | " + " | ".join(classes) + " |", "|---" * (len(classes) + 1) + "|"]
    lines += [f"| {c} | " + " | ".join(map(str, row)) + " |" for c, row in zip(classes, found["ensemble"]["confusion"])]
    return "\n".join(lines) + "\n"


def args_counts(test_set):
    from collections import Counter
    return ", ".join(f"{c} {n}" for c, n in Counter(u.label for u in test_set.utterances).items())


# ---------------------------------------------------------------------------- command line


def check(args):
    for name, value, low in (("--batch-size", args.batch_size, 1), ("--workers", args.workers, 0), ("--n", args.n, 1),
                             ("--max-len", args.max_len, MIN_SAMPLES)):
        if value is not None and value < low:
            raise UserError(f"{name} {value}: must be >= {low}")
    if not (args.run or args.model):
        raise UserError("no model: pass --run RUN_FOLDER (of reproduce.py) or --model EXPORTED_FOLDER")
    if args.export and args.inputs:
        raise UserError("--export writes the model folder and predicts nothing: give it no audio")
    if args.export and not args.run:
        raise UserError("--export needs --run (the model card is made from the run's config and metrics)")
    if args.score and (args.inputs or args.export or args.bench):
        raise UserError("--score scores the models on its test set: give it no audio, --export or --bench")
    if not (args.export or args.bench or args.inputs or args.score):
        raise UserError("no audio given: pass files, folders or .txt lists (see --help)")
    if args.onnx and not args.export:
        raise UserError("--onnx goes with --export DIR: it writes model.onnx into the exported folder")
    if args.shard:
        parse_shard(args.shard)
        if not args.inputs:
            raise UserError("--shard splits the audio inputs: give it some")
    needed = [("--vad", args.vad, "silero_vad", "pip install silero-vad (or pip install -r requirements.txt)")]
    needed += [("--onnx", args.onnx, name, ONNX_INSTALL) for name in ("onnx", "onnxruntime")]
    for name, asked, module, install in needed:
        if asked and importlib.util.find_spec(module) is None:
            raise UserError(f"{name} needs the {module} package, which is not installed: {install}")
    resolve(args.device, args.precision, args.int8)  # --int8 on a GPU, or with --precision bf16
    for name, path in (("--out", args.out), ("--plot", args.plot)):  # checked before minutes of predicting
        if path and not Path(path).absolute().parent.is_dir():
            raise UserError(f"{name} {path}: the folder {Path(path).absolute().parent} does not exist")


def main_checked(args):
    check(args)
    load = load_run if args.run else load_export
    members, setup = load(args.run or args.model, args.fold, args.seed)
    if setup.sample_rate != audio.SAMPLE_RATE:
        raise UserError(f"the models take {setup.sample_rate} Hz audio; predict.py reads at {audio.SAMPLE_RATE} Hz")
    if args.export:  # --max-len given: the export's window
        from export import export
        export(members, dataclasses.replace(setup, max_len=args.max_len or setup.max_len), args.run, args.export,
               args.dtype, args.onnx)
        return 0
    args.batch_size = args.batch_size or (None if args.score else 16)
    if args.bench:
        from bench import predict_speed
        return predict_speed(members, setup, args)
    if args.score:
        return score(members, setup, args)
    paths, part = inputs(args)
    window = args.max_len or setup.max_len
    device, precision = resolve(args.device, args.precision, args.int8)
    print(f"{len(members)} model(s), softmax probabilities averaged: {', '.join(m.name for m in members)} | "
          + ("speech segments (Silero VAD) cut into " if args.vad else "")
          + f"{'the first window' if args.crop else 'windows'} of {window / setup.sample_rate:.2f} s"
          + ("" if args.crop else f" every {window // 2 / setup.sample_rate:.2f} s, averaged per file")
          + f" | {setup.padding} padding as the run trained | {device.type}, {PRECISIONS[precision]}{part}",
          file=sys.stderr)
    t0 = time.perf_counter()
    recordings = predict(members, setup, paths, window, args.crop, device, args.batch_size, args.workers,
                         precision=precision, vad=args.vad)
    write(recordings, setup, paths, window, args, time.perf_counter() - t0)
    return 0


def inputs(args):
    """The paths to predict (expand), this shard's part of them (--shard), and a note of the part."""
    paths, part = expand(args.inputs), ""
    if args.shard:
        k, n = parse_shard(args.shard)
        total, paths = len(paths), shard(paths, k, n)
        part = f" | shard {k}/{n}: {len(paths)} of {total} files"
    if args.plot and len(paths) != 1:
        raise UserError(f"--plot draws one recording: the inputs hold {len(paths)} files")
    return paths, part


def write(recordings, setup, paths, window, args, seconds):
    """The table (--out, or stdout), the figure (--plot) and a line of what was heard in how long."""
    ok = [r for r in recordings if not r.error]
    if not ok and not args.shard:  # a shard writes its rows whatever they hold: the shards add up to the whole
        raise UserError(f"none of the {len(paths)} input file(s) could be read"
                        + (" or held speech" if args.vad else "") if paths else "no audio file in the inputs")
    text = table(rows(recordings, setup, args.segments), columns(setup.classes, args.segments), args.json)
    if args.out:
        atomic_write(args.out, lambda tmp: tmp.write_text(text))
    else:
        sys.stdout.write(text)
    if args.plot and ok:
        plot(ok[0], setup, window, args.plot)
    heard = sum(r.samples for r in ok) / setup.sample_rate
    bad = len(recordings) - len(ok)
    bad = f" ({bad} unreadable{' or without speech' if args.vad else ''})" if bad else ""
    print(f"{len(ok)} files{bad}, {sum(len(r.starts) for r in ok)} windows, "
          f"{heard:.1f} s of audio in {seconds:.1f} s: {heard / seconds:.1f} audio-s/s", file=sys.stderr)


def main(argv=None):  # nothing to resume: a new call predicts anew
    return guarded(main_checked, parser().parse_args(argv), interrupted="interrupted",
                   out_of_memory="out of GPU memory: rerun with a smaller --batch-size")


if __name__ == "__main__":
    sys.exit(main())
