"""One job: a fold trained with one seed and tested (Sec. 3.1-3.4), in one process or
data-parallel under torchrun. Read it top-down, as the paper:

    run_job     the job: split, model, fit, test of the best epoch
    fit         the loop of Sec. 3.2 and 3.4: epochs, learning-rate decay, validation, early stopping
    train_step  one step: mix (Eq. 1), targets (Eq. 2, 3), the joint loss (Eq. 4-6), backward, Adam

The machinery they stand on lives beside them: data.py (the batches), optimisation.py (the two
Adams, micro-batches, DistributedDataParallel), checkpoints.py (resume, the best epoch) and
board.py (TensorBoard).
"""
import dataclasses
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from audio import SAMPLE_RATE
from board import Board
from checkpoints import load_best, resume, save_best, save_state
from corpus import write_split
from crosscorpus import score_job
from data import Epoch, loaders
from files import write_json
from losses import CenterLoss, joint_loss, label_adaptive_targets, mix_waveforms, mixup_targets, recognition_loss
from metrics import scores
from model import SERModel, load_backbone
from optimisation import Optimisation
from runtime import autocast, broadcast
from seeds import DROPOUT, INIT, SHUFFLED_LABELS, derive_seed


def run_job(cfg, corpus, audio, job, folder, rt, test_sets=()):
    """Train fold `job.fold` with seed `job.seed` and test it (Sec. 3.1, 3.4): the fold's training
    part, less a validation part for early stopping, trains the model; the epoch with the best
    validation WA is tested on the fold's test part. Returns the metrics, also written to
    folder/metrics.json, on rank 0 (None on the other ranks of a torchrun).

    audio: the corpus decoded (audio.decode); rt: runtime.Runtime; test_sets: other corpora the tested
    model is scored on too (--test-on). A job interrupted after an epoch continues from folder/state.pt
    and ends with the numbers of an uninterrupted one."""
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
    record = fit(model, center_loss, pairs, val_loader, cfg, rt, folder, key, name, board)
    if rt.rank != 0:
        return None
    # Sec. 3.4: "evaluating the best model" - reload it (the authors' script tested the last epoch: BACKGROUND.md, bug 2)
    load_best(folder / "best.safetensors", model, rt)
    test = evaluate(model, test_loader, rt, f"{name} test")
    across = score_job(model, test_sets, audio, corpus.classes, cfg, rt, folder)  # --test-on: other corpora
    board.end(test, corpus.classes, job, record["epoch"], across)
    metrics = dict(fold=job.fold, seed=job.seed, wa=test["wa"], ua=test["ua"], recall=test["recall"],
                   confusion=test["confusion"], classes=list(corpus.classes), best_epoch=record["best_epoch"],
                   best_val_wa=record["best_wa"] if val_loader else None, n_train=len(split["train"]),
                   n_val=len(split["val"]), n_test=len(split["test"]), history=record["history"],
                   **({"targets": across} if across else {}))
    write_json(metrics, folder / "metrics.json")
    (folder / "state.pt").unlink()
    if cfg.no_save:
        (folder / "best.safetensors").unlink()
    print(f"{name}: test WA {test['wa']:.4f} UA {test['ua']:.4f} (best epoch {record['best_epoch']})"
          + "".join(f"  |  {t}: WA {s['wa']:.4f} UA {s['ua']:.4f}" for t, s in across.items()), flush=True)
    return metrics


def fit(model, center_loss, pairs, val_loader, cfg, rt, folder, key, name, board):
    """The loop of Sec. 3.2 and 3.4. Each epoch: Adam steps on batches of mixed pairs, then both
    learning rates x0.8 (for the first 20 epochs), then the validation WA. The best epoch's weights
    are kept (folder/best.safetensors); --patience epochs without a better WA stop the job. Without
    validation (Sec. 3.3) the last epoch is kept. Each epoch ends in folder/state.pt, from which an
    interrupted job resumes. Returns the record of early stopping: best epoch, history.
    board: the job's TensorBoard curves (Board)."""
    opt = Optimisation(cfg, model, center_loss, rt, fused=rt.device.type == "cuda")  # fused: same maths, one kernel
    record = resume(folder / "state.pt", model, center_loss, opt, rt, name)
    net = torch.nn.parallel.DistributedDataParallel(model) if rt.size > 1 else model
    for epoch in range(record["epoch"] + 1, cfg.epochs + 1):
        if record["bad_epochs"] >= cfg.patience:  # checked first: a job resumed after its early stop trains no more
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
        improved = val is None or val["wa"] > record["best_wa"]
        if improved:
            record.update(best_wa=val["wa"] if val else 0.0, best_epoch=epoch, bad_epochs=0)
            if rt.rank == 0:
                save_best(folder / "best.safetensors", model, center_loss)
        else:
            record["bad_epochs"] += 1
        row = batches.row(lr=lr, val_wa=val and val["wa"], val_ua=val and val["ua"])
        record["history"].append(row)
        record["epoch"] = epoch
        board.epoch(row)  # on disk before the state: a resumed job has every step up to it
        if rt.rank == 0:
            save_state(folder / "state.pt", model, center_loss, opt, record)
            print(f"{name} epoch {epoch:3d}  loss {row['loss']:.4f} (L_r {row['l_r']:.4f}, L_c {row['l_c']:.2f})  "
                  + (f"val WA {val['wa']:.4f} UA {val['ua']:.4f}  " if val else "")
                  + f"lr {lr:.2e}  {row['seconds']:.0f} s  {row['audio_per_s']:.0f} audio-s/s"
                  + ("  *" if improved and val else ""), flush=True)
    return record


def train_step(net, center_loss, opt, batch, cfg, rt, weight=1.0, where=""):
    """One optimizer step on a batch of pairs (x_i, x_j): the waveforms mixed (Eq. 1), their one-hot
    labels mixed by the utterances' lengths (Eq. 3; Eq. 2 with --mixup conventional), the model's
    output scored by the joint loss (Eq. 4-6), whose gradient updates the model and the class
    centers (Sec. 3.2). Returns [L, L_r, L_c] of the batch. weight: this process's share of the
    batch under torchrun (data.rank_batches)."""
    x_i, x_j, mask, l_i, l_j, y_i, y_j = (None if t is None else t.to(rt.device, non_blocking=True) for t in batch)
    y_i, y_j = (F.one_hot(y, len(center_loss.centers)).float() for y in (y_i, y_j))  # a center per class
    lam = cfg.mixup_lambda
    x = mix_waveforms(x_i, x_j, lam)  # Eq. 1 (an unmixed item is its own partner)
    if cfg.mixup == "conventional":
        y = mixup_targets(y_i, y_j, lam)  # Eq. 2
    else:
        y = label_adaptive_targets(y_i, y_j, l_i.float(), l_j.float(), lam)  # Eq. 3

    total = torch.zeros(3, device=rt.device)  # L, L_r, L_c of the batch
    opt.zero_grad()
    for part, share in opt.micro_batches(len(x), net, weight):  # the whole batch, unless --grad-accum
        with autocast(rt.precision, rt.device):
            z, logits = net(x[part], None if mask is None else mask[part])
        L_r = recognition_loss(logits.float(), y[part])  # Eq. 4
        L_c = center_loss(z.float(), y[part].argmax(1))  # Eq. 5: the class of the larger weight
        L = joint_loss(L_r, L_c, cfg.center_weight)  # Eq. 6
        opt.scaled(L * share).backward()
        total += torch.stack([L, L_r, L_c]).detach() * share
    return opt.step(total, where)  # both Adams (Sec. 3.2)


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
