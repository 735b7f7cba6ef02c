"""The settings of a run: one dataclass whose field comments become the --help of reproduce.py
and ablate.py, the ranges checked before any audio is decoded or any model is built, and how a
script ends on bad input (one line on stderr, exit status 2).

Settings are inert: a Config is frozen once the command line is read. What a process decides
when it starts (device, precision, rank, run folder) is runtime.Runtime's. This module imports
neither torch nor transformers, so --help answers at once.
"""
import argparse
import dataclasses
import math
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_BACKBONE = "facebook/hubert-large-ll60k"  # HuBERT-Large, Libri-Light 60k h (Sec. 2.2)
# transformers `model_type` of the backbones model.SERModel can cut: the wav2vec 2.0 family.
FAMILIES = ("hubert", "wav2vec2", "wavlm", "data2vec-audio")
# Names usable instead of a checkpoint (--demo, tests, bench): a tiny random-init model of the family.
TINY = {"tiny": "hubert", "tiny-wav2vec2": "wav2vec2", "tiny-wavlm": "wavlm", "tiny-data2vec-audio": "data2vec-audio"}
MIN_SAMPLES = 400  # HuBERT's conv front end needs 400 samples (25 ms) for its first frame


def arg(default, help, **kw):
    return field(default=default, metadata=dict(help=help, **kw))


@dataclass(frozen=True)
class Config:
    # corpus
    iemocap: str = arg("", "IEMOCAP_full_release folder (default: $IEMOCAP_ROOT)")
    demo: bool = arg(False, "synthetic IEMOCAP-shaped corpus and a tiny random HuBERT: the whole pipeline on a CPU")
    allow_incomplete: bool = arg(False, "train on a copy whose utterance counts differ from the published ones")
    manifest: str = arg("", "another corpus: an EmoBox dataset folder (data/<dataset>/) or a CSV/JSONL file with path, "
                        "label and fold or speaker columns (docs/corpora.md)")
    audio_root: str = arg("", "the folder a manifest's relative audio paths start from (EmoBox: the one holding "
                          "downloads/; a CSV: default its own folder)")
    classes: str = arg("", "comma-separated classes to keep, in this order (default: all the corpus has)")
    num_folds: int = arg(0, "a CSV with a speaker column: this many speaker-independent folds")
    # cross-corpus test sets (docs/corpora.md, "Cross-corpus")
    test_on: tuple = arg((), "test sets of other corpora, each job's best model scored on each after its own test: "
                         "EmoBox track2 files (data/track2/*.jsonl), EmoBox dataset folders or manifests, CSV files "
                         "(path, label)")
    test_root: tuple = arg((), "the folder each --test-on's relative audio paths start from, one per --test-on in "
                           "its order, '' for the default: a file's own folder (an EmoBox dataset folder has none: "
                           "the one holding downloads/)")
    # model (Sec. 2.2, Sec. 3.3)
    backbone: str = arg(DEFAULT_BACKBONE, "hub id or local folder of the pretrained encoder (HuBERT, wav2vec 2.0, WavLM "
                        "or data2vec-audio; --hubert is the same flag); " + ", ".join(TINY) + ": a small random one")
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
    lease_minutes: float = arg(10.0, "a job's lock not renewed for this long is dead, whichever host holds it: "
                               "--resume takes it over (a claim renews its lock every tenth of this; docs/runs.md)")
    no_save: bool = arg(False, "do not keep the best weights (best.safetensors) of each job")
    no_tensorboard: bool = arg(False, "write no TensorBoard event files (foldK/seedS/tb/, docs/runs.md)")
    shuffle_labels: bool = arg(False, "negative control: permute the labels of the training and validation utterances (test scores must stay at chance)")
    demo_corpus: str = arg("", "where --demo writes its synthetic corpus once (default: ~/.cache/ser-lam-mixup/)")
    demo_speaker_utterances: int = arg(40, "--demo: in-class utterances per speaker of the synthetic corpus")


# --demo swaps the corpus and the model, and scales the schedule to a CPU; flags given on the command line win.
DEMO = dict(backbone="tiny", layers=3, max_len=32_000, lr=5e-4, lr_center=5e-3, epochs=8, patience=4, workers=0)

# Fields that say which jobs run, where and how, not what a job computes: the processes sharing a run may
# differ in them. Those of THIS_PROCESS are never taken from a run folder's config.json, so that
# `--resume --out DIR` alone continues the run's own jobs (its folds, seeds and --grad-accum) on this machine.
THIS_PROCESS = {"out", "device", "workers", "resume", "no_save", "no_tensorboard"}
RUN_ONLY = THIS_PROCESS | {"fold", "seed", "seeds", "grad_accum", "lease_minutes", "test_on", "test_root"}
RENAMED = {"hubert": "backbone"}
LISTS = {f.name for f in dataclasses.fields(Config) if f.type is tuple}  # a list each, in config.json too  # the field's name in config.json files written before it was renamed


class UserError(Exception):
    """Bad input: printed as one line, exit status 2."""


class CorpusError(UserError):
    """A corpus (IEMOCAP, an EmoBox folder, a CSV) or one of its audio files that cannot be used."""


class DamagedFile(UserError):
    """A file the suite reads back (files.read_back) is missing, cut short or not what it should be."""


class DiskFull(UserError):
    """A write failed for want of space or quota (files.atomic_write); the file it would replace is intact."""


class Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line on stderr (and exit 2), not the usage block."""

    def error(self, message):
        self.exit(2, f"error: {message} (see --help)\n")


def flag(name):
    return "--" + name.replace("_", "-")


def config_parser(description, sweep=(), skip=()):
    """A parser with one flag per Config field; fields in `sweep` take a list of values."""
    p = Parser(description=description)
    for f in dataclasses.fields(Config):
        if f.name in skip:
            continue
        shown = "" if f.type in (bool, tuple) or f.default == "" else f" (default: {f.default})"
        if f.name == "demo":
            shown = " (sets " + " ".join(f"{flag(k)} {v}" for k, v in DEMO.items()) + " unless given)"
        names = [flag(f.name)] + [flag(old) for old, new in RENAMED.items() if new == f.name]  # --hubert: the paper's word
        kw = dict(help=f.metadata["help"] + shown, default=argparse.SUPPRESS, dest=f.name)
        if f.type is bool:
            p.add_argument(*names, action="store_true", **kw)
        elif f.type is tuple:
            p.add_argument(*names, nargs="+", metavar="PATH", **kw)
        else:
            p.add_argument(*names, type=f.type, choices=f.metadata.get("choices"),
                           nargs="+" if f.name in sweep else None, **kw)
    return p


def known(settings):
    """The Config fields among a dict of settings (a config.json's, say), old names renamed."""
    names = {f.name for f in dataclasses.fields(Config)}
    settings = {RENAMED.get(k, k): v for k, v in settings.items()}
    return {k: v for k, v in settings.items() if k in names}


def make_config(*layers):
    """Config from dicts of settings, later ones winning, with --demo's settings under all of them."""
    settings = {k: tuple(v) if isinstance(v, list) and k in LISTS else v
                for layer in layers for k, v in known(layer).items()}
    return Config(**{**(DEMO if settings.get("demo") else {}), **settings})


def with_test_sets(cfg, saved):
    """cfg with --test-on (and --test-root) the union of a run folder's saved test sets and those given, the
    given ones last: `--resume --out DIR --test-on NEW` adds NEW to what the run is scored on."""
    pairs = dict(zip(saved.get("test_on", ()), tuple(saved.get("test_root", ())) + ("",) * len(saved.get("test_on", ()))))
    given = dict(zip(cfg.test_on, tuple(cfg.test_root) + ("",) * len(cfg.test_on)))
    pairs = {**{k: v for k, v in pairs.items() if k not in given}, **given}
    roots = tuple(pairs.values()) if any(pairs.values()) else ()
    return dataclasses.replace(cfg, test_on=tuple(pairs), test_root=roots)


# (field, test, what is allowed): checked before any audio is decoded or any model is built
RANGES = [
    ("layers", lambda v: v >= 1, ">= 1"),
    ("dropout", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("mixup_p", lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("mixup_lambda", lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("center_weight", lambda v: v >= 0, ">= 0"),
    ("max_len", lambda v: v >= MIN_SAMPLES, f">= {MIN_SAMPLES} (HuBERT's receptive field)"),
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
    # a process with one job may wait up to a lease for a lock (runs.claim) while the other processes of its
    # torchrun wait for it within the process group's one-hour timeout (runtime.start_runtime)
    ("lease_minutes", lambda v: 0 < v <= 30, "in (0, 30]"),
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
                          "new --out",
            disk_full="free some space, then continue with --resume and the same --out"):
    """Run fn; bad input and known failures end as one line on stderr (from one process under
    torchrun) and a non-zero exit status. `interrupted`, `out_of_memory` and `disk_full` say what to
    do next (by default, how to continue a training run)."""
    rank0 = os.environ.get("RANK", "0") == "0"

    def say(message):
        # Under torchrun every rank meets the same error and rank 0 says it; torchrun stops the other
        # ranks once one exits. So another rank waits first: were it to exit at once, torchrun could
        # stop rank 0 before it said anything. An error of that rank alone is said after the wait.
        if not rank0:
            time.sleep(30)
        print(message, file=sys.stderr)

    try:
        return fn(*args)
    except DiskFull as e:
        say(f"error: {e}; {disk_full}")
        return 2
    except UserError as e:
        say(f"error: {e}")
        return 2
    except FloatingPointError as e:
        say(f"error: {e}")
        return 1
    except KeyboardInterrupt:  # Ctrl-C reaches every rank: rank 0 says what to do
        if rank0:
            print(f"\n{interrupted}", file=sys.stderr)
        return 130
    except Exception as e:
        torch = sys.modules.get("torch")  # no torch imported, no GPU memory to run out of
        # torch.cuda.OutOfMemoryError: torch.OutOfMemoryError, its device-agnostic name, is torch >= 2.5
        if torch is not None and isinstance(e, torch.cuda.OutOfMemoryError):
            say(f"error: {out_of_memory}")
            return 1
        raise
    finally:
        dist = sys.modules.get("torch.distributed")
        if dist is not None and dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
