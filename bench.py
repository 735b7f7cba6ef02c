"""Training throughput of the suite against the authors' setup, measured side by side; the memory a run
needs; and predict.py's speed batched against one file at a time (predict_speed, `predict.py --bench`).

    python bench.py                    # GPU: HuBERT-Large (random init), batch 16; CPU: a reduced width, ~1 minute
    python bench.py --corpus DIR       # the data pipeline reads (or first writes) its synthetic replica in DIR
    python bench.py --memory           # memory of a training step at the real size; what fits 12-80 GB (training_memory())

Every variant trains on the same random batches with train.train_step, the step of the
training loop: Eq. 1 and Eq. 3 on the device, forward, Eq. 4 + lambda * Eq. 5,
backward, both Adam steps.
  authors  the authors' script: every item padded to 100,000 samples with its mean, no
           attention mask, all layers computed and layer k taken from hidden_states (before
           the final LayerNorm), fp32, eager attention (their PyTorch 1.12), Adam (foreach).
  default  reproduce.py as it is: SERModel with k layers, fixed padding, default precision
           (bf16 on a GPU that has it, else fp32), SDPA, fused Adam on a GPU.
  fast     reproduce.py --padding dynamic --precision bf16: the same items regrouped into
           length-bucketed batches, padded to each batch's longest, with the attention mask,
           in bf16 autocast where the device has bf16 (else as default; on a CPU with bf16
           the fp32 dynamic row "fast fp32" is shown too).
  fast+compile  (--compile) fast with its transformer layers under torch.compile.
Then the data pipeline's utterances/s, and on a GPU the projected time of the paper's protocol.
The last line is `speedup fast/authors: N.NNx on <device>`, for scripts to read.
"""
import argparse
import dataclasses
import gc
import math
import multiprocessing
import os
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader
from transformers import AutoModel

import corpus as corpora
import data
import iemocap
import synthetic
import train
from audio import SAMPLE_RATE as SR
from audio import decode
from corpus import read_split
from ensemble import models, predict, resolve
from losses import CenterLoss
from model import SERModel, tiny_config
from optimisation import Optimisation
from runs import read_config
from runtime import Runtime, default_precision, device_name
from settings import Config, UserError, known

# HuBERT-Large (Sec. 2.2); tiny_config() already has Large's front end and norms.
LARGE = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
             conv_dim=(512,) * 7, num_conv_pos_embeddings=128, num_conv_pos_embedding_groups=16)
# A quarter of Large's width and half its depth, keeping its mix of work: the transformer does
# ~89% of the FLOPs of a 6.25 s item (Large: ~85%), and k/N = 11/12 as 22/24; a 2-core CPU
# runs the bench in about a minute.
REDUCED = dict(LARGE, hidden_size=256, num_hidden_layers=12, num_attention_heads=4, intermediate_size=1024, conv_dim=(64,) * 7)
# Per device: model, layer k, batch, timed steps, warm-up steps, data-pipeline batches,
# workers (GPU: reproduce.py's default), 4-class utterances per speaker of the replica (553: IEMOCAP's size).
SETTINGS = {
    "cuda": dict(model=LARGE, layers=22, batch_size=16, steps=20, warmup=3, pipeline_batches=30, workers=4, per_speaker=553),
    "cpu": dict(model=REDUCED, layers=11, batch_size=8, steps=6, warmup=1, pipeline_batches=8, workers=2, per_speaker=40),
    "quick": dict(model={}, layers=3, batch_size=2, steps=2, warmup=1, pipeline_batches=3, workers=0, per_speaker=8),
}
# --memory, per device: the model, layer k, the padded length of every item (fixed padding), the micro-batches
# measured with --grad-accum 1, and (batch, --grad-accum) pairs measured besides.
MEMORY = {
    "cuda": dict(model=LARGE, layers=22, max_len=100_000, micro=(1, 2, 4, 8, 16), accum=((16, 4), (16, 16))),
    "cpu": dict(model=LARGE, layers=22, max_len=100_000, micro=(1, 2, 4), accum=((4, 4),)),
    "quick": dict(model={}, layers=3, max_len=16_000, micro=(1, 2), accum=()),
}
PAPER_BATCH = 16  # the authors' batch (BACKGROUND.md, "Training"), reproduce.py's default
GPU_SIZES = (12, 16, 24, 40, 80)  # GiB of common cards (nvidia-smi's MiB / 1024)
# Added to a step's tensors: the CUDA context (~0.5 GiB), cuBLAS/cuDNN workspaces and the caching
# allocator's slack (reserved but not allocated). Assumed, not measured.
ALLOWANCE = 1.5
# The paper's protocol per fold: 4 of 5 sessions of the 5531 utterances, 10% of them validate.
TRAIN_UTTERANCES, VAL_UTTERANCES = (round(iemocap.PUBLISHED["total"] * 4 / 5 * share) for share in (0.9, 0.1))
# Epochs a fold of reproduce.py runs, assumed: the learning rate shrinks by 0.8 per epoch
# for 20 epochs, so validation WA stops improving around epoch 10-30, and early stopping
# (patience 10) ends the fold 10 epochs later: about 30, between 20 and 40.
EPOCHS_PER_FOLD, EPOCH_RANGE = 30, (20, 40)


class AuthorsModel(nn.Module):
    """The authors' script: the whole HuBERT runs, layer k's output is picked from
    hidden_states (before the final LayerNorm), first frame, f0/f1, dropout 0.4 on the
    attention output of the first k layers."""

    def __init__(self, backbone, layers, dropout=0.4, num_classes=4):
        super().__init__()
        self.backbone, self.k = backbone, layers
        for layer in backbone.encoder.layers[:layers]:
            layer.dropout.p = dropout
        self.f0 = nn.Linear(backbone.config.hidden_size, 64)
        self.f1 = nn.Linear(64, num_classes)

    def forward(self, waveforms, attention_mask=None):
        F_e = self.backbone(waveforms, output_hidden_states=True).hidden_states[self.k]  # (B, T, 1024); mask ignored, as theirs
        z = self.f0(F_e[:, 0])
        return z, self.f1(z)


def train_flops(config, layers, length):
    """Analytic FLOPs of one training step on one waveform of `length` samples (padding
    included: it is computed too). A multiply-add counts 2; backward costs twice the
    forward, so x3. Counted: the conv front end, the feature projection, the positional
    convolution, `layers` transformer layers (Q, K, V, output and feed-forward matmuls,
    plus attention's T^2 terms QK^T and AV) and f0/f1. Norms, activations and softmax
    are left out (a few percent)."""
    h, ff = config.hidden_size, config.intermediate_size
    T, c_in, flops = length, 1, 0
    for c_out, kernel, stride in zip(config.conv_dim, config.conv_kernel, config.conv_stride):
        T = (T - kernel) // stride + 1
        flops += 2 * T * c_in * c_out * kernel
        c_in = c_out
    flops += 2 * T * c_in * h  # feature projection
    flops += 2 * T * h * (h // config.num_conv_pos_embedding_groups) * config.num_conv_pos_embeddings
    flops += layers * (2 * T * (4 * h * h + 2 * h * ff) + 2 * 2 * T * T * h)
    flops += 2 * (h * 64 + 64 * 4)
    return 3 * flops


def draw_items(n, max_len, seed=0):
    """n training items (x_i, l_i, y_i, x_j, l_j, y_j) as data.TrainPairs serves them:
    IEMOCAP-like lengths cropped at max_len, and with p 0.5 a random partner, so the model
    sees the longer of the two (Eq. 1). Noise stands in for speech: the cost is the same."""
    rng = np.random.default_rng(seed)
    # the synthetic replica draws its lengths the same way: lognormal, mean 4.55 s, 0.585-34.1 s
    lengths = np.minimum(np.round(synthetic.draw_durations(rng, n, **synthetic.IEMOCAP_LENGTHS) * SR), max_len).astype(int)
    labels = rng.integers(len(iemocap.CLASSES), size=n)
    partner = np.where(rng.random(n) < 0.5, rng.integers(n, size=n), np.arange(n))
    gen = torch.Generator().manual_seed(seed)
    waves = [0.1 * torch.randn(int(l), generator=gen) for l in lengths]
    return [(waves[i], int(lengths[i]), int(labels[i]), waves[j], int(lengths[j]), int(labels[j]))
            for i, j in enumerate(partner)]


def bucketed(batches, seed=0):
    """The same items regrouped as data.TrainPairs.batches does for --padding dynamic:
    sorted by the length the model sees within windows of 50 batches, cut, shuffled."""
    size, items = len(batches[0]), [item for batch in batches for item in batch]
    window, out = 50 * size, []
    for s in range(0, len(items), window):
        chunk = sorted(items[s:s + window], key=lambda item: max(item[1], item[4]))
        out += [chunk[k:k + size] for k in range(0, len(chunk), size)]
    np.random.default_rng(seed).shuffle(out)
    return out


def build(name, width, layers, device):
    """The variant's model; `width` overrides tiny_config() (LARGE, REDUCED or {})."""
    torch.manual_seed(0)  # the same HuBERT weights in every variant
    if name == "authors":
        model = AuthorsModel(AutoModel.from_config(tiny_config(**width), attn_implementation="eager"), layers)
    else:
        model = SERModel(AutoModel.from_config(tiny_config(**width), attn_implementation="sdpa"), layers=layers)
    return model.to(device).train()


def reset_peak_memory(device):
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        return 0
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: the peak RSS (VmHWM) restarts from here
    except OSError:
        return None
    return proc_status("VmRSS")


def peak_memory(device, start):
    """GiB: CUDA max_memory_allocated; on a CPU the process's peak RSS above its RSS at the variant's start."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 30
    return None if start is None else (proc_status("VmHWM") - start) / 2 ** 30


def proc_status(key):
    line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith(key + ":"))
    return int(line.split()[1]) * 1024  # kB -> bytes


def measure(name, cfg, warm, timed, width, args, device):
    """Train `warm` then `timed` (collated batches); returns the timed steps' figures."""
    model = build("authors" if name == "authors" else "suite", width, args.layers, device)
    if name == "fast+compile":
        # Only the transformer layers (~85% of Large's FLOPs): the whole model breaks its graph in
        # the conv front end and recompiles for every new batch length; these layers do not.
        for layer in model.backbone.encoder.layers:
            layer.compile(dynamic=True)
    center_loss = CenterLoss(len(iemocap.CLASSES), 64).to(device)
    rt = Runtime(device, cfg.precision)  # no variant runs fp16: no loss scaling
    # the authors' Adam is torch's default; the suite's is fused on a GPU, as train.fit
    opt = Optimisation(cfg, model, center_loss, rt, fused=None if name == "authors" else device.type == "cuda")
    step = partial(train.train_step, model, center_loss, opt, cfg=cfg, rt=rt, where=name)

    torch.manual_seed(1)  # dropout
    lengths = {b[0].shape[1] for b in warm}  # every batch length of the timed steps is seen once before them,
    warm = warm + [b for b in timed if b[0].shape[1] not in lengths and not lengths.add(b[0].shape[1])]  # as in training
    for batch in warm:
        step(batch)
    start = reset_peak_memory(device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)  # GPU work is async
    sync()
    t0 = time.perf_counter()
    for batch in timed:
        step(batch)
    sync()
    seconds = time.perf_counter() - t0
    config = model.backbone.config  # the authors' model keeps every layer, SERModel only k
    flops = sum(train_flops(config, config.num_hidden_layers, b[0].shape[1]) * len(b[0]) for b in timed)
    utterances = sum(len(b[0]) for b in timed)
    audio = sum(torch.maximum(b[3], b[4]).sum().item() for b in timed) / SR  # the mix's length (Eq. 1), as reproduce.py counts
    return dict(steps=len(timed) / seconds, utt=utterances / seconds, audio=audio / seconds,
                memory=peak_memory(device, start), tflops=flops / seconds / 1e12)


def pipeline_throughput(train_set, cfg, batches, workers, cache):
    """Utterances/s of reproduce.py's training input: read the audio (cache False: decode
    every wav every time, as the authors' script; True: decoded once up front, as
    reproduce.py), crop, peak-normalise, augment (authors' chain), pair for mixup, collate."""
    dataset = data.UtteranceDataset(train_set, max_len=cfg.max_len, augment="authors",
                                    cache=decode(train_set) if cache else None)
    pairs = data.TrainPairs(train_set, dataset, cfg.max_len, cfg.mixup_p, key=(cfg.seed, 5))
    sampler = pairs.batches(cfg.batch_size, bucketed=cfg.padding == "dynamic")[:batches]
    t0 = time.perf_counter()  # worker start-up included: reproduce.py starts them every epoch
    count = sum(len(b[0]) for b in DataLoader(pairs, batch_sampler=sampler, num_workers=workers,
                                              collate_fn=partial(data.collate_train, padding=cfg.padding,
                                                                 max_len=cfg.max_len)))
    return count / (time.perf_counter() - t0)


def step_memory(width, layers, max_len, batch_size, grad_accum, precision, device):
    """GiB at the peak of two training steps (train.train_step; the second holds Adam's states from the
    first) of a fresh process, the model's weights included: CUDA max_memory_allocated, or on a CPU the
    growth of the peak resident memory (VmHWM) since before the model was built."""
    device = torch.device(device)
    start = reset_peak_memory(device)
    model = build("suite", width, layers, device)
    center_loss = CenterLoss(len(iemocap.CLASSES), 64).to(device)
    cfg = Config(batch_size=batch_size, grad_accum=grad_accum, precision=precision, max_len=max_len, padding="fixed")
    rt = Runtime(device, precision)
    opt = Optimisation(cfg, model, center_loss, rt, fused=device.type == "cuda")  # as train.fit
    batch = data.collate_train(draw_items(batch_size, max_len), "fixed", max_len)
    torch.manual_seed(1)  # dropout
    for _ in range(2):
        train.train_step(model, center_loss, opt, batch, cfg, rt)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return peak_memory(device, start)


def in_fresh_process(device, *args):
    """step_memory(*args, device) in a new process: memory an earlier measurement freed, and that the
    allocator kept, would otherwise hide part of this one. fork is quick; CUDA needs spawn."""
    context = multiprocessing.get_context("spawn" if device.type == "cuda" else "fork")
    with context.Pool(1) as pool:
        return pool.apply(step_memory, (*args, str(device)))


def fit_line(points):
    """Least-squares (a, b, largest residual) of GiB = a + b * micro-batch over (micro-batch, GiB) points."""
    x, y = np.array(points, dtype=float).T
    b, a = np.polyfit(x, y, 1)
    return a, b, float(np.abs(a + b * x - y).max())


def fits(need, size, batch=PAPER_BATCH):
    """The smallest --grad-accum (1, 2, 4, ... batch) whose micro-batch ceil(batch / g) needs at most
    `size` GiB with ALLOWANCE, as (g, micro-batch, GiB needed); None when not even a micro-batch of 1 does.
    need: (micro-batch, --grad-accum) -> GiB of the step's tensors."""
    for g in (2 ** k for k in range(int(math.log2(batch)) + 1)):
        micro = math.ceil(batch / g)
        if need(micro, g) + ALLOWANCE <= size:
            return g, micro, need(micro, g) + ALLOWANCE
    return None


def training_memory(args, device):
    """--memory: the peak memory of a training step at the real size (HuBERT-Large, random init, layer 22,
    every item padded to 100,000 samples as --padding fixed does) for micro-batches in fp32 and bf16
    autocast, and with --grad-accum; a line per precision fitted over the micro-batches; what
    reproduce.py --fold all with its defaults needs, and the --grad-accum that keeps batch 16 within
    each of GPU_SIZES. On a CPU the figures estimate a GPU's (step_memory, and the printout says how)."""
    settings = MEMORY["quick" if args.quick else device.type]
    micro, accum = args.micro_batches or settings["micro"], settings["accum"]
    config = tiny_config(**settings["model"])
    gpu = device.type == "cuda"
    print(f"device: {device_name(device)} | HuBERT (random init): hidden {config.hidden_size}, layer {settings['layers']} "
          f"of {config.num_hidden_layers} taken, every item padded to {settings['max_len']} samples (--padding fixed)"
          + ("" if settings["model"] is LARGE else " (--quick: a tiny model; the figures say nothing of Large)"))
    if gpu:
        print(f"measured on a GPU: torch.cuda.max_memory_allocated over two training steps of a fresh process "
              f"(weights, gradients, Adam states, activations), + {ALLOWANCE} GiB for the CUDA context, library "
              "workspaces and the caching allocator (assumed)")
    else:
        print(f"estimated from a CPU: growth of the peak resident memory (VmHWM) over two training steps of a fresh "
              f"process. Weights, gradients, Adam states and activations are the same bytes on a GPU; the CUDA "
              f"context, library workspaces and the caching allocator are not: + {ALLOWANCE} GiB for them (assumed)")
    rows = [(p, m, 1) for p in ("fp32", "bf16") for m in micro] + [(p, b, g) for p in ("fp32", "bf16") for b, g in accum]
    measured = {}
    print("\n| precision | --batch-size | --grad-accum | micro-batch | GiB |\n|---|---|---|---|---|", flush=True)
    for precision, batch, g in rows:
        gib = in_fresh_process(device, settings["model"], settings["layers"], settings["max_len"], batch, g, precision)
        if gib is None:
            raise SystemExit("error: this system reports no peak memory (Linux's /proc/self/clear_refs on a CPU)")
        measured[precision, batch, g] = gib
        print(f"| {precision} | {batch} | {g} | {math.ceil(batch / g)} | {gib:.2f} |", flush=True)
    summarise_memory(measured, micro)
    return 0


def summarise_memory(measured, micro):
    """The fitted lines, the default command's need and the table of GPU sizes, from the measured
    {(precision, batch, grad_accum): GiB}. With --grad-accum above 1 a step holds the gradients of the
    micro-batches done while the next one's activations are alive: the measured excess of such a row over
    its micro-batch without accumulation is added to every --grad-accum above 1."""
    lines = {p: fit_line([(m, measured[p, m, 1]) for m in micro]) for p in ("fp32", "bf16")}
    print("\nfit over the micro-batches, per precision (GiB = a + b x micro-batch):")
    for p, (a, b, worst) in lines.items():
        print(f"  {p}: {a:.2f} + {b:.3f} x micro-batch (largest residual {worst:.2f} GiB)")

    def need(precision):
        a, b, _ = lines[precision]
        alone = lambda m: measured.get((precision, m, 1), a + b * m)  # measured where it was, else the fit
        extra = max([gib - alone(math.ceil(n / g)) for (p, n, g), gib in measured.items() if p == precision and g > 1],
                    default=0.0)
        return lambda m, g=1: alone(m) + (max(extra, 0.0) if g > 1 else 0.0)
    for p in ("fp32", "bf16"):
        if any(k[0] == p and k[2] > 1 for k in measured):
            print(f"  --grad-accum above 1, {p}: + {need(p)(1, 2) - need(p)(1):.2f} GiB (measured) for the gradients "
                  "held across micro-batches")
    how = "measured" if PAPER_BATCH in micro else f"the fit, from micro-batches {micro[0]}-{micro[-1]}"
    print(f"\nreproduce.py --fold all with the defaults (batch {PAPER_BATCH}, fixed padding to 100,000 samples, "
          f"22 layers): bf16 autocast (a GPU with bf16) {need('bf16')(PAPER_BATCH):.1f} GiB, fp32 (a GPU without) "
          f"{need('fp32')(PAPER_BATCH):.1f} GiB ({how}), + {ALLOWANCE} GiB: "
          f"{need('bf16')(PAPER_BATCH) + ALLOWANCE:.1f} and {need('fp32')(PAPER_BATCH) + ALLOWANCE:.1f} GiB")
    print(f"\nthe paper's batch of {PAPER_BATCH} within a GPU's memory ({how}; + {ALLOWANCE} GiB):\n"
          "| GPU memory | bf16 autocast | fp32 |\n|---|---|---|")
    for size in GPU_SIZES:
        cells = []
        for p in ("bf16", "fp32"):
            found = fits(need(p), size)
            cells.append(f"does not fit ({need(p)(1, PAPER_BATCH) + ALLOWANCE:.1f} GiB at micro-batch 1)" if found is None
                         else f"--grad-accum {found[0]} (micro-batch {found[1]}, {found[2]:.1f} GiB)" if found[0] > 1
                         else f"the defaults ({found[2]:.1f} GiB)")
        print(f"| {size} GB | {' | '.join(cells)} |")


# ---------------------------------------------------------------------------- predict.py --bench

BENCH_CHUNK = 50  # predict.py --bench alternates batched and one-at-a-time over chunks of this many files


def bench_paths(run, members, n):
    """The first n test utterances of the members' folds (split/test.txt), as wav paths of the run's corpus."""
    saved = read_config(Path(run) / "config.json")["config"]
    corpus = corpora.load(Config(**known(saved)))
    wav = {u.id: u.wav for u in corpus.utterances}
    ids = []
    for m in members:
        ids += [i for i in read_split(Path(run) / m.name / "split", known=set(wav))["test"] if i not in ids]
    if not ids:
        raise UserError(f"{run}: the selected jobs list no test utterance")
    return [wav[i] for i in ids[:n]]


def predict_speed(members, setup, args):
    """Batched prediction (predict.py's own: the members loaded in turn, per chunk of windows) against one
    file at a time (batch 1, no workers, every member loaded once beforehand, as a server keeps them), in one
    process with the same models. The two alternate over chunks of BENCH_CHUNK files, each chunk timed both ways (in
    turn first), so both see the same load of a shared machine; the totals give the ratio."""
    if not args.run:
        raise UserError("--bench needs --run (it predicts the run's own test utterances)")
    paths = bench_paths(args.run, members, args.n)
    device, precision = resolve(args.device, args.precision, args.int8)
    window = args.max_len or setup.max_len
    common = dict(members=members, setup=setup, window=window, crop=args.crop, device=device, progress=False,
                  precision=precision, vad=args.vad)
    batched = lambda chunk: predict(paths=chunk, batch_size=args.batch_size, workers=args.workers, **common)
    loaded = list(models(members, device, precision == "int8"))  # one file at a time keeps every member loaded
    single = lambda chunk: [predict(paths=[p], batch_size=1, workers=0, loaded=loaded, **common)[0] for p in chunk]
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


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="tiny HuBERT and replica, 2 steps: a smoke test (seconds)")
    for flag in ("batch-size", "steps", "warmup", "layers", "workers"):
        p.add_argument(f"--{flag}", type=int, help="default: per device, see SETTINGS")
    p.add_argument("--corpus", help="synthetic replica for the data pipeline, written there if missing (default "
                   "~/.cache/ser-lam-mixup/bench-replica-N; full size on a GPU: ~80 s and ~1 GB once). A full-size "
                   "one for a CPU: python synthetic.py DIR --utterances-per-speaker 553 --iemocap-lengths")
    p.add_argument("--compile", action="store_true",
                   help="also time the fast variant with its transformer layers under torch.compile")
    p.add_argument("--memory", action="store_true", help="instead: the peak memory of a training step at the real "
                   "size (HuBERT-Large, fixed padding) per micro-batch, fp32 and bf16, and the --grad-accum that keeps "
                   "batch 16 within 12-80 GB (a GPU measures, a CPU estimates; minutes and ~10 GB on a CPU)")
    p.add_argument("--micro-batches", type=int, nargs="+", metavar="N",
                   help="--memory: the micro-batches measured (default: 1 2 4 8 16 on a GPU, 1 2 4 on a CPU)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if args.memory:
        return training_memory(args, device)
    settings = SETTINGS["quick" if args.quick else device.type]
    for key in ("batch_size", "steps", "warmup", "layers", "workers"):
        setattr(args, key, settings[key] if getattr(args, key) is None else getattr(args, key))
    config = tiny_config(**settings["model"])

    default = Config(device=args.device, batch_size=args.batch_size, precision=default_precision(device))
    # fast: --padding dynamic with bf16 autocast wherever the device computes in bf16 (a GPU with
    # bf16; a CPU with AVX512-BF16 or AMX). On such a CPU the fp32 dynamic row shows each part's share.
    fast_precision = "bf16" if device.type == "cuda" or torch.ops.mkldnn._is_mkldnn_bf16_supported() else default.precision
    variants = {"authors": dataclasses.replace(default, precision="fp32"), "default": default}
    if device.type == "cpu" and fast_precision != default.precision:
        variants["fast fp32"] = dataclasses.replace(default, padding="dynamic")
    variants["fast"] = dataclasses.replace(default, padding="dynamic", precision=fast_precision)
    if args.compile:
        variants["fast+compile"] = variants["fast"]
    name = device_name(device)
    print(f"device: {name} | HuBERT (random init): hidden {config.hidden_size}, {config.num_hidden_layers} layers "
          f"(layer {args.layers} taken), {config.num_attention_heads} heads, feed-forward {config.intermediate_size}, "
          f"conv {config.conv_dim[0]} x 7" + ("" if settings["model"] is LARGE else " (reduced from Large's 1024/24/16/4096/512)"))

    root = Path(args.corpus or Path.home() / ".cache" / "ser-lam-mixup" / f"bench-replica-{settings['per_speaker']}")
    if not (root / "Session5").exists():
        print(f"writing a synthetic replica ({settings['per_speaker']} utterances per speaker) to {root}", flush=True)
        synthetic.make_synthetic_iemocap(root, utterances_per_speaker=settings["per_speaker"], **synthetic.IEMOCAP_LENGTHS)
    utterances = iemocap.read_iemocap(root)
    train_set = corpora.from_iemocap(utterances).split("5")["train"]
    pipeline = {cache: pipeline_throughput(train_set, variants["fast"], settings["pipeline_batches"], args.workers, cache)
                for cache in (False, True)}

    items = draw_items((args.warmup + args.steps) * args.batch_size, default.max_len)
    plain = [items[k:k + args.batch_size] for k in range(0, len(items), args.batch_size)]
    batches = {"fixed": plain, "dynamic": bucketed(plain[:args.warmup]) + bucketed(plain[args.warmup:])}
    seen = np.mean([max(item[1], item[4]) for item in items]) / SR
    print(f"batches: {args.steps} timed steps of {args.batch_size} after {args.warmup} warm-up, the same items in every "
          f"variant; lengths as the training loop sees them: IEMOCAP-like (0.585-34.1 s, mean 4.55 s) cropped at "
          f"{default.max_len} samples, half mixed with a random partner and as long as the longer one (Eq. 1): "
          f"mean {seen:.2f} s per item", flush=True)

    results = {}
    for variant, cfg in variants.items():
        collated = [data.collate_train(b, cfg.padding, cfg.max_len) for b in batches[cfg.padding]]
        if device.type == "cuda":  # reproduce.py's DataLoader pins its batches
            collated = [tuple(None if t is None else t.pin_memory() for t in b) for b in collated]
        results[variant] = measure(variant, cfg, collated[:args.warmup], collated[args.warmup:], settings["model"], args, device)
        print(f"{variant}: {results[variant]['steps']:.3f} steps/s", flush=True)

    fast, authors = results["fast"], results["authors"]
    feed = pipeline[True] / fast["utt"]
    print(f"data pipeline, {args.workers} workers, fold 5 of {root} ({len(utterances)} utterances, IEMOCAP {iemocap.PUBLISHED['total']}; "
          f"{len(train_set)} to train on): crop + augment "
          f"+ mixup pairs + collate {pipeline[True]:.1f} utt/s from decoded audio (reproduce.py), "
          f"{pipeline[False]:.1f} utt/s decoding every wav (the authors); reproduce.py's feeds {feed:.2f}x what suite "
          f"fast consumes: {'enough' if feed >= 2 else 'NOT enough'} to keep a GPU busy (2x)")
    if device.type == "cuda":
        print("projected from these rates (validation is forward only: ~1/3 of a training step per utterance):")
        for variant, r in results.items():
            epoch = (TRAIN_UTTERANCES + VAL_UTTERANCES / 3) / r["utt"]
            run = 5 * EPOCHS_PER_FOLD * epoch / 3600
            print(f"  {variant}: paper-protocol epoch ({TRAIN_UTTERANCES} training + {VAL_UTTERANCES} validation "
                  f"utterances) {epoch / 60:.1f} min; reproduce.py --fold all, 5 folds x {EPOCHS_PER_FOLD} epochs "
                  f"(assumed: early stopping at patience 10 ends a fold around epoch {EPOCH_RANGE[0]}-{EPOCH_RANGE[1]}) "
                  f"{run:.2f} h ({run * EPOCH_RANGE[0] / EPOCHS_PER_FOLD:.2f}-{run * EPOCH_RANGE[1] / EPOCHS_PER_FOLD:.2f} h)")
    memory = "GPU max allocated" if device.type == "cuda" else "CPU peak RSS increase"
    print(f"\n| variant | precision | padding | steps/s | utt/s | audio s/s | {memory} (GiB) | TFLOP/s | audio s/s vs authors |")
    print("|---|---|---|---|---|---|---|---|---|")
    for variant, r in results.items():
        mem = "n/a" if r["memory"] is None else f"{r['memory']:.2f}"
        print(f"| {variant} | {variants[variant].precision} | {variants[variant].padding} | {r['steps']:.3f} | "
              f"{r['utt']:.2f} | {r['audio']:.2f} | {mem} | {r['tflops']:.3f} | {r['audio'] / authors['audio']:.2f}x |")
    print(f"speedup fast/authors: {fast['audio'] / authors['audio']:.2f}x on {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
