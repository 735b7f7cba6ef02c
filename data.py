"""The training data pipeline: each utterance cropped, peak-normalised and augmented as the authors
did (UtteranceDataset), paired with a random mixup partner (TrainPairs, Sec. 2.1), drawn into an
epoch's batches (under torchrun, each process its part: rank_batches) and padded into tensors
(pad: fixed, the authors', or dynamic with an attention mask). predict.py pads its windows with
the same pad."""
import math
import time
import warnings
from functools import partial

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from audio import SAMPLE_RATE, load_audio, make_augmentation, prepare, seeded_global_rngs
from iemocap import CLASSES
from seeds import ORDER, PARTNERS, derive_seed
from settings import MIN_SAMPLES

# Dynamic padding pads a batch to its longest item rounded up to a multiple of this (0.2 s, 10 HuBERT
# frames), so that a run meets few lengths (32 up to 6.25 s), each paid for once: on a Hopper GPU
# PyTorch's scaled-dot-product attention runs cuDNN's, which builds its graph anew for every new
# sequence length (about 90 ms of CPU time forward and again backward, HuBERT-Large on an H200), so
# with a new length every step --padding dynamic trained at a third of fixed padding's speed there.
PAD_MULTIPLE = 3200

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
    dynamic: zeros up to the batch's longest item, rounded up to a multiple of PAD_MULTIPLE (at most
    max_len), and a mask so the model ignores them.
    """
    if padding == "fixed":
        x = torch.stack([torch.cat([w, w.mean().expand(max_len - len(w))]) for w in waves])
        return x, None
    longest = max(int(l) for l in lengths)
    L = max(longest, min(-(-longest // PAD_MULTIPLE) * PAD_MULTIPLE, max_len))
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
