"""The models of a run, or of an export, as one predictor: each member is a finished job (fold, seed);
the ensemble's probabilities are the mean of the members' softmax probabilities. The members run one
at a time over the padded windows and are freed in turn, so memory holds one member whatever the
ensemble's size. A run folder alone suffices: model.json holds the transformers config of the cut
backbone, best.safetensors the weights; no hub, no pretrained HuBERT, no network."""
import gc
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from torch.utils.data import DataLoader
from tqdm import tqdm

import audio
import runs
from corpus import fold_key
from data import pad
from files import read_back, read_json
from model import model_from_spec
from runtime import autocast
from settings import MIN_SAMPLES, UserError
from windows import Recordings, missing, warn

POOL = 4  # decoded windows are sorted by length in pools of this many batches (dynamic padding pads less)
# Padded windows held at once: the members run over this much input in turn before more is decoded
# (HuBERT-Large's 6.25 s windows: ~670 of them), so memory stays bounded however many files are given.
CHUNK_BYTES = 256 * 2 ** 20
PRECISIONS = {"fp32": "fp32", "bf16": "bf16 autocast",
              "int8": "int8 Linear layers (dynamic quantization), the rest fp32"}

# What to do with a damaged file, by where it comes from: every file read here goes through
# files.read_back, which names the file and what is wrong with it in one line.
RETRAIN = ("leave that job out with --fold/--seed, or delete its folder and train it again with reproduce.py --resume "
           "--out and the run folder")
REEXPORT = "export the model again with predict.py --run RUN --export DIR"


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
    return read_back(path, load, advice)


def check_weights(path, advice):
    """A safetensors file's header and size agree (a file cut short does not): checked before any audio
    is decoded, without reading the tensors."""
    def load(path):
        with safe_open(str(path), framework="pt") as f:
            f.keys()
    read_back(path, load, advice)


# ---------------------------------------------------------------------------- the members


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

    def shapes(self):
        """{name: (safetensors dtype, shape)} of its tensors, in the file's order, from the file's header alone:
        the names as weights() gives them."""
        def load(path):
            with safe_open(str(path), framework="pt") as f:
                return {k[len(self.prefix):]: (f.get_slice(k).get_dtype(), f.get_slice(k).get_shape())
                        for k in f.keys() if k.startswith(self.prefix) and not k.startswith(self.prefix + "center_loss.")}
        return read_back(self.file, load, self.advice)


@dataclass
class Setup:
    """How the members saw their input; the same for every member of a run."""
    classes: list
    max_len: int  # the training crop: the default window
    padding: str  # "fixed" or "dynamic" (train.pad)
    sample_rate: int


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


def models(members, device, int8=False):
    """Each member's model in turn, in eval mode on the device, made from its saved weights alone: the
    architecture built on the meta device (no memory, no random init), then the weights read assigned to
    it (strict: another architecture's file is a damaged one). Memory holds one member at a time, whatever
    the ensemble's size. int8: its Linear layers quantized in place as it is loaded (quantize), with no
    fp32 copy kept beside them."""
    for m in members:
        weights = m.weights()
        with torch.device("meta"):
            model = model_from_spec(m.spec)
        read_back(m.file, lambda path: model.load_state_dict(weights, assign=True), m.advice)
        weights = None
        model = model.eval().to(device)
        yield quantize(model) if int8 else model
        model = None  # freed before the next member's weights are read:
        gc.collect()  # some of transformers' modules sit in reference cycles, which only the collector frees


def quantize(model):
    """The model with its Linear layers replaced, in place, by int8 ones (torch's dynamic quantization: int8
    weights, activations quantized per batch), the rest in fp32; CPU only. torch 2.13 warns that
    torch.ao.quantization and its quantized tensors are deprecated (the torchao package replaces them); they
    still work, and torchao is not a dependency (docs/predict.md), so the two warnings are silenced here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.ao.quantization is deprecated", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantize_per_tensor.* are deprecated", category=UserWarning)
        return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)


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


def decoded(paths, window, crop, vad, padding, workers):
    """Each input as a windows.Recording, decoded in `workers` processes, in the order given (longest
    first under dynamic padding, so that a batch holds windows of like length)."""
    order = range(len(paths))
    if padding == "dynamic":  # like lengths together pad less; fixed padding pads every window to the full one
        order = sorted(order, key=lambda i: -audio.header_seconds(paths[i]))
    return DataLoader(Recordings(paths, window, crop, vad), batch_size=None, sampler=order, collate_fn=_as_is,
                      num_workers=min(workers, len(paths)))


def _as_is(item):
    return item


class Batches:
    """Decoded windows on their way to the members: sorted by length in pools of POOL batches, padded
    as the run trained (data.pad), and where each padded row came from (file, window)."""

    def __init__(self, padding, window, batch_size):
        self.padding, self.window, self.batch_size = padding, window, batch_size
        self.pending, self.padded, self.where = [], [], []

    def add(self, rec):
        self.pending += [(rec.index, k, torch.from_numpy(w)) for k, w in enumerate(rec.waves)]
        rec.waves = []
        if len(self.pending) >= POOL * self.batch_size:
            self.pad(everything=False)

    def pad(self, everything):
        """The waiting windows into padded batches: whole batches only, unless `everything`."""
        self.pending.sort(key=lambda t: len(t[2]))
        cut = len(self.pending) if everything else len(self.pending) - len(self.pending) % self.batch_size
        for s in range(0, cut, self.batch_size):
            chunk = self.pending[s:s + self.batch_size]
            waves = [w for _, _, w in chunk]
            self.padded.append(pad(waves, [len(w) for w in waves], self.padding, self.window))  # (B, L), (B, L) or None
            self.where.extend((f, k) for f, k, _ in chunk)
        self.pending = self.pending[cut:]

    def take(self, at_least=0):
        """The padded batches, once they hold at_least bytes (all of them for 0), and no more."""
        if not self.padded or sum(x.numel() * x.element_size() for x, _ in self.padded) < at_least:
            return []
        taken, self.padded = self.padded, []
        return taken


def run_members(members, batches, device, precision, bar, loaded=None):
    """Every member over the padded batches in turn (models(), or the `loaded` models of the members): the
    mean of their softmax probabilities, one (B, classes) tensor per batch, on the device. No batch: no
    member is loaded."""
    if not batches:
        return []
    each = [[] for _ in members]  # per member, its probabilities of each batch
    todo = tqdm(total=len(members) * len(batches), unit="batch", desc=f"{len(members)} model(s)", **bar)
    made = iter(loaded or models(members, device, precision == "int8"))
    for k in range(len(members)):
        model = next(made)  # not enumerate(made): its reused tuple would hold the last member while the next is read
        with autocast(precision, device):  # one context per member: bf16 autocast casts its weights once (predict())
            for x, mask in batches:
                x = x.to(device, non_blocking=True)
                mask = None if mask is None else mask.to(device, non_blocking=True)
                each[k].append(torch.softmax(model(x, mask)[1].float(), -1))  # (B, classes)
                todo.update()
        del model  # before the next member's is made
    todo.close()
    return [torch.stack(p).mean(0) for p in zip(*each)]  # the ensemble's mean, batch by batch


@torch.no_grad()
def predict(members, setup, paths, window, crop=False, device="cpu", batch_size=16, workers=2, progress=True,
            precision="fp32", vad=False, loaded=None):
    """A windows.Recording per path, in the order given, with .probs (windows, classes): each window's
    mean over the members of softmax(logits). Decoding runs ahead in `workers` processes; the members
    run over the padded batches one at a time, in chunks of CHUNK_BYTES of windows. precision: fp32,
    bf16 (autocast) or int8 (resolve). loaded: the members' models, made once by the caller (models())
    for many calls, instead of in turn by each. no_grad, not inference_mode: under inference_mode
    autocast casts every weight anew for every batch; under no_grad it keeps each cast for the context."""
    device = torch.device(device)
    bar = dict(leave=False, dynamic_ncols=True, disable=None if progress else True)  # disable=None: on a terminal only
    done, probs, batches = [None] * len(paths), [], Batches(setup.padding, window, batch_size)
    for rec in tqdm(decoded(paths, window, crop, vad, setup.padding, workers), total=len(paths), unit="file",
                    desc="decoding", **bar):
        if rec.error:
            if rec.error != missing(rec.path):  # a missing file was named already, before decoding
                warn(rec.error)
        elif rec.samples < MIN_SAMPLES:
            warn(f"{rec.path} has {rec.samples} samples (< {MIN_SAMPLES}, HuBERT's receptive field): zero-padded")
        batches.add(rec)
        done[rec.index] = rec
        probs += run_members(members, batches.take(at_least=CHUNK_BYTES), device, precision, bar, loaded)
    batches.pad(everything=True)
    probs += run_members(members, batches.take(), device, precision, bar, loaded)
    if probs:
        stacked = torch.cat(probs).cpu().numpy()  # the one host sync
        for rec in done:
            if not rec.error:
                rec.probs = np.zeros((len(rec.starts), len(setup.classes)), dtype=np.float32)
        for (f, k), p in zip(batches.where, stacked):
            done[f].probs[k] = p
    return done
