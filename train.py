"""One job: a fold trained with one seed and tested (Sec. 3.1-3.4), in one process or
data-parallel under torchrun. Read it top-down, as the paper:

    run_job     the job: split, model, fit, test of the best epoch
    fit         the loop of Sec. 3.2 and 3.4: epochs, learning-rate decay, validation, early stopping
    train_step  one step: mix (Eq. 1), targets (Eq. 2, 3), the joint loss (Eq. 4-6), backward

The machinery they stand on follows below them: the optimisers and what a step needs besides the
paper (micro-batches, DistributedDataParallel), the data pipeline, evaluation, checkpoints and the
TensorBoard event files.
"""
import dataclasses
import json
import math
import time
import warnings
from contextlib import contextmanager, nullcontext
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from sklearn.metrics import accuracy_score, confusion_matrix, recall_score
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from audio import SAMPLE_RATE, load_audio, make_augmentation, prepare, seeded_global_rngs
from corpus import write_split
from iemocap import CLASSES
from losses import CenterLoss, joint_loss, label_adaptive_targets, mix_waveforms, mixup_targets, recognition_loss
from model import SERModel, load_backbone
from runs import draw_confusion
from settings import MIN_SAMPLES, RUN_ONLY
from util import atomic_write, broadcast, pyplot, read_back, save_torch, summary_writer, write_json, writing

# The random streams of a job. Each draw is seeded by (seed, fold, epoch, stream), so a resumed job
# draws exactly what an uninterrupted one did, and no stream shifts another.
PARTNERS, ORDER, INIT, SHUFFLED_LABELS, DROPOUT = 1, 2, 3, 4, 5


def derive_seed(*parts):
    """One 32-bit seed per (seed, fold, epoch, stream, ...)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def run_job(cfg, corpus, audio, job, folder, rt):
    """Train fold `job.fold` with seed `job.seed` and test it (Sec. 3.1, 3.4): the fold's training
    part, less a validation part for early stopping, trains the model; the epoch with the best
    validation WA is tested on the fold's test part. Returns the metrics, also written to
    folder/metrics.json, on rank 0 (None on the other ranks of a torchrun).

    audio: the corpus decoded (audio.decode); rt: util.Runtime. A job interrupted after an epoch
    continues from folder/state.pt and ends with the numbers of an uninterrupted one."""
    folder, name = Path(folder), f"fold {job.fold} seed {job.seed}"
    key = (job.seed, corpus.fold_number(job.fold))  # every random draw of the job derives from it
    split = job_split(corpus, job, cfg.val_fraction, cfg.shuffle_labels, cfg.padding, key)
    pairs, val_loader, test_loader = loaders(split, corpus.classes, audio, cfg, key)
    model = build_model(cfg, len(corpus.classes), derive_seed(*key, 0, INIT)).to(rt.device)
    if rt.rank == 0:
        write_split(split, folder / "split")
        # what predict.py needs to rebuild this model without the hub or the pretrained weights
        write_json(dict(model=model.spec(), classes=list(corpus.classes), sample_rate=SAMPLE_RATE, max_len=cfg.max_len,
                        padding=cfg.padding, fold=job.fold, seed=job.seed), folder / "model.json")
    center_loss = CenterLoss(len(corpus.classes), model.f0.out_features).to(rt.device)  # the centers of Eq. 5
    board = Board(folder / "tb", cfg, rt, pairs.steps(cfg.batch_size))
    stopped = fit(model, center_loss, pairs, val_loader, cfg, rt, folder, key, name, board)
    if rt.rank != 0:
        return None
    # Sec. 3.4: "evaluating the best model" - reload it (the authors' script tested the last epoch: BACKGROUND.md, bug 2)
    load_best(folder / "best.safetensors", model, rt)
    test = evaluate(model, test_loader, rt, f"{name} test")
    board.end(test, corpus.classes, job, stopped["epoch"])
    metrics = dict(fold=job.fold, seed=job.seed, wa=test["wa"], ua=test["ua"], recall=test["recall"],
                   confusion=test["confusion"], classes=list(corpus.classes), best_epoch=stopped["best_epoch"],
                   best_val_wa=stopped["best_wa"] if val_loader else None, n_train=len(split["train"]),
                   n_val=len(split["val"]), n_test=len(split["test"]), history=stopped["history"])
    write_json(metrics, folder / "metrics.json")
    (folder / "state.pt").unlink()
    if cfg.no_save:
        (folder / "best.safetensors").unlink()
    print(f"{name}: test WA {test['wa']:.4f} UA {test['ua']:.4f} (best epoch {stopped['best_epoch']})", flush=True)
    return metrics


def fit(model, center_loss, pairs, val_loader, cfg, rt, folder, key, name, board):
    """The loop of Sec. 3.2 and 3.4. Each epoch: Adam steps on batches of mixed pairs, then both
    learning rates x0.8 (for the first 20 epochs), then the validation WA. The best epoch's weights
    are kept (folder/best.safetensors); --patience epochs without a better WA stop the job. Without
    validation (Sec. 3.3) the last epoch is kept. Each epoch ends in folder/state.pt, from which an
    interrupted job resumes. Returns the record of early stopping: best epoch, history.
    board: the job's TensorBoard curves (Board)."""
    opt = Optimisation(cfg, model, center_loss, rt, fused=rt.device.type == "cuda")  # fused: same maths, one kernel
    stopped = resume(folder / "state.pt", model, center_loss, opt, rt, name)
    net = torch.nn.parallel.DistributedDataParallel(model) if rt.size > 1 else model
    for epoch in range(stopped["epoch"] + 1, cfg.epochs + 1):
        if stopped["bad_epochs"] >= cfg.patience:  # checked first: a job resumed after its early stop trains no more
            if rt.rank == 0:
                print(f"{name}: early stop, no better validation WA for {cfg.patience} epochs")
            break
        torch.manual_seed(derive_seed(*key, epoch, DROPOUT, rt.rank))
        batches = Epoch(pairs, epoch, cfg, rt, f"{name} epoch {epoch}", board, opt.lr)  # partners, batches drawn anew
        net.train()
        for batch, weight in batches:
            batches.add(train_step(net, center_loss, opt, batch, cfg, rt, weight, batches.where))
        lr = opt.decay()  # Sec. 3.2
        val = validate(model, val_loader, rt, name) if val_loader else None
        improved = val is None or val["wa"] > stopped["best_wa"]
        if improved:
            stopped.update(best_wa=val["wa"] if val else 0.0, best_epoch=epoch, bad_epochs=0)
            if rt.rank == 0:
                save_best(folder / "best.safetensors", model, center_loss)
        else:
            stopped["bad_epochs"] += 1
        row = batches.row(lr=lr, val_wa=val and val["wa"], val_ua=val and val["ua"])
        stopped["history"].append(row)
        stopped["epoch"] = epoch
        board.epoch(row)  # on disk before the state: a resumed job has every step up to it
        if rt.rank == 0:
            save_state(folder / "state.pt", model, center_loss, opt, stopped)
            print(f"{name} epoch {epoch:3d}  loss {row['loss']:.4f} (L_r {row['l_r']:.4f}, L_c {row['l_c']:.2f})  "
                  + (f"val WA {val['wa']:.4f} UA {val['ua']:.4f}  " if val else "")
                  + f"lr {lr:.2e}  {row['seconds']:.0f} s  {row['audio_per_s']:.0f} audio-s/s"
                  + ("  *" if improved and val else ""), flush=True)
    return stopped


def train_step(net, center_loss, opt, batch, cfg, rt, weight=1.0, where=""):
    """One optimizer step on a batch of pairs (x_i, x_j): the waveforms mixed (Eq. 1), their one-hot
    labels mixed by the utterances' lengths (Eq. 3; Eq. 2 with --mixup conventional), the model's
    output scored by the joint loss (Eq. 4-6), whose gradient updates the model and the class
    centers (Sec. 3.2). Returns [L, L_r, L_c] of the batch. weight: Optimisation.step."""
    x_i, x_j, mask, l_i, l_j, y_i, y_j = (None if t is None else t.to(rt.device, non_blocking=True) for t in batch)
    y_i, y_j = (F.one_hot(y, len(center_loss.centers)).float() for y in (y_i, y_j))  # a center per class
    lam = cfg.mixup_lambda
    x = mix_waveforms(x_i, x_j, lam)  # Eq. 1 (an unmixed item is its own partner)
    if cfg.mixup == "conventional":
        y = mixup_targets(y_i, y_j, lam)  # Eq. 2
    else:
        y = label_adaptive_targets(y_i, y_j, l_i.float(), l_j.float(), lam)  # Eq. 3

    def loss(part):  # the model on the items `part` of the batch, and Eq. 4-6
        with autocast(rt.precision, rt.device):
            z, logits = net(x[part], None if mask is None else mask[part])
        L_r = recognition_loss(logits.float(), y[part])  # Eq. 4
        L_c = center_loss(z.float(), y[part].argmax(1))  # Eq. 5: the class of the larger weight
        return joint_loss(L_r, L_c, cfg.center_weight), L_r, L_c  # Eq. 6

    return opt.step(loss, len(x), net, weight, where)


# ---------------------------------------------------------------------------- optimisation


class Optimisation:
    """The optimisation of Sec. 3.2: Adam for the model at --lr, Adam for the class centers of Eq. 5
    at --lr-center, both rates x0.8 after each of the first 20 epochs. And what a step needs that
    the paper leaves out: micro-batches (--grad-accum), the gradient all-reduce under torchrun, and
    the loss scaling of fp16 autocast."""

    def __init__(self, cfg, model, center_loss, rt, fused=None):
        adam = dict(betas=(cfg.beta1, cfg.beta2), eps=cfg.adam_eps, fused=fused)
        self.opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, **adam)
        self.opt_c = torch.optim.Adam(center_loss.parameters(), lr=cfg.lr_center, **adam)
        decay = lambda epoch: cfg.lr_decay ** min(epoch, cfg.lr_decay_epochs)  # /1.25 per epoch until the 20th
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, decay)
        self.sched_c = torch.optim.lr_scheduler.LambdaLR(self.opt_c, decay)
        self.scaler = torch.amp.GradScaler(rt.device.type, enabled=rt.precision == "fp16")
        self.centers, self.grad_accum, self.rt = center_loss.centers, cfg.grad_accum, rt

    def step(self, loss, n, net, weight=1.0, where=""):
        """Backward through loss(part) -> (L, L_r, L_c) for each micro-batch `part` of the n items,
        then one step of each Adam. Returns [L, L_r, L_c] of the (global) batch.

        weight: this process's share of the global batch (1 in one process). Under torchrun the
        gradient of each rank's mean loss is scaled by weight * world size, so that the average that
        DistributedDataParallel takes over the ranks (after the last micro-batch) equals the
        single-process gradient; the centers, outside the DDP module, are averaged here."""
        size = self.rt.size
        self.opt.zero_grad(set_to_none=True)
        self.opt_c.zero_grad(set_to_none=True)
        total = torch.zeros(3, device=self.rt.device)  # L, L_r, L_c of the batch
        micro = math.ceil(n / self.grad_accum)
        starts = range(0, n, micro)
        for s in starts:
            part = slice(s, s + micro)
            with net.no_sync() if size > 1 and s != starts[-1] else nullcontext():
                L, L_r, L_c = loss(part)
                share = weight * len(range(n)[part]) / n
                self.scaler.scale(L * share * size).backward()
            total += torch.stack([L, L_r, L_c]).detach() * share
        if size > 1:
            dist.all_reduce(self.centers.grad)
            self.centers.grad /= size
            dist.all_reduce(total)
        total = total.tolist()  # the one host sync of a step
        if not math.isfinite(total[0]):
            raise FloatingPointError(f"{where}: the loss became {total[0]}; try --precision fp32 or a lower --lr")
        self.scaler.step(self.opt)
        self.scaler.step(self.opt_c)
        self.scaler.update()
        return total

    @property
    def lr(self):
        """The model's learning rate now."""
        return self.opt.param_groups[0]["lr"]

    def decay(self):
        """The end of an epoch: both learning rates decay. Returns the model's rate of the epoch."""
        lr = self.lr
        self.sched.step()
        self.sched_c.step()
        return lr

    def state_dict(self):
        return dict(opt=self.opt.state_dict(), opt_c=self.opt_c.state_dict(), sched=self.sched.state_dict(),
                    sched_c=self.sched_c.state_dict(), scaler=self.scaler.state_dict())

    def load_state_dict(self, state):
        for obj, k in [(self.opt, "opt"), (self.opt_c, "opt_c"), (self.sched, "sched"), (self.sched_c, "sched_c"),
                       (self.scaler, "scaler")]:
            obj.load_state_dict(state[k])


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


def autocast(precision, device):
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def build_model(cfg, num_classes, init_seed):
    """SERModel of cfg, f0, f1 and (a tiny random backbone) initialised from init_seed."""
    torch.manual_seed(init_seed)
    model = SERModel(load_backbone(cfg.backbone), layers=cfg.layers, dropout=cfg.dropout, pooling=cfg.pooling,
                     num_classes=num_classes, normalize_waveform=cfg.normalize_waveform)
    # Weights the forward pass never uses (the time-mask embedding, masking being off) get no
    # gradient; freezing them says so to DistributedDataParallel and changes nothing else.
    for name, p in model.named_parameters():
        if name.endswith("masked_spec_embed"):
            p.requires_grad_(False)
    return model


# ---------------------------------------------------------------------------- data


def job_split(corpus, job, val_fraction, shuffle_labels, padding, key):
    """The job's utterances: {"train", "val", "test"} of its fold, the validation part drawn with its seed."""
    split = corpus.split(job.fold, seed=job.seed, val_fraction=val_fraction)
    if shuffle_labels:  # the negative control: sound and label no longer belong together wherever training
        # or early stopping looks (true validation labels would pick a lucky epoch); the test keeps its own
        pool = split["train"] + split["val"]
        shuffled = np.random.default_rng(derive_seed(*key, 0, SHUFFLED_LABELS)).permutation([u.label for u in pool])
        pool = [dataclasses.replace(u, label=str(label)) for u, label in zip(pool, shuffled)]
        split["train"], split["val"] = pool[:len(split["train"])], pool[len(split["train"]):]
    if padding == "dynamic":  # scores do not depend on order; like lengths together pad less
        for part in ("val", "test"):
            split[part] = sorted(split[part], key=lambda u: u.duration)
    return split


def loaders(split, classes, audio, cfg, key):
    """The training pairs (TrainPairs: its batches are drawn each epoch) and the validation and test
    loaders (None: no validation part)."""
    dataset = lambda utts, augment: UtteranceDataset(utts, classes, cfg.max_len, augment, audio, seed=derive_seed(*key))
    pairs = TrainPairs(split["train"], dataset(split["train"], cfg.augment), cfg.max_len,
                       cfg.mixup_p if cfg.mixup != "none" else 0.0, key)
    collate = partial(collate_eval, padding=cfg.padding, max_len=cfg.max_len)
    loader = lambda utts: DataLoader(dataset(utts, "none"), batch_size=cfg.batch_size, num_workers=cfg.workers,
                                     collate_fn=collate)
    return pairs, loader(split["val"]) if split["val"] else None, loader(split["test"])


class UtteranceDataset(Dataset):
    """(waveform, length, label id) per utterance, in the authors' order: cropped to its first
    max_len samples, then divided by the peak of that crop (so an utterance whose loudest
    moment lies after the cut still reaches |x| = 1), padded to at least 400 samples, then
    augmented with draws seeded by (seed, epoch, index), so an item is the same whichever
    DataLoader worker makes it. `cache` is audio.decode's dict, or None to read each wav anew."""

    def __init__(self, utterances, classes=CLASSES, max_len=100_000, augment="none", cache=None, seed=0):
        self.utterances, self.classes = list(utterances), classes
        self.label_ids = [classes.index(u.label) for u in self.utterances]
        self.max_len = max_len
        self.augmentation = make_augmentation(augment)
        self.cache = cache
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return len(self.utterances)

    def __getitem__(self, i):
        u = self.utterances[i]
        x = self.cache[u.id].astype(np.float32) / 32767 if self.cache is not None else load_audio(u.wav, u.part)
        if len(x) < MIN_SAMPLES:
            warnings.warn(f"{u.id} has {len(x)} samples; zero-padded to {MIN_SAMPLES}, HuBERT's receptive field")
        x = prepare(x, self.max_len)
        if self.augmentation is not None:
            with seeded_global_rngs(self.seed, self.epoch, i):
                x = self.augmentation(samples=x, sample_rate=SAMPLE_RATE)
        x = np.ascontiguousarray(x, dtype=np.float32)
        return torch.from_numpy(x), len(x), self.label_ids[i]


class TrainPairs(Dataset):
    """Training utterances with their mixup partners (Sec. 2.1).

    As in the authors' script, an utterance is mixed with probability p with a
    partner drawn at random from the whole training set. (A partner from the
    same batch would, with length-bucketed batches, always have about the same
    length and turn Eq. 3 into Eq. 2.) An unmixed item is its own partner,
    which Eq. 1 and Eq. 3 leave unchanged.
    """

    def __init__(self, utterances, data, max_len, p, key):
        self.data, self.p, self.key = data, p, key  # key: (seed, fold number) of the job
        self.nominal = np.array([min(round(u.duration * SAMPLE_RATE), max_len) for u in utterances])
        self.set_epoch(0)

    def set_epoch(self, epoch):
        self.data.set_epoch(epoch)
        rng = np.random.default_rng(derive_seed(*self.key, epoch, PARTNERS))
        n = len(self.data)
        self.partner = np.where(rng.random(n) < self.p, rng.integers(n, size=n), np.arange(n))
        # what the model will see of each item: the longer of the pair (Eq. 1); used to bucket batches
        self.lengths = np.maximum(self.nominal, self.nominal[self.partner])
        self.order_rng = np.random.default_rng(derive_seed(*self.key, epoch, ORDER))

    def __len__(self):
        return len(self.data)

    def steps(self, batch_size):
        """The batches (optimizer steps) of every epoch."""
        return math.ceil(len(self) / batch_size)

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


class Epoch:
    """One epoch's batches of pairs, as (batch, weight) for this process (under torchrun its part of
    each batch, rank_batches), with a progress bar of the mean loss so far; add() the step's losses
    (they go to the board too, with the epoch's learning rate lr) and row() gives the epoch's line
    of the history."""

    def __init__(self, pairs, epoch, cfg, rt, where, board, lr):
        pairs.set_epoch(epoch)
        self.parts = rank_batches(pairs.batches(cfg.batch_size, cfg.padding == "dynamic"), rt.rank, rt.size)
        self.loader = DataLoader(pairs, batch_sampler=[p for p, _ in self.parts], num_workers=cfg.workers,
                                 collate_fn=partial(collate_train, padding=cfg.padding, max_len=cfg.max_len),
                                 pin_memory=rt.device.type == "cuda")
        self.epoch, self.rt, self.where, self.board, self.lr = epoch, rt, where, board, lr
        self.t0, self.audio_seconds, self.sums, self.done = time.time(), 0.0, np.zeros(3), 0

    def __iter__(self):
        bar = tqdm(self.loader, desc=self.where, leave=False, dynamic_ncols=True,
                   disable=None if self.rt.rank == 0 else True)  # disable=None: bars only on a terminal, not in logs
        for k, (batch, (_, weight)) in enumerate(zip(bar, self.parts), 1):
            if weight:  # real audio, no padding
                self.audio_seconds += torch.maximum(batch[3], batch[4]).sum().item() / SAMPLE_RATE
            yield batch, weight
            bar.set_postfix(loss=f"{self.sums[0] / k:.3f}")  # the mean so far (bar.n lags by up to tqdm's mininterval)
        if self.rt.size > 1:  # every rank's audio; on the job's device: NCCL reduces CUDA tensors only
            total = torch.tensor([self.audio_seconds], dtype=torch.float64, device=self.rt.device)
            dist.all_reduce(total)
            self.audio_seconds = total.item()
        self.seconds = time.time() - self.t0

    def add(self, losses):
        self.sums += losses
        self.done += 1
        self.board.step(self.epoch, self.done, losses, self.lr)

    def row(self, **more):
        """The history's line: the mean L, L_r and L_c of the steps, `more`, the seconds and audio-s/s."""
        loss, l_r, l_c = (self.sums / len(self.parts)).tolist()
        return dict(epoch=self.epoch, loss=loss, l_r=l_r, l_c=l_c, **more, seconds=self.seconds,
                    audio_per_s=self.audio_seconds / self.seconds)


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


def collate_train(items, padding, max_len):
    x_i, l_i, y_i, x_j, l_j, y_j = zip(*items)
    l_i, l_j = torch.tensor(l_i), torch.tensor(l_j)
    l_ij = torch.maximum(l_i, l_j)  # Eq. 1: the mix is as long as the longer one
    x_i, mask = pad(x_i, l_ij, padding, max_len)
    x_j, _ = pad(x_j, l_ij, padding, max_len)
    return x_i, x_j, mask, l_i, l_j, torch.tensor(y_i), torch.tensor(y_j)


def collate_eval(items, padding, max_len):
    x, l, y = zip(*items)
    x, mask = pad(x, l, padding, max_len)
    return x, mask, torch.tensor(y)


# ---------------------------------------------------------------------------- evaluation


def validate(model, loader, rt, name):
    """Rank 0 validates, as one process would; the other ranks wait for its verdict."""
    return broadcast(evaluate(model, loader, rt, f"{name} validate") if rt.rank == 0 else None)


@torch.no_grad()
def evaluate(model, loader, rt, desc):
    model.eval()
    y_true, y_pred = [], []
    for x, mask, y in tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, disable=None):
        with autocast(rt.precision, rt.device):
            _, logits = model(x.to(rt.device), None if mask is None else mask.to(rt.device))
        y_true.append(y)
        y_pred.append(logits.argmax(1).cpu())
    return scores(torch.cat(y_true).numpy(), torch.cat(y_pred).numpy(), loader.dataset.classes)


def scores(y_true, y_pred, classes):
    """WA = accuracy over utterances; UA = mean of the per-class recalls (Sec. 3.1)."""
    labels = list(range(len(classes)))
    present = sorted(set(y_true.tolist()))
    return dict(wa=float(accuracy_score(y_true, y_pred)),
                ua=float(recall_score(y_true, y_pred, labels=present, average="macro", zero_division=0)),
                recall={c: float(r) for c, r in zip(classes, recall_score(y_true, y_pred, labels=labels, average=None, zero_division=0))},
                confusion=confusion_matrix(y_true, y_pred, labels=labels).tolist())


# ---------------------------------------------------------------------------- checkpoints


def resume(path, model, center_loss, opt, rt, name):
    """The record of early stopping: a new one, or an interrupted job's from its state.pt, whose
    weights, centers and optimiser states are loaded too, so that the job goes on where it stopped."""
    if not path.exists():
        return dict(epoch=0, best_wa=-1.0, best_epoch=0, bad_epochs=0, history=[])

    def load(path):
        state = torch.load(path, map_location=rt.device, weights_only=True)  # weights_only: a run folder may come from someone else
        model.load_state_dict(state["model"])
        center_loss.load_state_dict(state["center"])
        opt.load_state_dict(state)
        return json.loads(state["es"])

    stopped = read_back(path, load, "delete it to train that job again from its first epoch")
    if rt.rank == 0:
        print(f"{name}: resumed after epoch {stopped['epoch']}")
    return stopped


def load_best(path, model, rt):
    """The best epoch's weights into the model (the class centers saved beside them are left out)."""
    def load(path):
        best = load_file(path, device=str(rt.device))
        model.load_state_dict({k: v for k, v in best.items() if not k.startswith("center_loss.")})
    read_back(path, load, f"the weights of the job's best epoch: delete it and {path.parent / 'state.pt'} to train "
                          "that job again from its first epoch")


def save_state(path, model, center_loss, opt, stopped):
    state = dict(model=model.state_dict(), center=center_loss.state_dict(), **opt.state_dict(), es=json.dumps(stopped))
    atomic_write(path, partial(save_torch, state))


def save_best(path, model, center_loss):
    """The weights of the best epoch so far, the class centers under center_loss.*."""
    best = {**model.state_dict(), **{f"center_loss.{k}": v for k, v in center_loss.state_dict().items()}}
    atomic_write(path, lambda tmp: save_file({k: v.contiguous() for k, v in best.items()}, tmp))


# ---------------------------------------------------------------------------- TensorBoard


class Board:
    """The job's TensorBoard event files in `folder` (foldK/seedS/tb/, docs/runs.md). Per step: L,
    L_r, L_c (Eq. 4-6) and the learning rate; per epoch, at its last step: the mean loss, the
    validation WA and UA, seconds and audio-s/s; after the last step: the test WA and UA, the
    confusion matrix and the job's settings (TensorBoard's HParams view). Step k of epoch e is
    global step (e - 1) * steps + k, so a resumed job continues its curves: the writer opens at the
    first step it writes and purges what a killed process wrote from there on. Only rank 0 writes;
    with --no-tensorboard nothing is written, nor tensorboard imported."""

    def __init__(self, folder, cfg, rt, steps):
        self.folder, self.cfg, self.rt, self.steps = folder, cfg, rt, steps  # steps: per epoch
        self.on, self.writer = rt.rank == 0 and not cfg.no_tensorboard, None

    @contextmanager
    def _writing(self, step):
        """The writer, opened at the first step written: it purges what a killed process wrote from
        there on. A disk or quota that fills meanwhile ends the run in one line (DiskFull)."""
        with writing(self.folder):
            if self.writer is None:
                self.writer = summary_writer()(self.folder, purge_step=step)
            yield self.writer

    def step(self, epoch, k, losses, lr):
        """Step k of the epoch: its [L, L_r, L_c] (train_step) and learning rate."""
        if self.on:
            step = (epoch - 1) * self.steps + k
            with self._writing(step) as w:
                for tag, value in zip(("train/loss", "train/L_r", "train/L_c", "train/lr"), [*losses, lr]):
                    w.add_scalar(tag, value, step)

    def epoch(self, row):
        """The history's line of an epoch (Epoch.row), at its last step, flushed to disk."""
        if self.on:
            step = row["epoch"] * self.steps
            with self._writing(step) as w:
                for tag, key in [("train/epoch_loss", "loss"), ("val/WA", "val_wa"), ("val/UA", "val_ua"),
                                 ("time/epoch_seconds", "seconds"), ("time/audio_s_per_s", "audio_per_s")]:
                    if row[key] is not None:  # no validation part (Sec. 3.3): no validation scores
                        w.add_scalar(tag, row[key], step)
                w.flush()

    def end(self, test, classes, job, epochs):
        """The test of the job, trained for `epochs` epochs, after its last step: the scores, the
        confusion matrix and, beside the scores, the settings that decide what the job computes."""
        if not self.on:
            return
        step = epochs * self.steps + 1
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(4.5, 4), layout="constrained")
        draw_confusion(ax, test["confusion"], classes, f"fold {job.fold} seed {job.seed}: test")
        settings = {k: v for k, v in dataclasses.asdict(self.cfg).items() if k not in RUN_ONLY}
        settings.update(fold=job.fold, seed=job.seed, precision=self.rt.precision)
        scores = {"test/WA": test["wa"], "test/UA": test["ua"]}
        from torch.utils.tensorboard.summary import hparams  # loaded with the writer
        _, start, end = hparams(settings, scores)  # without the experiment summary (add_hparams writes one), TensorBoard
        with self._writing(step) as w:  # builds it from every job's settings, those that differ between jobs first
            w.add_figure("test/confusion", fig, step)  # closes the figure
            for tag, value in scores.items():
                w.add_scalar(tag, value, step)
            for summary in (start, end):
                w.file_writer.add_summary(summary, step)
            w.close()
