"""The settings of a run and their checks: one dataclass whose field comments become every
script's --help (reproduce.py, ablate.py), the ranges checked before any audio is decoded or any
model is built, and how a script ends on bad input: one line on stderr and exit status 2.
"""
import argparse
import dataclasses
import math
import os
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

import iemocap
from iemocap import IemocapError
from model import DEFAULT_BACKBONE, TINY, BackboneError, backbone_config


def arg(default, help, **kw):
    return field(default=default, metadata=dict(help=help, **kw))


@dataclass
class Config:
    # corpus
    iemocap: str = arg("", "IEMOCAP_full_release folder (default: $IEMOCAP_ROOT)")
    demo: bool = arg(False, "synthetic IEMOCAP-shaped corpus and a tiny random HuBERT: the whole pipeline on a CPU")
    allow_incomplete: bool = arg(False, "train on a copy whose utterance counts differ from the published ones")
    manifest: str = arg("", "another corpus: an EmoBox dataset folder (data/<dataset>/) or a CSV/JSONL file with path, "
                        "label and fold or speaker columns (README, 'Your own corpus')")
    audio_root: str = arg("", "the folder a manifest's relative audio paths start from (EmoBox: the one holding "
                          "downloads/; a CSV: default its own folder)")
    classes: str = arg("", "comma-separated classes to keep, in this order (default: all the corpus has)")
    num_folds: int = arg(0, "a CSV with a speaker column: this many speaker-independent folds")
    # model (Sec. 2.2, Sec. 3.3)
    hubert: str = arg(DEFAULT_BACKBONE, "hub id or local folder of the pretrained backbone (HuBERT, wav2vec 2.0, WavLM "
                      "or data2vec-audio); " + ", ".join(TINY) + ": a small random one (--demo)")
    layers: int = arg(22, "transformer layers kept, 1-based as in Fig. 2")
    dropout: float = arg(0.4, "attention-output ('projection') dropout in those layers, Table 1")
    pooling: str = arg("first", "F_e^0 (first frame) or Avg(F_e), Table 2", choices=["first", "avg"])
    normalize_waveform: bool = arg(False, "zero-mean/unit-variance input as the checkpoint's do_normalize (authors: peak only)")
    # data (BACKGROUND.md, "The authors' script")
    max_len: int = arg(100_000, "crop every utterance to its first N samples (6.25 s), then peak-normalise it")
    padding: str = arg("fixed", "fixed: pad to max_len with the utterance mean, no mask (authors); "
                       "dynamic: pad to the batch's longest, length-bucketed, with attention mask", choices=["fixed", "dynamic"])
    augment: str = arg("authors", "waveform augmentation chain", choices=["none", "authors", "paper"])
    # label-adaptive mixup (Sec. 2.1)
    mixup: str = arg("adaptive", "targets of mixed pairs: Eq. 3 (adaptive), Eq. 2 (conventional) or no mixing",
                     choices=["none", "conventional", "adaptive"])
    mixup_p: float = arg(0.5, "probability that a training utterance is mixed with a random partner")
    mixup_lambda: float = arg(0.5, "lambda of Eq. 1-3 (the paper fixes it at 0.5)")
    # losses (Sec. 2.3)
    center_weight: float = arg(0.002, "lambda of Eq. 6, the center-loss weight (Table 2)")
    # optimisation (Sec. 3.2)
    batch_size: int = arg(16, "utterances per optimizer step (under torchrun: split across the processes)")
    grad_accum: int = arg(1, "split each batch into this many micro-batches (same result, less memory)")
    lr: float = arg(1e-4, "Adam learning rate of the model")
    lr_center: float = arg(1e-3, "Adam learning rate of the class centers")
    beta1: float = arg(0.9, "Adam beta1 (both optimizers)")
    beta2: float = arg(0.98, "Adam beta2 (both optimizers)")
    adam_eps: float = arg(1e-9, "Adam epsilon (both optimizers)")
    lr_decay: float = arg(0.8, "both learning rates are multiplied by this after each epoch...")
    lr_decay_epochs: int = arg(20, "...of the first N epochs, then held")
    epochs: int = arg(100, "at most this many epochs")
    patience: int = arg(10, "stop after N epochs without a better validation WA")
    val_fraction: float = arg(0.1, "class-stratified share of the training sessions held out for early stopping "
                              "(0: no validation, test the last epoch, as in Sec. 3.3)")
    # run: which jobs (fold x seed), where, on what
    fold: str = arg("all", "fold to test on (IEMOCAP: the session, 1..5), or all")
    seed: int = arg(0, "the first seed; every random draw of a job derives from (seed, fold, epoch)")
    seeds: int = arg(1, "seeds per fold: --seed .. --seed+N-1 (each fold x seed is one job)")
    out: str = arg("", "run folder (default: runs/<timestamp>)")
    device: str = arg("", "cuda, cpu, ... (default: cuda when present; under torchrun cuda:LOCAL_RANK)")
    precision: str = arg("auto", "autocast dtype; auto: bf16 on a GPU that has it, else fp32", choices=["auto", "bf16", "fp16", "fp32"])
    workers: int = arg(4, "DataLoader worker processes (0: load in the main process)")
    resume: bool = arg(False, "continue interrupted jobs in --out from their last finished epoch")
    no_save: bool = arg(False, "do not keep the best weights (best.safetensors) of each job")
    shuffle_labels: bool = arg(False, "negative control: permute the labels of the training and validation utterances (test scores must stay at chance)")
    demo_corpus: str = arg("", "where --demo writes its synthetic corpus once (default: ~/.cache/ser-lam-mixup/)")
    demo_speaker_utterances: int = arg(40, "--demo: in-class utterances per speaker of the synthetic corpus")


# --demo swaps the corpus and the model, and scales the schedule to a CPU; flags given on the command line win.
DEMO = dict(hubert="tiny", layers=3, max_len=32_000, lr=5e-4, lr_center=5e-3, epochs=8, patience=4, workers=0)

# Fields that say which jobs run where, not what a job computes: processes sharing a run may differ in them.
RUN_ONLY = {"fold", "seed", "seeds", "out", "device", "workers", "resume", "no_save", "grad_accum"}


class UserError(Exception):
    """Bad input: printed as one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line on stderr (and exit 2), not the usage block."""

    def error(self, message):
        self.exit(2, f"error: {message} (see --help)\n")


def config_parser(description, sweep=(), skip=()):
    """A parser with one flag per Config field; fields in `sweep` take a list of values."""
    p = Parser(description=description)
    for f in dataclasses.fields(Config):
        if f.name in skip:
            continue
        name = flag(f.name)
        shown = "" if f.type is bool or f.default == "" else f" (default: {f.default})"
        if f.name == "demo":
            shown = " (sets " + " ".join(f"{flag(k)} {v}" for k, v in DEMO.items()) + " unless given)"
        names = [name, "--backbone"] if f.name == "hubert" else [name]  # --backbone: the same flag, for any family
        kw = dict(help=f.metadata["help"] + shown, default=argparse.SUPPRESS, dest=f.name)
        if f.type is bool:
            p.add_argument(*names, action="store_true", **kw)
        else:
            p.add_argument(*names, type=f.type, choices=f.metadata.get("choices"),
                           nargs="+" if f.name in sweep else None, **kw)
    return p


def make_config(*layers):
    """Config from dicts of settings, later ones winning, with --demo's settings under all of them."""
    settings = {k: v for layer in layers for k, v in layer.items()}
    return Config(**{**(DEMO if settings.get("demo") else {}), **settings})


def flag(name):
    return "--" + name.replace("_", "-")


# (field, test, what is allowed): checked before any audio is decoded or any model is built
RANGES = [
    ("layers", lambda v: v >= 1, ">= 1"),
    ("dropout", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("mixup_p", lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("mixup_lambda", lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("center_weight", lambda v: v >= 0, ">= 0"),
    ("max_len", lambda v: v >= iemocap.MIN_SAMPLES, f">= {iemocap.MIN_SAMPLES} (HuBERT's receptive field)"),
    ("batch_size", lambda v: v >= 1, ">= 1"),
    ("grad_accum", lambda v: v >= 1, ">= 1"),
    ("lr", lambda v: v > 0, "> 0"),
    ("lr_center", lambda v: v > 0, "> 0"),
    ("adam_eps", lambda v: v > 0, "> 0"),
    ("beta1", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("beta2", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("lr_decay", lambda v: 0 < v <= 1, "in (0, 1]"),
    ("lr_decay_epochs", lambda v: v >= 0, ">= 0"),
    ("epochs", lambda v: v >= 1, ">= 1"),
    ("patience", lambda v: v >= 1, ">= 1"),
    ("val_fraction", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("seeds", lambda v: v >= 1, ">= 1"),
    ("workers", lambda v: v >= 0, ">= 0"),
    ("demo_speaker_utterances", lambda v: v >= 1, ">= 1"),
    ("num_folds", lambda v: v == 0 or v >= 2, "0 or >= 2"),
]


def check_config(cfg):
    """Every setting in its range: one line naming the flag, the value and what is allowed."""
    for name, ok, allowed in RANGES:
        value = getattr(cfg, name)
        if not (isinstance(value, (int, float)) and math.isfinite(value) and ok(value)):
            raise UserError(f"{flag(name)} {value}: must be {allowed}")
    if cfg.batch_size < cfg.grad_accum:
        raise UserError(f"--batch-size {cfg.batch_size}: must be >= --grad-accum ({cfg.grad_accum})")


def check_backbone(cfg):
    """--layers against the backbone's layer count, read from its config (no weights)."""
    try:
        num_layers = backbone_config(cfg.hubert).num_hidden_layers
    except BackboneError as e:
        raise UserError(f"--hubert {cfg.hubert}: {e}") from None
    if cfg.layers > num_layers:
        raise UserError(f"--layers {cfg.layers}: must be in 1..{num_layers}, the layers of --hubert {cfg.hubert}")


def check_out(out):
    """--out must be a folder that can be created and written; checked without leaving anything behind."""
    out = Path(out).absolute()
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: is a file, not a folder")
    parent = out
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"--out {out}: cannot be created, {parent} is a file")
    try:  # a real probe: os.access says yes to root on a read-only place
        probe = Path(os.path.join(parent, f".write-probe-{socket.gethostname()}-{os.getpid()}"))
        probe.mkdir()
        probe.rmdir()
    except OSError as e:
        raise UserError(f"--out {out}: cannot be written ({e.strerror} in {parent})") from None


def guarded(fn, *args, interrupted="interrupted: continue with --resume and the same --out",
            out_of_memory="out of GPU memory: rerun with a larger --grad-accum (the same batch in smaller pieces, the "
                          "same result), --resume and the same --out; --padding dynamic needs less memory too, in a "
                          "new --out"):
    """Run fn; bad input and known failures end as one line on stderr (from one process under
    torchrun) and a non-zero exit status. `interrupted` and `out_of_memory` say what to do next
    (by default, how to continue a training run)."""
    say = (lambda m: print(m, file=sys.stderr)) if os.environ.get("RANK", "0") == "0" else (lambda m: None)
    try:
        return fn(*args)
    except (UserError, IemocapError, BackboneError) as e:
        say(f"error: {e}")
        return 2
    except FloatingPointError as e:
        say(f"error: {e}")
        return 1
    except torch.cuda.OutOfMemoryError:  # torch.OutOfMemoryError, its device-agnostic name, is torch >= 2.5
        say(f"error: {out_of_memory}")
        return 1
    except KeyboardInterrupt:
        say(f"\n{interrupted}")
        return 130
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
