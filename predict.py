"""Emotion of recordings, predicted by the fold models of a run (reproduce.py) or by a folder exported from them.

    python predict.py --run runs/X a.wav more/ list.txt      # CSV: path, emotion, p_<class>..., seconds, error
    python predict.py --run runs/X --fold 3 --crop a.wav      # fold 3's model on the first window, as its test saw it
    python predict.py --run runs/X --segments --plot talk.png talk.wav   # one row per window, and a plot
    python predict.py --run runs/X --vad --segments talk.wav  # one row per speech segment; silence is not classified
    python predict.py --run runs/X --shard 2/8 archive/       # the 2nd of 8 parts of the inputs (GNU parallel, SLURM)
    python predict.py --run runs/X --export model/ [--dtype bf16] [--onnx]  # a self-contained folder with a model card
    python predict.py --model model/ a.wav                    # predict from that folder alone
    python predict.py --bench --run runs/X [--n 200]          # batched vs one file at a time

Each input is served as training served an utterance (train.UtteranceDataset): read as float32
mono, resampled to 16 kHz, cut to windows of the run's max_len samples (6.25 s in the paper), each
window divided by its own peak, padded to 400 samples if shorter. The model learned from an
utterance's first window only; a longer recording gets a window every half window (starts 0, hop,
2 hop, ... until a window reaches the end), and its row is the unweighted mean of its windows'
probabilities. --crop keeps the first window, exactly the input a fold's test evaluated. With --vad,
Silero VAD finds the speech first and only the speech segments are cut into windows.

Padding follows the run (model.json): a model trained with fixed padding (the authors' setting)
saw every utterance padded to max_len with its mean and no attention mask, so its windows are
padded that way here too; a model trained with --padding dynamic gets length-sorted batches
zero-padded to the batch's longest window, with the attention mask. Either way predict.py feeds
the model what its own test fed it, which is why --fold K --crop gives back the fold's test classes.

Several models (the folds of a run, the seeds of a fold) form an ensemble: the mean of their
softmax probabilities. They are loaded one at a time, each run over the decoded windows and freed,
so memory holds one model whatever the ensemble's size. The run folder alone suffices: model.json
holds the transformers config of the cut backbone, best.safetensors the weights; no hub, no
pretrained HuBERT, no network. Precision: bf16 autocast where the device computes in bf16 (a GPU
that has it, a CPU with AVX512-BF16 or AMX), else fp32; --int8 for a CPU without bf16.
"""
import argparse
import contextlib
import csv
import dataclasses
import importlib.util
import inspect
import io
import json
import os
import re
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

import audio
import runs
import util
import train
from corpus import fold_key, read_split
from model import model_from_spec
from settings import MIN_SAMPLES, RUN_ONLY, Config, CorpusError, Parser, UserError, flag, guarded, known
from util import atomic_write, device_name, pyplot, write_json

# What a folder argument is searched for: what soundfile reads, and containers whose first audio
# stream FFmpeg reads (audio.load_audio).
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".opus", ".mp3", ".m4a", ".aac", ".mp4", ".mov", ".mkv", ".webm", ".avi")
LIST_EXTENSION = ".txt"  # a file argument with this extension lists paths, one a line
BENCH_CHUNK = 50  # --bench alternates batched and one-at-a-time over chunks of this many files
POOL = 4  # decoded windows are sorted by length in pools of this many batches (dynamic padding pads less)
# Padded windows held at once: the members run over this much input in turn before more is decoded
# (HuBERT-Large's 6.25 s windows: ~670 of them), so memory stays bounded however many files are given.
CHUNK_BYTES = 256 * 2 ** 20
PRECISIONS = {"fp32": "fp32", "bf16": "bf16 autocast",
              "int8": "int8 Linear layers (dynamic quantization), the rest fp32"}
ONNX_INSTALL = "pip install -r requirements-onnx.txt (onnx and onnxruntime)"
ONNX_TOLERANCE = 1e-4  # largest |onnxruntime - torch| of a class probability accepted after --onnx
ONNX_OPSET = 17


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
    out.add_argument("--export", metavar="DIR", help="write the selected models as a self-contained folder "
                     "(config.json, model.safetensors, README.md model card) and exit")
    out.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32",
                     help="--export: weights stored in this type (bf16: half the size; loaded back as fp32)")
    out.add_argument("--onnx", action="store_true", help="--export: also model.onnx (+ model.onnx.data), the "
                     "ensemble as one ONNX graph (windows in, mean probabilities out), checked with onnxruntime; "
                     f"needs {ONNX_INSTALL}")
    run = p.add_argument_group("how it runs")
    run.add_argument("--device", default="", metavar="DEV", help="cuda, cpu, ... (default: cuda when present)")
    run.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                     help="auto (default): bf16 autocast on a GPU or CPU that computes in bf16, else fp32")
    run.add_argument("--int8", action="store_true", help="CPU: the Linear layers in int8 (torch's dynamic "
                     "quantization), the rest in fp32; for a CPU without bf16")
    run.add_argument("--batch-size", type=int, default=16, metavar="N", help="windows per forward pass (default: 16)")
    run.add_argument("--workers", type=int, default=2, metavar="N",
                     help="DataLoader processes decoding audio ahead (0: in this process; default: 2)")
    run.add_argument("--bench", action="store_true", help="time N test utterances of the run's corpus batched, then "
                     "one file at a time (batch 1, no workers) with the same models, and print the ratio")
    run.add_argument("--n", type=int, default=200, help="--bench: utterances (default: 200)")
    return p


# ---------------------------------------------------------------------------- files read


# What to do with a damaged file, by where it comes from: every file predict.py reads goes through
# util.read_back, which names the file and what is wrong with it in one line.
RETRAIN = ("leave that job out with --fold/--seed, or delete its folder and train it again with reproduce.py --resume "
           "--out and the run folder")
REEXPORT = "export the model again with predict.py --run RUN --export DIR"


def read_json(path, advice, keys=()):
    """model.json, metrics.json, a run's or an export's config.json."""
    return util.read_json(path, advice, keys)


def read_weights(path, advice, prefix=""):
    """The tensors of a safetensors file whose names start with prefix, the prefix removed, floats as fp32
    (a bf16 export comes back as fp32). A run's center_loss.* entries (the class centers of Eq. 5, not model
    weights) are left out. Only these tensors are read: one member of an export's many."""
    def load(path):
        with safe_open(str(path), framework="pt") as f:
            names = [k for k in f.keys() if k.startswith(prefix) and not k.startswith(prefix + "center_loss.")]
            if not names:
                raise ValueError(f"no tensor {prefix}* in it")
            tensors = {k[len(prefix):]: f.get_tensor(k) for k in names}
        return {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}  # fp32 stays itself
    return util.read_back(path, load, advice)


def check_weights(path, advice):
    """A safetensors file's header and size agree (a file cut short does not): checked before any audio
    is decoded, without reading the tensors."""
    def load(path):
        with safe_open(str(path), framework="pt") as f:
            f.keys()
    util.read_back(path, load, advice)


# ---------------------------------------------------------------------------- models


@dataclass
class Member:
    """One model of the ensemble: a finished job of the run (fold, seed), where its weights are and its test
    scores. Its model is built when it runs (models())."""
    fold: str
    seed: int
    spec: dict
    file: Path  # safetensors holding its weights...
    prefix: str = ""  # ...under this prefix
    wa: float | None = None
    ua: float | None = None
    n_test: int | None = None

    @property
    def name(self):
        return f"fold{self.fold}/seed{self.seed}"

    @property
    def advice(self):
        return REEXPORT if self.prefix else RETRAIN

    def weights(self):
        return read_weights(self.file, self.advice, self.prefix)


@dataclass
class Setup:
    """How the members saw their input; the same for every member of a run."""
    classes: list
    max_len: int  # the training crop: the default window
    padding: str  # "fixed" or "dynamic" (train.pad)
    sample_rate: int


def models(members, device, int8=False):
    """Each member's model in turn, in eval mode on the device. One model is built per architecture
    (random init, no hub) and refilled with each member's saved weights (strict), so memory holds one
    member whatever the ensemble's size. int8: a copy with the Linear layers quantized (quantize)."""
    spec = model = None
    for m in members:
        if m.spec != spec:
            model = None  # the previous architecture's model is freed before the next is built
            model, spec = model_from_spec(m.spec).eval().to(device), m.spec
        weights = m.weights()
        util.read_back(m.file, lambda path: model.load_state_dict(weights), m.advice)  # another architecture's: damaged
        yield quantize(model) if int8 else model


def quantize(model):
    """A copy of the model whose Linear layers compute in int8 (torch's dynamic quantization: int8 weights,
    activations quantized per batch), the rest in fp32; CPU only. torch 2.13 warns that torch.ao.quantization
    and its quantized tensors are deprecated (the torchao package replaces them); they still work, and
    torchao is not a dependency (docs/predict.md), so the two warnings are silenced here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.ao.quantization is deprecated", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantize_per_tensor.* are deprecated", category=UserWarning)
        return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


def select(jobs, fold, seed, where):
    """The (fold, seed, ...) entries that --fold and --seed keep; one line when none is left."""
    if fold is not None and not any(j[0] == fold for j in jobs):
        raise UserError(f"--fold {fold}: {where} has fold {', '.join(sorted({j[0] for j in jobs}, key=fold_key))}")
    if seed is not None and not any(j[1] == seed and fold in (None, j[0]) for j in jobs):
        seeds = sorted({j[1] for j in jobs if fold in (None, j[0])})
        raise UserError(f"--seed {seed}: {where} has seed {', '.join(map(str, seeds))}"
                        + (f" for fold {fold}" if fold is not None else ""))
    return [j for j in jobs if fold in (None, j[0]) and seed in (None, j[1])]


def load_run(run, fold=None, seed=None):
    """(members, setup) from a run folder alone: model.json rebuilds each job's cut backbone,
    best.safetensors fills it (its center_loss.* entries are the class centers of Eq. 5, not model weights)."""
    run = Path(run)
    if not run.is_dir():
        raise UserError(f"--run {run}: no such folder")
    old = sorted(d.name for d in run.glob("fold*") if (d / "metrics.json").exists())
    if old:  # the layout before jobs (RUN/foldK/metrics.json): no model.json either
        raise UserError(f"{run} predates model.json ({old[0]} has no model.json, the config predict.py rebuilds the "
                        "model from): retrain it with reproduce.py")
    finished = []
    for job in runs.jobs_on_disk(run):
        d = run / job.name
        if not (d / "metrics.json").exists():
            continue
        if not (d / "model.json").exists():
            raise UserError(f"{run} predates model.json ({job.name} has no model.json, the config predict.py rebuilds "
                            "the model from): retrain it with reproduce.py")
        if (d / "best.safetensors").exists():  # absent: trained with --no-save
            finished.append((job.fold, job.seed, d))
    if not finished:
        raise UserError(f"--run {run}: no finished job with saved weights (fold*/seed*/ with metrics.json, "
                        "model.json and best.safetensors)")
    members, setups = [], set()
    for f, s, d in select(finished, fold, seed, str(run)):
        info = read_json(d / "model.json", RETRAIN, keys=("model", "classes", "max_len", "padding", "sample_rate"))
        metrics = read_json(d / "metrics.json", RETRAIN, keys=("wa", "ua"))
        check_weights(d / "best.safetensors", RETRAIN)
        members.append(Member(f, s, info["model"], d / "best.safetensors", "", metrics["wa"], metrics["ua"],
                              metrics.get("n_test")))
        setups.add((tuple(info["classes"]), info["max_len"], info["padding"], info["sample_rate"]))
    if len(setups) > 1:
        raise UserError(f"{run}: its jobs differ in classes, max_len, padding or sample rate; "
                        "choose one with --fold/--seed")
    classes, max_len, padding, rate = setups.pop()
    return members, Setup(list(classes), max_len, padding, rate)


def load_export(folder, fold=None, seed=None):
    """(members, setup) from a folder written by export()."""
    folder = Path(folder)
    if not (folder / "config.json").exists() or not (folder / "model.safetensors").exists():
        raise UserError(f"--model {folder}: not a folder written by predict.py --export (config.json and "
                        "model.safetensors)")
    config = read_json(folder / "config.json", REEXPORT,
                       keys=("members", "model", "classes", "window", "padding", "sample_rate"))
    check_weights(folder / "model.safetensors", REEXPORT)
    jobs = [(m["fold"], m["seed"], m) for m in config["members"]]
    members = [Member(f, s, config["model"], folder / "model.safetensors", f"fold{f}.seed{s}.", m["wa"], m["ua"],
                      m["n_test"]) for f, s, m in select(jobs, fold, seed, str(folder))]
    return members, Setup(config["classes"], config["window"], config["padding"], config["sample_rate"])


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


def missing(path):
    return f"no such file or folder: {path}"


def warn(message):
    tqdm.write(f"warning: {message}", file=sys.stderr)


def window_starts(n, window, crop=False):
    """First samples of the windows of an n-sample recording: 0, then every half window while the
    previous window ended before the recording did. --crop: the first window alone."""
    hop = max(window // 2, 1)
    starts = [0]
    while not crop and starts[-1] + window < n:
        starts.append(starts[-1] + hop)
    return starts


@contextlib.contextmanager
def torch_threads(n):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


_VAD = {}  # this process's Silero VAD: (model, get_speech_timestamps), loaded once


def speech(x):
    """(start, end) samples of the speech segments of x (16 kHz mono float32): Silero VAD (the silero-vad
    package, MIT licence, its model inside the wheel) with its defaults: threshold 0.5, speech of 250 ms
    or more, pauses of 100 ms or more, segments padded by 30 ms. It runs at one thread (two are many times
    slower on such a small model) and its model keeps state, so each process loads its own."""
    if not _VAD:
        threads = torch.get_num_threads()
        with warnings.catch_warnings():  # "torch.jit.load is deprecated" (its TorchScript file), "path is deprecated"
            warnings.filterwarnings("ignore", message=".*torch.jit.load.*", category=DeprecationWarning)
            warnings.filterwarnings("ignore", message="path is deprecated", category=DeprecationWarning)
            from silero_vad import get_speech_timestamps, load_silero_vad
            _VAD["vad"] = load_silero_vad(), get_speech_timestamps
        torch.set_num_threads(threads)  # importing silero_vad sets torch's threads to 1 for the whole process
    model, timestamps = _VAD["vad"]
    with torch_threads(1):
        found = timestamps(torch.from_numpy(x), model, sampling_rate=audio.SAMPLE_RATE)
    return [(int(t["start"]), int(t["end"])) for t in found]


@dataclass
class Recording:
    """One input as decoded (in a DataLoader worker): its windows, ready for train.pad, or why it failed.
    The windows belong to parts: each window is its own part, or with --vad the speech segment it was cut
    from; --segments gives a row per part."""
    index: int
    path: str
    samples: int = 0  # at 16 kHz
    starts: list = dataclasses.field(default_factory=list)  # samples, one per window
    ends: list = dataclasses.field(default_factory=list)
    parts: list = dataclasses.field(default_factory=list)  # (start, end) samples
    part_of: list = dataclasses.field(default_factory=list)  # the part of each window
    waves: list = dataclasses.field(default_factory=list)  # float32 arrays, one per window
    error: str = ""
    probs: np.ndarray | None = None  # (windows, classes), filled by predict()

    def prob(self):
        """The file's probabilities: the unweighted mean of its windows'."""
        return self.probs.mean(0)


class Recordings(Dataset):
    def __init__(self, paths, window, crop, vad=False):
        self.paths, self.window, self.crop, self.vad = paths, window, crop, vad

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        path = self.paths[i]
        if not os.path.isfile(path):
            return Recording(i, path, error=missing(path))
        try:
            x = audio.load_audio(path)
        except CorpusError as e:
            return Recording(i, path, error=str(e))
        except Exception as e:  # a decoder failing in a way of its own must not stop the other 9,999 files
            first = (str(e).splitlines() or [""])[0]
            return Recording(i, path, error=f"cannot read {path}: {type(e).__name__}: {first}")
        rec = Recording(i, path, len(x))
        segments = speech(x) if self.vad else [(0, len(x))]
        if not segments:
            rec.error = f"{path}: no speech found (--vad)"
        for begin, end in segments:
            starts = [begin + s for s in window_starts(end - begin, self.window, self.crop)]
            ends = [min(s + self.window, end) for s in starts]
            for s, e in zip(starts, ends):
                rec.part_of.append(len(rec.parts) if self.vad else len(rec.starts))
                rec.starts.append(s)
                rec.ends.append(e)
                if not self.vad:
                    rec.parts.append((s, e))
                # numpy, not tensors: pickled through the worker's pipe, where a tensor costs a shared-memory file each
                rec.waves.append(audio.prepare(x[s:e], self.window))
            if self.vad:
                rec.parts.append((begin, end))
        return rec


def _as_is(item):
    return item


# ---------------------------------------------------------------------------- prediction


def resolve(device, precision="auto", int8=False):
    """(torch.device, precision that runs): the device is cuda when present; the precision is int8 with
    --int8 (a CPU only), else bf16 autocast where the device computes in bf16 (a GPU that has it; a CPU
    with AVX512-BF16 or AMX, as oneDNN reports) for auto, else fp32."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if int8:
        if device.type != "cpu":
            raise UserError(f"--int8: torch's dynamic quantization runs on a CPU, not on {device.type}; "
                            "a GPU computes in bf16 (--precision bf16)")
        if precision == "bf16":
            raise UserError("--int8 computes the Linear layers in int8 and the rest in fp32: "
                            "give it no --precision bf16")
        return device, "int8"
    if precision == "auto":
        bf16 = (torch.cuda.is_bf16_supported() if device.type == "cuda" else
                device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported())
        precision = "bf16" if bf16 else "fp32"
    return device, precision


@torch.inference_mode()
def predict(members, setup, paths, window, crop=False, device="cpu", batch_size=16, workers=2, progress=True,
            precision="fp32", vad=False):
    """A Recording per path, in the order given, with .probs (windows, classes): each window's
    mean over the members of softmax(logits). Files are decoded in `workers` processes (longest
    first under dynamic padding); their windows are sorted by length in pools of POOL batches and
    padded as the run trained. The members then run over the padded batches one at a time (models()),
    in chunks of CHUNK_BYTES of windows. precision: fp32, bf16 (autocast) or int8 (resolve)."""
    device = torch.device(device)
    order = range(len(paths))
    if setup.padding == "dynamic":  # like lengths together pad less; fixed padding pads every window to the full one
        order = sorted(order, key=lambda i: -audio.header_seconds(paths[i]))
    loader = DataLoader(Recordings(paths, window, crop, vad), batch_size=None, sampler=order, collate_fn=_as_is,
                        num_workers=min(workers, len(paths)))
    done = [None] * len(paths)
    where, probs = [], []  # (file, window) of each row of probs; probs stay on the device until the end
    batches = []  # padded (x, mask) waiting for the members
    bar = dict(leave=False, dynamic_ncols=True, disable=None if progress else True)  # disable=None: on a terminal only

    def run_members():
        """Every member over the waiting batches in turn; their mean probabilities join probs."""
        each = [[] for _ in members]  # per member, its probabilities of each batch
        todo = tqdm(total=len(members) * len(batches), unit="batch", desc=f"{len(members)} model(s)", **bar)
        for k, model in enumerate(models(members, device, precision == "int8")):
            for x, mask in batches:
                x = x.to(device, non_blocking=True)
                mask = None if mask is None else mask.to(device, non_blocking=True)
                with train.autocast(precision, device):
                    each[k].append(torch.softmax(model(x, mask)[1].float(), -1))  # (B, classes)
                todo.update()
            del model  # before the next member's is made
        todo.close()
        probs.extend(torch.stack(p).mean(0) for p in zip(*each))  # the ensemble's mean, batch by batch
        batches.clear()

    def flush(pending, everything):
        pending.sort(key=lambda t: len(t[2]))
        cut = len(pending) if everything else len(pending) - len(pending) % batch_size
        for s in range(0, cut, batch_size):
            chunk = pending[s:s + batch_size]
            waves = [w for _, _, w in chunk]
            batches.append(train.pad(waves, [len(w) for w in waves], setup.padding, window))  # (B, L), (B, L) or None
            where.extend((f, k) for f, k, _ in chunk)
        if sum(x.numel() * x.element_size() for x, _ in batches) >= CHUNK_BYTES or everything and batches:
            run_members()
        return pending[cut:]

    pending = []
    for rec in tqdm(loader, total=len(paths), unit="file", desc="decoding", **bar):
        if rec.error:
            if rec.error != missing(rec.path):  # a missing file was named by expand()
                warn(rec.error)
        elif rec.samples < MIN_SAMPLES:
            warn(f"{rec.path} has {rec.samples} samples (< {MIN_SAMPLES}, HuBERT's receptive field): zero-padded")
        pending += [(rec.index, k, torch.from_numpy(w)) for k, w in enumerate(rec.waves)]
        rec.waves = []
        done[rec.index] = rec
        if len(pending) >= POOL * batch_size:
            pending = flush(pending, everything=False)
    flush(pending, everything=True)
    if probs:
        stacked = torch.cat(probs).cpu().numpy()  # the one host sync
        for rec in done:
            if not rec.error:
                rec.probs = np.zeros((len(rec.starts), len(setup.classes)), dtype=np.float32)
        for (f, k), p in zip(where, stacked):
            done[f].probs[k] = p
    return done


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


# ---------------------------------------------------------------------------- export


def export(members, setup, run, folder, dtype, onnx=False):
    """config.json, model.safetensors (every member's weights under "fold{K}.seed{S}.": one file to
    copy and one read to load) and README.md, a model card from the run's config.json and metrics;
    with onnx, model.onnx and model.onnx.data too (export_onnx)."""
    specs = [m.spec for m in members]
    if any(s != specs[0] for s in specs):
        raise UserError("the selected models differ in architecture: export one with --fold/--seed")
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--export {folder}: is a file, not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    cast = torch.bfloat16 if dtype == "bf16" else torch.float32
    weights = {f"fold{m.fold}.seed{m.seed}.{k}": (v.to(cast) if v.is_floating_point() else v).contiguous()
               for m in members for k, v in m.weights().items()}
    spec = specs[0]
    config = dict(classes=setup.classes, sample_rate=setup.sample_rate, window=setup.max_len, hop=setup.max_len // 2,
                  padding=setup.padding, pooling=spec["pooling"], layers=spec["layers"],
                  backbone=spec["backbone_config"]["model_type"],
                  members=[dict(fold=m.fold, seed=m.seed, wa=m.wa, ua=m.ua, n_test=m.n_test) for m in members],
                  dtype=dtype, model=spec)  # one spec: the members of a run share their architecture
    if onnx:  # the graph of the weights as stored, so that it computes what --model computes in fp32
        config["onnx"] = export_onnx(members, setup, folder, {k: v.float() if v.is_floating_point() else v
                                                                for k, v in weights.items()})
    # readable by all (safetensors writes 0600): an export is made to be shared
    atomic_write(folder / "model.safetensors", lambda tmp: (save_file(weights, tmp), os.chmod(tmp, 0o644)))
    write_json(config, folder / "config.json")
    card = model_card(members, setup, spec, Path(run), folder, dtype, config.get("onnx"))
    atomic_write(folder / "README.md", lambda tmp: tmp.write_text(card))
    size = (folder / "model.safetensors").stat().st_size / 2 ** 20
    print(f"exported {len(members)} model(s) ({', '.join(m.name for m in members)}) to {folder}: "
          f"model.safetensors {size:.1f} MiB ({dtype}), config.json, README.md"
          + (", model.onnx, model.onnx.data" if onnx else ""), file=sys.stderr)


class Ensemble(torch.nn.Module):
    """waveforms (B, L) [, attention_mask (B, L)] -> (B, classes), the mean of the members' softmax
    probabilities: the graph --onnx exports."""

    def __init__(self, nets):
        super().__init__()
        self.members = torch.nn.ModuleList(nets)

    def forward(self, waveforms, attention_mask=None):
        return torch.stack([torch.softmax(m(waveforms, attention_mask)[1].float(), -1) for m in self.members]).mean(0)


def export_onnx(members, setup, folder, weights):
    """model.onnx (the graph) and model.onnx.data (the weights: an ensemble of HuBERT-Large passes the 2 GB
    limit of one protobuf file) in folder: the ensemble of the members as one graph, with a dynamic batch and
    length, taking windows prepared as predict.py prepares them. Exported by torch's TorchScript exporter
    (seconds, where the dynamo exporter takes minutes), then run by onnxruntime on windows of two lengths:
    a difference from torch above ONNX_TOLERANCE is an error. Every member is in memory at once (one graph).
    Returns the config's "onnx" entry."""
    import onnx
    import onnxruntime
    # torch before 2.5 cannot export transformers' SDPA attention when given its scale (pytorch issue 125158):
    # there the same attention, computed step by step, is exported
    attention = "sdpa" if tuple(int(v) for v in re.findall(r"\d+", torch.__version__)[:2]) >= (2, 5) else "eager"
    nets = []
    for m in members:
        net = model_from_spec(m.spec, attn_implementation=attention)
        net.load_state_dict({k[len(f"fold{m.fold}.seed{m.seed}."):]: v for k, v in weights.items()
                             if k.startswith(f"fold{m.fold}.seed{m.seed}.")})
        nets.append(net)
    ensemble = Ensemble(nets).eval()  # the wrapper too: the exporter restores its training flag recursively
    names = ["waveforms"] + (["attention_mask"] if setup.padding == "dynamic" else [])
    window = setup.max_len

    def example(batch, length, seed):  # peak-normalised noise; under dynamic padding, the last item shorter
        x = torch.randn(batch, length, generator=torch.Generator().manual_seed(seed))
        x /= x.abs().amax(1, keepdim=True)
        if setup.padding == "fixed":
            return (x,)
        mask = torch.ones(batch, length, dtype=torch.long)
        mask[-1, length * 2 // 3:] = 0
        return x * mask, mask

    checks = [example(2, window, 1), example(3, max(window * 3 // 4 + 1, MIN_SAMPLES), 2)]  # two lengths
    with torch.inference_mode():
        expected = [ensemble(*args).numpy() for args in checks]
    kw = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}  # torch < 2.5: none
    tmp = Path(tempfile.mkdtemp(prefix=".onnx-", dir=folder))
    try:
        with warnings.catch_warnings():  # the exporter's deprecation notice; the tracer's notes on constant checks;
            # negative indices in the mask's advanced indexing (transformers' feature-vector mask): a window has
            # at least 400 samples, so at least one frame, and no index is negative
            warnings.simplefilter("ignore", category=DeprecationWarning)
            warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", message="Exporting aten::index operator of advanced indexing")
            torch.onnx.export(ensemble, example(2, window, 0), str(tmp / "traced.onnx"), input_names=names,
                              output_names=["probabilities"], opset_version=ONNX_OPSET,
                              dynamic_axes={**{n: {0: "batch", 1: "length"} for n in names},
                                            "probabilities": {0: "batch"}}, **kw)
        assert not any(m.training for m in ensemble.modules()), "the exporter left a module in training mode"
        del ensemble, nets  # memory for what follows: every member is in the graph once more
        graph = onnx.load(str(tmp / "traced.onnx"))  # a graph over 2 GB comes with its tensors in files beside it
        (tmp / "out").mkdir()
        onnx.save_model(graph, str(tmp / "out" / "model.onnx"), save_as_external_data=True,
                        all_tensors_to_one_file=True, location="model.onnx.data", size_threshold=1024)
        del graph
        for name in ("model.onnx.data", "model.onnx"):  # the graph last: its presence says both are whole
            os.chmod(tmp / "out" / name, 0o644)
            os.replace(tmp / "out" / name, folder / name)
    finally:
        for p in sorted(tmp.rglob("*"), reverse=True):
            p.rmdir() if p.is_dir() else p.unlink()
        tmp.rmdir()
    session = onnxruntime.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    diff = max(float(np.abs(session.run(None, {n: a.numpy() for n, a in zip(names, args)})[0] - p).max())
               for args, p in zip(checks, expected))
    shapes = [" x ".join(map(str, args[0].shape)) for args in checks]
    if not diff <= ONNX_TOLERANCE:
        raise UserError(f"--onnx: onnxruntime {onnxruntime.__version__} differs from torch by {diff:.1e} "
                        f"(> {ONNX_TOLERANCE:.0e}) on windows of {' and '.join(shapes)}: model.onnx is not to be used")
    size = sum((folder / n).stat().st_size for n in ("model.onnx", "model.onnx.data")) / 2 ** 20
    print(f"model.onnx + model.onnx.data ({size:.1f} MiB, opset {ONNX_OPSET}): onnxruntime "
          f"{onnxruntime.__version__} gives torch's probabilities to {diff:.1e} (batches of {' and '.join(shapes)} "
          "samples)", file=sys.stderr)
    return dict(file="model.onnx", data="model.onnx.data", opset=ONNX_OPSET, inputs=names, output="probabilities",
                max_difference=diff)


def model_card(members, setup, spec, run, folder, dtype, onnx=None):
    """README.md of an export: what it is, how to call it, what it computes, the members' test
    scores (metrics.json), the corpus and the settings of the run (config.json)."""
    saved = runs.read_config(run / "config.json") if (run / "config.json").exists() else {}
    settings, corpus, env = known(saved.get("config", {})), saved.get("corpus", {}), saved.get("environment", {})
    rate, window, backbone = setup.sample_rate, setup.max_len, spec["backbone_config"]
    commit = f" (git commit {env['git_commit'][:10]})" if env.get("git_commit") else ""
    padding = ("padded to the window with its mean, no attention mask" if setup.padding == "fixed" else
               "zero-padded in length-sorted batches, with the attention mask")
    lines = [f"# Speech emotion recognition: {', '.join(setup.classes)}", "",
             f"{len(members)} model(s) trained by `reproduce.py` of this repository, a reproduction of Kang, Zhang and "
             "Jiang, *Learning Robust Self-Attention Features for Speech Emotion Recognition with Label-Adaptive Mixup* "
             f"(ICASSP 2023). Exported by `predict.py --export` from the run `{run.name}`{commit}.", ""]
    if settings.get("demo"):
        lines += ["**A demo model**: trained on the synthetic IEMOCAP-shaped corpus with a tiny random HuBERT. It "
                  "shows that the pipeline works; it knows nothing of real emotional speech.", ""]
    columns = ", ".join(f"p_{c}" for c in setup.classes)
    lines += ["## Use", "", "```bash",
              f"python predict.py --model {folder.name} audio.wav more/ list.txt  # CSV: path, emotion, {columns}, "
              "seconds, error",
              f"python predict.py --model {folder.name} --segments talk.wav       # one row per window",
              "```", "",
              "## What it computes", "",
              f"- Classes, in the order of the output columns: {', '.join(setup.classes)}.",
              f"- Input: any audio file, or the first audio stream of a video (mp4, avi, webm, ...), made mono and "
              f"resampled to {rate} Hz, cut to windows of "
              f"{window} samples ({window / rate:.2f} s, the crop the models trained on) every {window // 2} samples. "
              f"Each window is divided by its own peak and {padding}, as in training. A file's probabilities are "
              "the unweighted mean of its windows'.",
              f"- Model: a {backbone['model_type']} encoder (hidden size {backbone['hidden_size']}) cut to its first "
              f"{spec['layers']} layers, pooling `{spec['pooling']}`, a 64-d projection f0 and {len(setup.classes)} "
              "logits (Fig. 1 of the paper).",
              f"- Ensemble: the mean of the softmax probabilities of {', '.join(m.name for m in members)}.",
              f"- Weights: `model.safetensors` in {dtype}, each model under the prefix `fold<K>.seed<S>.`"
              + ("; loaded back as fp32, so probabilities differ from the run's by bf16 rounding." if dtype == "bf16"
                 else "."), ""]
    if onnx:
        inputs = " and ".join(f"`{n}` (batch, samples)" for n in onnx["inputs"])
        lines += ["## ONNX", "",
                  f"`model.onnx` with `model.onnx.data` (keep them together) is the whole ensemble as one graph (opset "
                  f"{onnx['opset']}): {inputs} in, `probabilities` (batch, {len(setup.classes)}) out, the mean of the "
                  "models' softmax probabilities, for windows prepared as above (float32"
                  + (", padded to the window with its mean" if setup.padding == "fixed" else
                     ", zero-padded to the batch's longest, the mask int64, 1 on samples") + "). onnxruntime gave "
                  f"PyTorch's probabilities to {onnx['max_difference']:.1e} when it was exported. Running it with "
                  "onnxruntime alone: docs/predict.md of the repository.", ""]
    lines += ["## Test results of the models", "",
              "Each model was tested on its own fold's held-out test set (leave-one-session-out, Sec. 3.1 of the "
              "paper). An ensemble of several folds has seen every session in training: it has no held-out score "
              "on this corpus.", "",
              "| fold | seed | WA (%) | UA (%) | test utterances |", "|---|---|---|---|---|"]
    lines += [f"| {m.fold} | {m.seed} | {runs.pct(m.wa)} | {runs.pct(m.ua)} | {'-' if m.n_test is None else m.n_test} |"
              for m in members]
    if len(members) > 1:
        wa, ua = np.mean([m.wa for m in members]), np.mean([m.ua for m in members])
        lines.append(f"| **mean** | | **{runs.pct(wa)}** | **{runs.pct(ua)}** | |")
    if corpus.get("paper") and not settings.get("demo"):
        lines.append(f"| paper (Table 3) | | {runs.pct(runs.PAPER['wa'])} | {runs.pct(runs.PAPER['ua'])} | |")
    lines += ["", "## Data", "",
              f"Corpus: {corpus.get('name', 'unknown')}, classes {', '.join(corpus.get('classes', setup.classes))}.", ""]
    if settings:
        shown = {k: v for k, v in settings.items() if k not in RUN_ONLY and v not in ("", None)}
        lines += ["## Training settings", "", "`reproduce.py` flags of the run (its `config.json`):", "",
                  "| setting | value |", "|---|---|"] + [f"| `{flag(k)}` | {v} |" for k, v in shown.items()]
        if env:
            versions = ", ".join(f"{k} {env[k]}" for k in ("torch", "transformers") if k in env)
            lines += ["", f"Trained with {versions}" + (f" on {env['device_name']}" if env.get("device_name") else "")
                      + "."]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- benchmark


# ---------------------------------------------------------------------------- benchmark


def bench_paths(run, members, n):
    """The first n test utterances of the members' folds (split/test.txt), as wav paths of the run's corpus."""
    import corpus as corpora
    saved = runs.read_config(Path(run) / "config.json")["config"]
    corpus = corpora.load(Config(**known(saved)))
    wav = {u.id: u.wav for u in corpus.utterances}
    ids = []
    for m in members:
        ids += [i for i in read_split(Path(run) / m.name / "split", known=set(wav))["test"] if i not in ids]
    if not ids:
        raise UserError(f"{run}: the selected jobs list no test utterance")
    return [wav[i] for i in ids[:n]]


def bench(members, setup, args):
    """Batched prediction against one file at a time (batch 1, no workers), in one process with the
    same models. The two alternate over chunks of BENCH_CHUNK files, each chunk timed both ways (in
    turn first), so both see the same load of a shared machine; the totals give the ratio."""
    if not args.run:
        raise UserError("--bench needs --run (it predicts the run's own test utterances)")
    paths = bench_paths(args.run, members, args.n)
    device, precision = resolve(args.device, args.precision, args.int8)
    window = args.max_len or setup.max_len
    common = dict(members=members, setup=setup, window=window, crop=args.crop, device=device, progress=False,
                  precision=precision, vad=args.vad)
    batched = lambda chunk: predict(paths=chunk, batch_size=args.batch_size, workers=args.workers, **common)
    single = lambda chunk: [predict(paths=[p], batch_size=1, workers=0, **common)[0] for p in chunk]
    single(paths[:2])  # warm-up: allocator, thread pools, oneDNN kernels for both batch sizes
    batched(paths[:2 * args.batch_size])
    load = os.getloadavg()[0]
    times, results = {"batched": 0.0, "single": 0.0}, {"batched": [], "single": []}
    ratios = []
    for k, s in enumerate(range(0, len(paths), BENCH_CHUNK)):
        chunk, took = paths[s:s + BENCH_CHUNK], {}
        for way in (("batched", "single") if k % 2 == 0 else ("single", "batched")):
            t0 = time.perf_counter()
            results[way] += batched(chunk) if way == "batched" else single(chunk)
            took[way] = time.perf_counter() - t0
            times[way] += took[way]
        ratios.append(took["single"] / took["batched"])
    heard = sum(r.samples for r in results["batched"]) / setup.sample_rate
    windows = sum(len(r.starts) for r in results["batched"])
    diff = max(float(np.abs(a.probs - b.probs).max()) for a, b in zip(results["batched"], results["single"]))
    print(f"{len(paths)} files, {windows} windows, {heard:.1f} s of audio; {len(members)} model(s); window {window}, "
          f"padding {setup.padding}; {device_name(device)}, {precision}, {torch.get_num_threads()} threads; "
          f"load average {load:.1f} before, {os.getloadavg()[0]:.1f} after")
    print(f"batched (batch {args.batch_size}, {args.workers} workers): {times['batched']:.2f} s, "
          f"{heard / times['batched']:.1f} audio-s/s")
    print(f"one file at a time (batch 1, no workers): {times['single']:.2f} s, {heard / times['single']:.1f} audio-s/s")
    print(f"largest difference of a window probability between the two: {diff:.1e}")
    print(f"per chunk of {BENCH_CHUNK} files: {min(ratios):.2f}x to {max(ratios):.2f}x")
    print(f"batched / one at a time: {times['single'] / times['batched']:.2f}x")
    return 0


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
    if not (args.export or args.bench or args.inputs):
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
        setup = dataclasses.replace(setup, max_len=args.max_len or setup.max_len)
        export(members, setup, args.run, args.export, args.dtype, args.onnx)
        return 0
    if args.bench:
        return bench(members, setup, args)
    paths = expand(args.inputs)
    part = ""
    if args.shard:
        k, n = parse_shard(args.shard)
        total, paths = len(paths), shard(paths, k, n)
        part = f" | shard {k}/{n}: {len(paths)} of {total} files"
    if args.plot and len(paths) != 1:
        raise UserError(f"--plot draws one recording: the inputs hold {len(paths)} files")
    window = args.max_len or setup.max_len
    device, precision = resolve(args.device, args.precision, args.int8)
    rate = setup.sample_rate
    print(f"{len(members)} model(s), softmax probabilities averaged: {', '.join(m.name for m in members)} | "
          + ("speech segments (Silero VAD) cut into " if args.vad else "")
          + f"{'the first window' if args.crop else 'windows'} of {window / rate:.2f} s"
          + ("" if args.crop else f" every {window // 2 / rate:.2f} s, averaged per file")
          + f" | {setup.padding} padding as the run trained | {device.type}, {PRECISIONS[precision]}{part}",
          file=sys.stderr)
    t0 = time.perf_counter()
    recordings = predict(members, setup, paths, window, args.crop, device, args.batch_size, args.workers,
                         precision=precision, vad=args.vad)
    seconds = time.perf_counter() - t0
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
    heard = sum(r.samples for r in ok) / rate
    bad = len(recordings) - len(ok)
    bad = f" ({bad} unreadable{' or without speech' if args.vad else ''})" if bad else ""
    print(f"{len(ok)} files{bad}, {sum(len(r.starts) for r in ok)} windows, "
          f"{heard:.1f} s of audio in {seconds:.1f} s: {heard / seconds:.1f} audio-s/s", file=sys.stderr)
    return 0


def main(argv=None):  # nothing to resume: a new call predicts anew
    return guarded(main_checked, parser().parse_args(argv), interrupted="interrupted",
                   out_of_memory="out of GPU memory: rerun with a smaller --batch-size")


if __name__ == "__main__":
    sys.exit(main())
