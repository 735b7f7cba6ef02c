"""The training machinery that reproduce.py, ablate.py and bench.py share: the data pipeline,
one training step, and one job (a fold trained and tested with one seed), in one process or
data-parallel under torchrun. The settings and their checks are in settings.py.

The loop of `run_job` reads like Sec. 3.2: each epoch, batches of mixed pairs (Eq. 1, Eq. 3),
the joint loss (Eq. 4-6), two Adam steps, the learning rates x0.8; then the validation WA
decides early stopping, and the best epoch's weights are tested (Sec. 3.4).
"""
import dataclasses
import datetime
import json
import math
import os
import platform
import socket
import subprocess
import time
from contextlib import nullcontext
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from sklearn.metrics import accuracy_score, confusion_matrix, recall_score
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

import iemocap
from losses import CenterLoss, joint_loss, label_adaptive_targets, mix_waveforms, mixup_targets, recognition_loss
from model import SERModel, load_backbone
from settings import UserError


def derive_seed(*parts):
    """One 32-bit seed per (seed, fold, epoch, ...): a resumed run draws exactly what an uninterrupted one did."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


# ---------------------------------------------------------------------------- data


class TrainPairs(Dataset):
    """Training utterances with their mixup partners (Sec. 2.1).

    As in the authors' script, an utterance is mixed with probability p with a
    partner drawn at random from the whole training set. (A partner from the
    same batch would, with length-bucketed batches, always have about the same
    length and turn Eq. 3 into Eq. 2.) An unmixed item is its own partner,
    which Eq. 1 and Eq. 3 leave unchanged.
    """

    def __init__(self, utterances, data, cfg, key):
        self.data, self.cfg, self.key = data, cfg, key  # key: (seed, fold number) of the job
        self.nominal = np.array([min(round(u.duration * iemocap.SAMPLE_RATE), cfg.max_len) for u in utterances])
        self.set_epoch(0)

    def set_epoch(self, epoch):
        self.data.set_epoch(epoch)
        rng = np.random.default_rng(derive_seed(*self.key, epoch, 1))
        n = len(self.data)
        p = self.cfg.mixup_p if self.cfg.mixup != "none" else 0.0
        self.partner = np.where(rng.random(n) < p, rng.integers(n, size=n), np.arange(n))
        # what the model will see of each item: the longer of the pair (Eq. 1); used to bucket batches
        self.lengths = np.maximum(self.nominal, self.nominal[self.partner])
        self.order_rng = np.random.default_rng(derive_seed(*self.key, epoch, 2))

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


def pad(waves, lengths, padding, max_len):
    """(B, L) waveforms and (B, L) attention mask, or None for fixed padding.

    fixed: every item padded to max_len with its own mean and no mask (the authors' setting).
    dynamic: zeros up to the batch's longest item, and a mask so the model ignores them.
    """
    if padding == "fixed":
        x = torch.stack([torch.cat([w, w.mean().expand(max_len - len(w))]) for w in waves])
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
    x_i, mask = pad(x_i, l_ij, cfg.padding, cfg.max_len)
    x_j, _ = pad(x_j, l_ij, cfg.padding, cfg.max_len)
    return x_i, x_j, mask, l_i, l_j, torch.tensor(y_i), torch.tensor(y_j)


def collate_eval(items, cfg):
    x, l, y = zip(*items)
    x, mask = pad(x, l, cfg.padding, cfg.max_len)
    return x, mask, torch.tensor(y)


# ---------------------------------------------------------------------------- model


def build_model(cfg, num_classes, init_seed):
    """SERModel of cfg, f0, f1 and (a tiny random backbone) initialised from init_seed."""
    torch.manual_seed(init_seed)
    model = SERModel(load_backbone(cfg.hubert), layers=cfg.layers, dropout=cfg.dropout, pooling=cfg.pooling,
                     num_classes=num_classes, normalize_waveform=cfg.normalize_waveform)
    # Weights the forward pass never uses (the time-mask embedding, masking being off) get no
    # gradient; freezing them says so to DistributedDataParallel and changes nothing else.
    for name, p in model.named_parameters():
        if name.endswith("masked_spec_embed"):
            p.requires_grad_(False)
    return model


def autocast(precision, device):
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


@torch.no_grad()
def evaluate(model, loader, cfg, device, desc, classes):
    model.eval()
    y_true, y_pred = [], []
    for x, mask, y in tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, disable=None):
        with autocast(cfg.precision, device):
            _, logits = model(x.to(device), None if mask is None else mask.to(device))
        y_true.append(y)
        y_pred.append(logits.argmax(1).cpu())
    return scores(torch.cat(y_true).numpy(), torch.cat(y_pred).numpy(), classes)


def scores(y_true, y_pred, classes):
    """WA = accuracy over utterances; UA = mean of the per-class recalls (Sec. 3.1)."""
    labels = list(range(len(classes)))
    present = sorted(set(y_true.tolist()))
    return dict(wa=float(accuracy_score(y_true, y_pred)),
                ua=float(recall_score(y_true, y_pred, labels=present, average="macro", zero_division=0)),
                recall={c: float(r) for c, r in zip(classes, recall_score(y_true, y_pred, labels=labels, average=None, zero_division=0))},
                confusion=confusion_matrix(y_true, y_pred, labels=labels).tolist())


# ---------------------------------------------------------------------------- data parallel


def world():
    """(rank, world size): (0, 1) outside torchrun."""
    return (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)


def init_distributed(cfg):
    """Under torchrun: one process group for the whole run (NCCL on GPUs, gloo on CPUs), and this
    process's device (cuda:LOCAL_RANK). Outside torchrun: nothing."""
    if "LOCAL_RANK" not in os.environ or dist.is_initialized():
        return
    local = int(os.environ["LOCAL_RANK"])
    size = int(os.environ["WORLD_SIZE"])
    if size > cfg.batch_size:
        raise UserError(f"torchrun started {size} processes, more than --batch-size {cfg.batch_size}: each process "
                        "needs at least one utterance of every batch; use fewer processes or a larger batch")
    if cfg.device in ("", "cuda") and torch.cuda.is_available():  # "cuda" names no GPU: this process's own
        cfg.device = f"cuda:{local}"
    if cfg.device.startswith("cuda"):
        torch.cuda.set_device(torch.device(cfg.device))
    backend = "nccl" if cfg.device.startswith("cuda") else "gloo"
    dist.init_process_group(backend, timeout=datetime.timedelta(hours=1))  # long: rank 0 alone tests and saves


def broadcast(obj):
    """rank 0's obj on every rank."""
    if world()[1] == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def rank_batches(batches, rank, size):
    """This rank's part of each global batch, and its weight in the batch's mean loss.

    Contiguous slices, so the ranks together see exactly the single-process batch. A rank
    whose slice is empty (a last batch smaller than the world) computes one item with weight
    0: every rank must take part in every step's gradient all-reduce."""
    parts = []
    for b in batches:
        per = math.ceil(len(b) / size)
        part = b[rank * per:(rank + 1) * per]
        parts.append((part, len(part) / len(b)) if part else (b[:1], 0.0))
    return parts


# ---------------------------------------------------------------------------- one step


def optimizers(cfg, model, center_loss, fused=None):
    """Sec. 3.2: Adam for the model at --lr, and for the centers of Eq. 5 at --lr-center."""
    adam = dict(betas=(cfg.beta1, cfg.beta2), eps=cfg.adam_eps, fused=fused)
    return (torch.optim.Adam(model.parameters(), lr=cfg.lr, **adam),
            torch.optim.Adam(center_loss.parameters(), lr=cfg.lr_center, **adam))


def train_step(model, center_loss, opt, opt_c, scaler, batch, cfg, device, weight=1.0, where=""):
    """One optimizer step on a collate_train batch: Eq. 1, Eq. 3 (or 2), forward, Eq. 4-6,
    backward, both Adam steps. Returns [L, L_r, L_c] of the (global) batch.

    weight: this process's share of the global batch (1 in one process). Under torchrun the
    gradient of each rank's mean loss is scaled by weight * world size, so that the average
    that DistributedDataParallel takes over the ranks equals the single-process gradient."""
    _, size = world()
    x_i, x_j, mask, l_i, l_j, y_i, y_j = (None if t is None else t.to(device, non_blocking=True) for t in batch)
    onehot = lambda y: torch.nn.functional.one_hot(y, len(center_loss.centers)).float()  # a center per class
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
    starts = range(0, len(x), micro)
    for s in starts:  # micro-batches of --grad-accum; under torchrun the gradients are all-reduced after the last
        part = slice(s, s + micro)
        with model.no_sync() if size > 1 and s != starts[-1] else nullcontext():
            with autocast(cfg.precision, device):
                z, logits = model(x[part], None if mask is None else mask[part])
            l_r = recognition_loss(logits.float(), y[part])  # Eq. 4
            l_c = center_loss(z.float(), y[part].argmax(1))  # Eq. 5
            loss = joint_loss(l_r, l_c, cfg.center_weight)  # Eq. 6
            share = weight * len(logits) / len(x)
            scaler.scale(loss * share * size).backward()
        step += torch.stack([loss, l_r, l_c]).detach() * share
    if size > 1:  # the centers are not in the DDP module: average their gradient by hand
        dist.all_reduce(center_loss.centers.grad)
        center_loss.centers.grad /= size
        dist.all_reduce(step)
    step = step.tolist()  # the one host sync of a step
    if not math.isfinite(step[0]):
        raise FloatingPointError(f"{where}: the loss became {step[0]}; try --precision fp32 or a lower --lr")
    scaler.step(opt)
    scaler.step(opt_c)
    scaler.update()
    return step


# ---------------------------------------------------------------------------- files


def atomic_write(path, write):
    """write(tmp) then rename: a run killed mid-write leaves the old file, never half a new one.
    The temporary name is this process's own, so processes sharing a folder never mix their writes."""
    tmp = Path(f"{path}.{socket.gethostname()}-{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(obj, path):
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2) + "\n"))


# ---------------------------------------------------------------------------- one job


def run_job(cfg, corpus, fold, seed, job_dir, audio_cache):
    """Train on fold `fold`'s training part with seed `seed`, validate, test the best epoch;
    returns the job's metrics, also written as metrics.json in job_dir (on rank 0).

    With cfg.resume a job interrupted earlier continues from its last finished epoch (state.pt)
    and ends with the same numbers as an uninterrupted one. Under torchrun every rank calls this
    with the same job; rank 0 alone writes files, validates and tests.
    """
    job_dir = Path(job_dir)
    metrics_path, state_path, best_path = job_dir / "metrics.json", job_dir / "state.pt", job_dir / "best.safetensors"
    rank, size = world()
    device = torch.device(cfg.device)
    classes, name = corpus.classes, f"fold {fold} seed {seed}"
    key = (seed, corpus.fold_number(fold))  # every draw of the job derives from it
    cfg = dataclasses.replace(cfg, seed=seed)

    split = corpus.split(fold, seed=seed, val_fraction=cfg.val_fraction)
    train = split["train"]
    if cfg.shuffle_labels:  # the negative control: sound and label no longer belong together wherever training
        # or early stopping looks (true validation labels would pick a lucky epoch); the test keeps its own
        pool = train + split["val"]
        shuffled = np.random.default_rng(derive_seed(*key, 0, 4)).permutation([u.label for u in pool])
        pool = [dataclasses.replace(u, label=str(label)) for u, label in zip(pool, shuffled)]
        train, split["val"] = pool[:len(train)], pool[len(train):]
    make = lambda utts, aug: iemocap.UtteranceDataset(utts, classes, max_len=cfg.max_len, augment=aug, cache=audio_cache,
                                                      seed=derive_seed(*key))
    pairs = TrainPairs(train, make(train, cfg.augment), cfg, key)
    if cfg.padding == "dynamic":  # scores do not depend on order; like lengths together pad less
        for part in ("val", "test"):
            split[part] = sorted(split[part], key=lambda u: u.duration)
    eval_loader = lambda utts: DataLoader(make(utts, "none"), batch_size=cfg.batch_size, num_workers=cfg.workers,
                                          collate_fn=partial(collate_eval, cfg=cfg))
    val_loader = eval_loader(split["val"]) if split["val"] else None
    test_loader = eval_loader(split["test"])

    model = build_model(cfg, len(classes), derive_seed(*key, 0, 3)).to(device)
    if rank == 0:
        iemocap.write_split(split, job_dir / "split")
        # what predict.py needs to rebuild this model without the hub or the pretrained weights
        write_json(dict(model=model.spec(), classes=list(classes), sample_rate=iemocap.SAMPLE_RATE,
                        max_len=cfg.max_len, padding=cfg.padding, fold=fold, seed=seed), job_dir / "model.json")
    center_loss = CenterLoss(len(classes), model.f0.out_features).to(device)  # Eq. 5
    opt, opt_c = optimizers(cfg, model, center_loss, fused=device.type == "cuda")  # fused: same maths, one kernel
    decay = lambda e: cfg.lr_decay ** min(e, cfg.lr_decay_epochs)  # Sec. 3.2: /1.25 per epoch until the 20th
    sched = torch.optim.lr_scheduler.LambdaLR(opt, decay)
    sched_c = torch.optim.lr_scheduler.LambdaLR(opt_c, decay)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
    es = dict(epoch=0, best_wa=-1.0, best_epoch=0, bad_epochs=0, history=[])

    if state_path.exists():  # weights_only: a run folder may come from someone else
        state = torch.load(state_path, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        center_loss.load_state_dict(state["center"])
        for obj, k in [(opt, "opt"), (opt_c, "opt_c"), (sched, "sched"), (sched_c, "sched_c"), (scaler, "scaler")]:
            obj.load_state_dict(state[k])
        es = json.loads(state["es"])
        if rank == 0:
            print(f"{name}: resumed after epoch {es['epoch']}")
    net = torch.nn.parallel.DistributedDataParallel(model) if size > 1 else model

    for epoch in range(es["epoch"] + 1, cfg.epochs + 1):
        if es["bad_epochs"] >= cfg.patience:  # checked first: a job resumed after its early stop trains no more
            if rank == 0:
                print(f"{name}: early stop, no better validation WA for {cfg.patience} epochs")
            break
        torch.manual_seed(derive_seed(*key, epoch, 5, rank))  # dropout
        pairs.set_epoch(epoch)
        parts = rank_batches(pairs.batches(cfg.batch_size, cfg.padding == "dynamic"), rank, size)
        loader = DataLoader(pairs, batch_sampler=[p for p, _ in parts], num_workers=cfg.workers,
                            collate_fn=partial(collate_train, cfg=cfg), pin_memory=device.type == "cuda")
        net.train()
        t0, audio_seconds, sums = time.time(), 0.0, np.zeros(3)
        bar = tqdm(loader, desc=f"{name} epoch {epoch}", leave=False, dynamic_ncols=True,
                   disable=None if rank == 0 else True)  # disable=None: bars only on a terminal, not in logs
        for k, (batch, (_, weight)) in enumerate(zip(bar, parts), 1):
            if weight:  # real audio, no padding
                audio_seconds += torch.maximum(batch[3], batch[4]).sum().item() / iemocap.SAMPLE_RATE
            step = train_step(net, center_loss, opt, opt_c, scaler, batch, cfg, device, weight,
                              where=f"{name} epoch {epoch}")
            sums += step
            bar.set_postfix(loss=f"{sums[0] / k:.3f}")  # the mean so far (bar.n lags by up to tqdm's mininterval)
        if size > 1:  # on the job's device: NCCL reduces CUDA tensors only
            total = torch.tensor([audio_seconds], dtype=torch.float64, device=device)
            dist.all_reduce(total)
            audio_seconds = total.item()
        lr = opt.param_groups[0]["lr"]
        sched.step()
        sched_c.step()
        seconds = time.time() - t0

        val = None
        if val_loader:  # rank 0 validates, as one process would; the others wait for its verdict
            val = broadcast(evaluate(model, val_loader, cfg, device, f"{name} validate", classes) if rank == 0 else None)
        improved = val is None or val["wa"] > es["best_wa"]  # without validation (Sec. 3.3) the last epoch is kept
        if improved:
            es.update(best_wa=val["wa"] if val else 0.0, best_epoch=epoch, bad_epochs=0)
            if rank == 0:
                best = {**model.state_dict(), **{f"center_loss.{k}": v for k, v in center_loss.state_dict().items()}}
                atomic_write(best_path, lambda tmp: save_file({k: v.contiguous() for k, v in best.items()}, tmp))
        else:
            es["bad_epochs"] += 1
        mean = (sums / len(parts)).tolist()
        row = dict(epoch=epoch, loss=mean[0], l_r=mean[1], l_c=mean[2], lr=lr, val_wa=val and val["wa"],
                   val_ua=val and val["ua"], seconds=seconds, audio_per_s=audio_seconds / seconds)
        es["history"].append(row)
        es["epoch"] = epoch
        if rank == 0:
            state = dict(model=model.state_dict(), center=center_loss.state_dict(), opt=opt.state_dict(),
                         opt_c=opt_c.state_dict(), sched=sched.state_dict(), sched_c=sched_c.state_dict(),
                         scaler=scaler.state_dict(), es=json.dumps(es))
            atomic_write(state_path, partial(torch.save, state))
            print(f"{name} epoch {epoch:3d}  loss {row['loss']:.4f} (L_r {row['l_r']:.4f}, L_c {row['l_c']:.2f})  "
                  + (f"val WA {val['wa']:.4f} UA {val['ua']:.4f}  " if val else "")
                  + f"lr {lr:.2e}  {seconds:.0f} s  {row['audio_per_s']:.0f} audio-s/s" + ("  *" if improved and val else ""),
                  flush=True)

    if rank != 0:
        return None
    # Sec. 3.4: "evaluating the best model" - reload it (the authors' script tested the last epoch: BACKGROUND.md, bug 2)
    best = load_file(best_path, device=str(device))
    model.load_state_dict({k: v for k, v in best.items() if not k.startswith("center_loss.")})
    test = evaluate(model, test_loader, cfg, device, f"{name} test", classes)
    metrics = dict(fold=fold, seed=seed, wa=test["wa"], ua=test["ua"], recall=test["recall"], confusion=test["confusion"],
                   classes=list(classes), best_epoch=es["best_epoch"], best_val_wa=es["best_wa"] if val_loader else None,
                   n_train=len(train), n_val=len(split["val"]), n_test=len(split["test"]), history=es["history"])
    write_json(metrics, metrics_path)
    state_path.unlink()
    if cfg.no_save:
        best_path.unlink()
    print(f"{name}: test WA {test['wa']:.4f} UA {test['ua']:.4f} (best epoch {es['best_epoch']})", flush=True)
    return metrics


# ---------------------------------------------------------------------------- where it runs


def resolve_device(cfg):
    """cfg.device and cfg.precision made concrete. A real run (not --demo) that finds no GPU stops:
    HuBERT-Large on a CPU takes days. --device cpu runs it anyway."""
    if not cfg.device:
        if not torch.cuda.is_available() and not cfg.demo:
            cuda = torch.version.cuda or "none (a CPU-only build)"
            raise UserError(f"no GPU found (torch {torch.__version__}, built for CUDA {cuda}, "
                            f"torch.cuda.is_available() is False): a run on the CPU takes days; "
                            "pass --device cpu to run it there anyway")
        cfg.device = "cuda" if torch.cuda.is_available() else "cpu"
    if cfg.precision == "auto":
        cfg.precision = default_precision(torch.device(cfg.device))


def default_precision(device):
    """bf16 autocast on a GPU that has it, else fp32."""
    return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"


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
                sklearn=sklearn.__version__, numpy=np.__version__, world_size=world()[1],
                device_name=device_name(torch.device(cfg.device)))
