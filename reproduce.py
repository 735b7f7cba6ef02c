"""Leave-one-session-out training on IEMOCAP: the paper's Table 3 row.

    python reproduce.py --fold all --iemocap /data/IEMOCAP_full_release
    python reproduce.py --fold all --demo          # synthetic corpus, tiny HuBERT, CPU

Fold k trains on the four other sessions (10% of them held out for early
stopping, Sec. 3.4) and tests on session k (Sec. 3.1). Every default below is
what the authors ran (see README, "Differences from the authors' script").
"""
import argparse
import dataclasses
import json
import math
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from sklearn.metrics import accuracy_score, confusion_matrix, recall_score
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm
from transformers import HubertModel

import iemocap
from iemocap import CLASSES, IemocapError
from losses import CenterLoss, joint_loss, label_adaptive_targets, mix_waveforms, mixup_targets, recognition_loss
from model import DEFAULT_HUBERT, HubertLoadError, SERModel, load_hubert, tiny_hubert_config

PAPER = {"wa": 0.7537, "ua": 0.7604}  # Table 3, "Proposed"


def arg(default, help, **kw):
    return field(default=default, metadata=dict(help=help, **kw))


@dataclass
class Config:
    # corpus
    iemocap: str = arg("", "IEMOCAP_full_release folder (default: $IEMOCAP_ROOT)")
    demo: bool = arg(False, "synthetic IEMOCAP-shaped corpus and a tiny random HuBERT: the whole pipeline on a CPU")
    allow_incomplete: bool = arg(False, "train on a copy whose utterance counts differ from the published ones")
    # model (Sec. 2.2, Sec. 3.3)
    hubert: str = arg(DEFAULT_HUBERT, "hub id or local folder of the pretrained HuBERT; tiny: a small random one (--demo)")
    layers: int = arg(22, "transformer layers kept, 1-based as in Fig. 2")
    dropout: float = arg(0.4, "attention-output ('projection') dropout in those layers, Table 1")
    pooling: str = arg("first", "F_e^0 (first frame) or Avg(F_e), Table 2", choices=["first", "avg"])
    normalize_waveform: bool = arg(False, "zero-mean/unit-variance input as the checkpoint's do_normalize (authors: peak only)")
    # data (REFERENCE.md)
    max_len: int = arg(100_000, "crop every utterance to its first N samples (6.25 s)")
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
    batch_size: int = arg(16, "utterances per optimizer step")
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
    # run
    fold: str = arg("all", "session to test on, 1..5, or all")
    out: str = arg("", "run folder (default: runs/<timestamp>)")
    seed: int = arg(0, "every random draw derives from (seed, fold, epoch)")
    device: str = arg("", "cuda, cpu, ... (default: cuda when present)")
    precision: str = arg("auto", "autocast dtype; auto: bf16 on a GPU that has it, else fp32", choices=["auto", "bf16", "fp16", "fp32"])
    workers: int = arg(4, "DataLoader worker processes (0: load in the main process)")
    resume: bool = arg(False, "continue the run in --out from its last finished epoch")
    no_save: bool = arg(False, "do not keep the best weights (best.safetensors) of each fold")
    shuffle_labels: bool = arg(False, "negative control: permute the training labels (results must stay at chance)")
    demo_corpus: str = arg("", "where --demo writes its synthetic corpus once (default: ~/.cache/ser-lam-mixup/)")
    demo_speaker_utterances: int = arg(40, "--demo: in-class utterances per speaker of the synthetic corpus")


# --demo swaps the corpus and the model, and scales the schedule to a CPU; flags given on the command line win.
DEMO = dict(hubert="tiny", layers=3, max_len=32_000, lr=5e-4, lr_center=5e-3, epochs=8, patience=4, workers=0)

# Fields that change how a run is executed, not what it computes: a resumed run may change them.
RUN_ONLY = {"fold", "out", "device", "workers", "resume", "no_save"}


class UserError(Exception):
    """Bad input: printed as one line, exit status 2."""


def config_parser(description, sweep=(), skip=()):
    """An argparse parser with one flag per Config field; fields in `sweep` take a list of values."""
    p = argparse.ArgumentParser(description=description)
    for f in dataclasses.fields(Config):
        if f.name in skip:
            continue
        name = "--" + f.name.replace("_", "-")
        shown = "" if f.type is bool or f.default == "" else f" (default: {f.default})"
        if f.name == "demo":
            shown = " (sets " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in DEMO.items()) + " unless given)"
        kw = dict(help=f.metadata["help"] + shown, default=argparse.SUPPRESS)
        if f.type is bool:
            p.add_argument(name, action="store_true", **kw)
        else:
            p.add_argument(name, type=f.type, choices=f.metadata.get("choices"),
                           nargs="+" if f.name in sweep else None, **kw)
    return p


def make_config(*layers):
    """Config from dicts of settings, later ones winning, with --demo's settings under all of them."""
    settings = {k: v for layer in layers for k, v in layer.items()}
    return Config(**{**(DEMO if settings.get("demo") else {}), **settings})


def parse_args(argv=None):
    return make_config(vars(config_parser(__doc__.split("\n\n")[0]).parse_args(argv)))


def derive_seed(*parts):
    """One 32-bit seed per (seed, fold, epoch, ...): a resumed run draws exactly what an uninterrupted one did."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


# ---------------------------------------------------------------------------- data


class TrainPairs(Dataset):
    """Training utterances with their mixup partners (Sec. 2.1).

    As in the authors' script, an utterance is mixed with probability p with a
    partner drawn at random from the whole training set. (A partner from the
    same batch would, with length-bucketed batches, always have about the same
    length and turn Eq. 3 into Eq. 2.) An unmixed item is its own partner,
    which Eq. 1 and Eq. 3 leave unchanged.
    """

    def __init__(self, utterances, data, cfg, fold):
        self.data, self.cfg, self.fold = data, cfg, fold
        self.nominal = np.array([min(round(u.duration * iemocap.SAMPLE_RATE), cfg.max_len) for u in utterances])
        self.set_epoch(0)

    def set_epoch(self, epoch):
        self.data.set_epoch(epoch)
        rng = np.random.default_rng(derive_seed(self.cfg.seed, self.fold, epoch, 1))
        n = len(self.data)
        p = self.cfg.mixup_p if self.cfg.mixup != "none" else 0.0
        self.partner = np.where(rng.random(n) < p, rng.integers(n, size=n), np.arange(n))
        # what the model will see of each item: the longer of the pair (Eq. 1); used to bucket batches
        self.lengths = np.maximum(self.nominal, self.nominal[self.partner])
        self.order_rng = np.random.default_rng(derive_seed(self.cfg.seed, self.fold, epoch, 2))

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        x_i, l_i, y_i = self.data[i]
        j = self.partner[i]
        x_j, l_j, y_j = (x_i, l_i, y_i) if j == i else self.data[j]
        return x_i, l_i, y_i, x_j, l_j, y_j

    def batches(self, batch_size, bucketed):
        """This epoch's batches: shuffled; with bucketed, utterances of like length share a batch."""
        order = self.order_rng.permutation(len(self))
        if bucketed:  # sort within windows of 50 batches, so batches stay random but pad little
            w = 50 * batch_size
            order = np.concatenate([c[np.argsort(self.lengths[c], kind="stable")] for c in np.split(order, range(w, len(order), w))])
        batches = [order[k:k + batch_size].tolist() for k in range(0, len(order), batch_size)]
        self.order_rng.shuffle(batches)
        return batches


def pad(waves, lengths, cfg):
    """(B, L) waveforms and (B, L) attention mask, or None for fixed padding.

    fixed: every item padded to max_len with its own mean and no mask (the authors' setting).
    dynamic: zeros up to the batch's longest item, and a mask so the model ignores them.
    """
    if cfg.padding == "fixed":
        x = torch.stack([torch.cat([w, w.mean().expand(cfg.max_len - len(w))]) for w in waves])
        return x, None
    L = max(int(l) for l in lengths)
    x = torch.zeros(len(waves), L)
    for b, w in enumerate(waves):
        x[b, :len(w)] = w
    mask = (torch.arange(L)[None] < torch.as_tensor(lengths)[:, None]).long()
    return x, mask


def collate_train(items, cfg):
    x_i, l_i, y_i, x_j, l_j, y_j = zip(*items)
    l_i, l_j = torch.tensor(l_i), torch.tensor(l_j)
    l_ij = torch.maximum(l_i, l_j)  # Eq. 1: the mix is as long as the longer one
    x_i, mask = pad(x_i, l_ij, cfg)
    x_j, _ = pad(x_j, l_ij, cfg)
    return x_i, x_j, mask, l_i, l_j, torch.tensor(y_i), torch.tensor(y_j)


def collate_eval(items, cfg):
    x, l, y = zip(*items)
    x, mask = pad(x, l, cfg)
    return x, mask, torch.tensor(y)


# ---------------------------------------------------------------------------- model


def build_model(cfg, fold):
    torch.manual_seed(derive_seed(cfg.seed, fold, 0, 3))  # f0, f1 and (--demo) HuBERT initialisation
    hubert = HubertModel(tiny_hubert_config()) if cfg.hubert == "tiny" else load_hubert(cfg.hubert)
    return SERModel(hubert, layers=cfg.layers, dropout=cfg.dropout, pooling=cfg.pooling,
                    num_classes=len(CLASSES), normalize_waveform=cfg.normalize_waveform)


def autocast(cfg, device):
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.precision)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


@torch.no_grad()
def evaluate(model, loader, cfg, device, desc):
    model.eval()
    y_true, y_pred = [], []
    for x, mask, y in tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, disable=None):
        with autocast(cfg, device):
            _, logits = model(x.to(device), None if mask is None else mask.to(device))
        y_true.append(y)
        y_pred.append(logits.argmax(1).cpu())
    return scores(torch.cat(y_true).numpy(), torch.cat(y_pred).numpy())


def scores(y_true, y_pred):
    """WA = accuracy over utterances; UA = mean of the per-class recalls (Sec. 3.1)."""
    labels = list(range(len(CLASSES)))
    present = sorted(set(y_true.tolist()))
    return dict(wa=float(accuracy_score(y_true, y_pred)),
                ua=float(recall_score(y_true, y_pred, labels=present, average="macro", zero_division=0)),
                recall={c: float(r) for c, r in zip(CLASSES, recall_score(y_true, y_pred, labels=labels, average=None, zero_division=0))},
                confusion=confusion_matrix(y_true, y_pred, labels=labels).tolist())


# ---------------------------------------------------------------------------- one fold


def train_step(model, center_loss, opt, opt_c, scaler, batch, cfg, device, where=""):
    """One optimizer step on a collate_train batch: Eq. 1, Eq. 3 (or 2), forward, Eq. 4-6,
    backward, both Adam steps. Returns [L, L_r, L_c] of the batch."""
    x_i, x_j, mask, l_i, l_j, y_i, y_j = (None if t is None else t.to(device, non_blocking=True) for t in batch)
    onehot = lambda y: torch.nn.functional.one_hot(y, len(CLASSES)).float()
    y_i, y_j, lam = onehot(y_i), onehot(y_j), cfg.mixup_lambda
    x = mix_waveforms(x_i, x_j, lam)  # Eq. 1 (unmixed items are their own partner)
    if cfg.mixup == "conventional":
        y = mixup_targets(y_i, y_j, lam)  # Eq. 2
    else:
        y = label_adaptive_targets(y_i, y_j, l_i.float(), l_j.float(), lam)  # Eq. 3
    opt.zero_grad(set_to_none=True)
    opt_c.zero_grad(set_to_none=True)
    step = torch.zeros(3, device=device)  # L, L_r, L_c of this batch
    micro = math.ceil(len(x) / cfg.grad_accum)
    for s in range(0, len(x), micro):  # micro-batches of --grad-accum
        part = slice(s, s + micro)
        with autocast(cfg, device):
            z, logits = model(x[part], None if mask is None else mask[part])
        l_r = recognition_loss(logits.float(), y[part])  # Eq. 4
        l_c = center_loss(z.float(), y[part].argmax(1))  # Eq. 5
        loss = joint_loss(l_r, l_c, cfg.center_weight)  # Eq. 6
        share = len(logits) / len(x)
        scaler.scale(loss * share).backward()
        step += torch.stack([loss, l_r, l_c]).detach() * share
    step = step.tolist()  # the one host sync of a step
    if not math.isfinite(step[0]):
        raise FloatingPointError(f"{where}: the loss became {step[0]}; try --precision fp32 or a lower --lr")
    scaler.step(opt)
    scaler.step(opt_c)
    scaler.update()
    return step


def atomic_write(path, write):
    """write(tmp) then rename: a run killed mid-write leaves the old file, never half a new one."""
    tmp = Path(str(path) + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def write_json(obj, path):
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2) + "\n"))


def run_fold(cfg, fold, out_dir, utterances, audio_cache=None):
    """Train on every session but `fold`, test on `fold`; returns the fold's metrics (also written as metrics.json).

    A fold whose metrics.json exists is not rerun; with cfg.resume a fold that was
    interrupted continues from its last finished epoch (state.pt) and ends with the
    same numbers as an uninterrupted run.
    """
    out_dir = Path(out_dir)
    metrics_path, state_path, best_path = out_dir / "metrics.json", out_dir / "state.pt", out_dir / "best.safetensors"
    if metrics_path.exists():
        print(f"fold {fold}: finished earlier, read from {metrics_path}")
        return json.loads(metrics_path.read_text())
    if state_path.exists() and not cfg.resume:
        raise UserError(f"{out_dir} holds an interrupted fold {fold}: pass --resume to continue it, or choose another --out")
    out_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(cfg.device)

    split = iemocap.split_fold(utterances, fold, seed=cfg.seed, val_fraction=cfg.val_fraction)
    iemocap.write_split(split, out_dir / "split")
    train = split["train"]
    if cfg.shuffle_labels:  # the negative control: sound and label no longer belong together
        labels = np.random.default_rng(derive_seed(cfg.seed, fold, 0, 4)).permutation([u.label for u in train])
        train = [dataclasses.replace(u, label=str(lab)) for u, lab in zip(train, labels)]
    make = lambda utts, aug: iemocap.UtteranceDataset(utts, max_len=cfg.max_len, augment=aug, cache=audio_cache,
                                                      seed=derive_seed(cfg.seed, fold))
    pairs = TrainPairs(train, make(train, cfg.augment), cfg, fold)
    if cfg.padding == "dynamic":  # scores do not depend on order; like lengths together pad less
        for part in ("val", "test"):
            split[part] = sorted(split[part], key=lambda u: u.duration)
    eval_loader = lambda utts: DataLoader(make(utts, "none"), batch_size=cfg.batch_size, num_workers=cfg.workers,
                                          collate_fn=partial(collate_eval, cfg=cfg))
    val_loader = eval_loader(split["val"]) if split["val"] else None
    test_loader = eval_loader(split["test"])

    model = build_model(cfg, fold).to(device)
    center_loss = CenterLoss(len(CLASSES), model.f0.out_features).to(device)  # Eq. 5
    adam = dict(betas=(cfg.beta1, cfg.beta2), eps=cfg.adam_eps, fused=device.type == "cuda")  # fused: same maths, one kernel
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, **adam)
    opt_c = torch.optim.Adam(center_loss.parameters(), lr=cfg.lr_center, **adam)
    decay = lambda e: cfg.lr_decay ** min(e, cfg.lr_decay_epochs)  # Sec. 3.2: /1.25 per epoch until the 20th
    sched = torch.optim.lr_scheduler.LambdaLR(opt, decay)
    sched_c = torch.optim.lr_scheduler.LambdaLR(opt_c, decay)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
    es = dict(epoch=0, best_wa=-1.0, best_epoch=0, bad_epochs=0, history=[])

    if state_path.exists():
        state = torch.load(state_path, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        center_loss.load_state_dict(state["center"])
        for obj, key in [(opt, "opt"), (opt_c, "opt_c"), (sched, "sched"), (sched_c, "sched_c"), (scaler, "scaler")]:
            obj.load_state_dict(state[key])
        es = state["es"]
        print(f"fold {fold}: resumed after epoch {es['epoch']}")

    for epoch in range(es["epoch"] + 1, cfg.epochs + 1):
        torch.manual_seed(derive_seed(cfg.seed, fold, epoch, 5))  # dropout
        pairs.set_epoch(epoch)
        loader = DataLoader(pairs, batch_sampler=pairs.batches(cfg.batch_size, cfg.padding == "dynamic"),
                            num_workers=cfg.workers, collate_fn=partial(collate_train, cfg=cfg),
                            pin_memory=device.type == "cuda")
        model.train()
        t0, audio_seconds, sums, steps = time.time(), 0.0, np.zeros(3), 0
        bar = tqdm(loader, desc=f"fold {fold} epoch {epoch}", leave=False, dynamic_ncols=True,
                   disable=None)  # disable=None: bars only on a terminal, not in logs
        for batch in bar:
            audio_seconds += torch.maximum(batch[3], batch[4]).sum().item() / iemocap.SAMPLE_RATE  # real audio, no padding
            step = train_step(model, center_loss, opt, opt_c, scaler, batch, cfg, device,
                              where=f"fold {fold} epoch {epoch}")
            sums += step
            steps += 1
            bar.set_postfix(loss=f"{sums[0] / steps:.3f}")
        lr = opt.param_groups[0]["lr"]
        sched.step()
        sched_c.step()
        seconds = time.time() - t0

        val = evaluate(model, val_loader, cfg, device, f"fold {fold} validate") if val_loader else None
        improved = val is None or val["wa"] > es["best_wa"]  # without validation (Sec. 3.3) the last epoch is kept
        if improved:
            es.update(best_wa=val["wa"] if val else 0.0, best_epoch=epoch, bad_epochs=0)
            best = {**model.state_dict(), **{f"center_loss.{k}": v for k, v in center_loss.state_dict().items()}}
            atomic_write(best_path, lambda tmp: save_file({k: v.contiguous() for k, v in best.items()}, tmp))
        else:
            es["bad_epochs"] += 1
        sums = (sums / steps).tolist()
        row = dict(epoch=epoch, loss=sums[0], l_r=sums[1], l_c=sums[2], lr=lr,
                   val_wa=val and val["wa"], val_ua=val and val["ua"], seconds=seconds, audio_per_s=audio_seconds / seconds)
        es["history"].append(row)
        es["epoch"] = epoch
        state = dict(model=model.state_dict(), center=center_loss.state_dict(), opt=opt.state_dict(),
                     opt_c=opt_c.state_dict(), sched=sched.state_dict(), sched_c=sched_c.state_dict(),
                     scaler=scaler.state_dict(), es=es)
        atomic_write(state_path, partial(torch.save, state))
        print(f"fold {fold} epoch {epoch:3d}  loss {row['loss']:.4f} (L_r {row['l_r']:.4f}, L_c {row['l_c']:.2f})  "
              + (f"val WA {val['wa']:.4f} UA {val['ua']:.4f}  " if val else "")
              + f"lr {lr:.2e}  {seconds:.0f} s  {row['audio_per_s']:.0f} audio-s/s" + ("  *" if improved and val else ""),
              flush=True)
        if es["bad_epochs"] >= cfg.patience:
            print(f"fold {fold}: early stop, no better validation WA for {cfg.patience} epochs")
            break

    # Sec. 3.4: "evaluating the best model" - reload it (the authors' script tested the last epoch: bug 2)
    best = load_file(best_path, device=str(device))
    model.load_state_dict({k: v for k, v in best.items() if not k.startswith("center_loss.")})
    test = evaluate(model, test_loader, cfg, device, f"fold {fold} test")
    metrics = dict(fold=fold, wa=test["wa"], ua=test["ua"], recall=test["recall"], confusion=test["confusion"],
                   best_epoch=es["best_epoch"], best_val_wa=es["best_wa"] if val_loader else None,
                   n_train=len(train), n_val=len(split["val"]), n_test=len(split["test"]), history=es["history"])
    write_json(metrics, metrics_path)
    state_path.unlink()
    if cfg.no_save:
        best_path.unlink()
    print(f"fold {fold}: test WA {test['wa']:.4f} UA {test['ua']:.4f} (best epoch {es['best_epoch']})", flush=True)
    return metrics


# ---------------------------------------------------------------------------- the run


def load_corpus(cfg):
    """The utterances to train on: the user's IEMOCAP checked against the published counts, or the demo replica."""
    if cfg.demo:
        root = Path(cfg.iemocap or cfg.demo_corpus or Path.home() / ".cache" / "ser-lam-mixup" /
                    f"synthetic-iemocap-{cfg.demo_speaker_utterances}")
        if not (root / "Session5").exists():
            print(f"writing the synthetic corpus to {root}")
            iemocap.make_synthetic_iemocap(root, utterances_per_speaker=cfg.demo_speaker_utterances)
        return iemocap.read_iemocap(root)
    root = cfg.iemocap or os.environ.get("IEMOCAP_ROOT", "")
    if not root:
        raise UserError("no corpus: pass --iemocap PATH/TO/IEMOCAP_full_release (or set IEMOCAP_ROOT), or --demo")
    utterances = iemocap.read_iemocap(root)
    problems = iemocap.check_iemocap(root, utterances)
    if problems and not cfg.allow_incomplete:
        raise UserError(f"{root} differs from the published IEMOCAP ({'; '.join(problems[:3])}); "
                        f"`python iemocap.py {root}` lists every difference, --allow-incomplete trains on it anyway")
    if problems:
        present = [u for u in utterances if os.path.isfile(u.wav)]
        print(f"warning: {root} differs from the published IEMOCAP; training on it anyway "
              f"({len(utterances) - len(present)} utterances without a wav left out)", file=sys.stderr)
        utterances = present
    return utterances


def environment(cfg):
    def git(*a):
        try:
            return subprocess.run(["git", *a], capture_output=True, text=True, cwd=Path(__file__).parent).stdout.strip()
        except OSError:
            return ""
    import sklearn
    import transformers
    return dict(git_commit=git("rev-parse", "HEAD"), git_dirty=bool(git("status", "--porcelain", "--untracked-files=no")),
                python=platform.python_version(), torch=torch.__version__, transformers=transformers.__version__,
                sklearn=sklearn.__version__, numpy=np.__version__,
                device_name=device_name(torch.device(cfg.device)))


def device_name(device):
    """The GPU's name, or the CPU's model and core count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        cpu = next(l for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("model name"))
        cpu = cpu.split(":", 1)[1].strip()
    except (OSError, StopIteration):
        cpu = platform.processor() or platform.machine()
    return f"{cpu} ({os.cpu_count()} cores)"


def summarise(cfg, results, out):
    wa, ua = np.array([r["wa"] for r in results]), np.array([r["ua"] for r in results])
    summary = dict(folds=[{k: r[k] for k in ("fold", "wa", "ua", "recall", "best_epoch")} for r in results],
                   mean=dict(wa=float(wa.mean()), ua=float(ua.mean())), std=dict(wa=float(wa.std()), ua=float(ua.std())),
                   paper=PAPER, demo=cfg.demo)
    pooled = np.sum([r["confusion"] for r in results], axis=0)
    lines = ["| fold (test session) | WA (%) | UA (%) | best epoch |", "|---|---|---|---|"]
    lines += [f"| {r['fold']} | {100 * r['wa']:.2f} | {100 * r['ua']:.2f} | {r['best_epoch']} |" for r in results]
    lines += [f"| **mean +/- std** | **{100 * wa.mean():.2f} +/- {100 * wa.std():.2f}** | "
              f"**{100 * ua.mean():.2f} +/- {100 * ua.std():.2f}** | |",
              f"| paper (Table 3) | {100 * PAPER['wa']:.2f} | {100 * PAPER['ua']:.2f} | |", "",
              "Pooled confusion matrix (rows: true, columns: predicted):", "",
              "| | " + " | ".join(CLASSES) + " |", "|---" * (len(CLASSES) + 1) + "|"]
    lines += [f"| {c} | " + " | ".join(str(n) for n in row) + " |" for c, row in zip(CLASSES, pooled)]
    if cfg.demo:
        lines.insert(0, "Synthetic demo corpus and a tiny random HuBERT: these numbers say the pipeline works, not how IEMOCAP scores.\n")
    table = "\n".join(lines) + "\n"
    write_json(summary, out / "results.json")
    (out / "results.md").write_text(table)
    return table


def resolve_device(cfg):
    cfg.device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if cfg.precision == "auto":
        bf16 = cfg.device.startswith("cuda") and torch.cuda.is_bf16_supported()
        cfg.precision = "bf16" if bf16 else "fp32"


def write_config(cfg, out):
    """config.json: the resolved settings and where they ran. A folder of another run's settings is refused."""
    path = Path(out) / "config.json"
    resolved = dataclasses.asdict(cfg)
    if path.exists():
        saved = json.loads(path.read_text())["config"]
        changed = [k for k in resolved if k not in RUN_ONLY and saved.get(k) != resolved[k]]
        if changed:
            raise UserError(f"{out} holds a run with other settings ({', '.join(changed)}): choose another --out")
    Path(out).mkdir(parents=True, exist_ok=True)
    write_json(dict(config=resolved, environment=environment(cfg)), path)


def run(cfg):
    if cfg.fold not in ("all", "1", "2", "3", "4", "5"):
        raise UserError(f"--fold must be 1..5 or all, not {cfg.fold!r}")
    if cfg.resume and not cfg.out:
        raise UserError("--resume needs the --out folder of the run to continue")
    folds = [1, 2, 3, 4, 5] if cfg.fold == "all" else [int(cfg.fold)]
    resolve_device(cfg)
    out = Path(cfg.out or Path("runs") / time.strftime("%Y%m%d-%H%M%S"))
    cfg.out = str(out)
    utterances = load_corpus(cfg)
    write_config(cfg, out)
    print(f"run folder {out}  |  {len(utterances)} utterances  |  device {cfg.device}, {cfg.precision}", flush=True)

    cache = {}  # decoded audio shared by every fold: each wav is read once per run
    results = []
    for fold in folds:
        results.append(run_fold(cfg, fold, out / f"fold{fold}", utterances, audio_cache=cache))
        print(summarise(cfg, results, out), flush=True)
    print(f"results in {out / 'results.md'}")
    return 0


def guarded(fn, *args):
    """Run fn; bad input and known failures end as one line on stderr and a non-zero exit status."""
    try:
        return fn(*args)
    except (UserError, IemocapError, HubertLoadError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except FloatingPointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except torch.OutOfMemoryError:
        print("error: out of GPU memory: try --padding dynamic, or a larger --grad-accum (the same batch in "
              "smaller pieces), then --resume with the same --out", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted: continue with --resume and the same --out", file=sys.stderr)
        return 130


def main(argv=None):
    return guarded(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
