"""train.py: the job tests its best epoch's weights, and the step puts Eq. 6 whole into the gradient.
Both hold on any torch: each compares tensors of one run, not digits."""
import copy

import torch

import corpus as corpora
import train
from audio import decode
from losses import CenterLoss
from model import SERModel, load_backbone
from optimisation import Optimisation
from runs import Job
from runtime import Runtime
from settings import Config, make_config

CPU = Runtime(torch.device("cpu"), "fp32")


def test_a_job_whose_best_epoch_is_not_its_last_is_tested_with_the_best_epochs_weights(small_corpus, tmp_path,
                                                                                        monkeypatch):
    # validation WA by epoch, scripted: epoch 2 is the best of four, and early stopping (patience 4) never stops
    val_wa = iter([0.5, 0.9, 0.6, 0.7])
    monkeypatch.setattr(train, "validate", lambda model, loader, rt, name: dict(wa=next(val_wa), ua=0.0))
    after = {}  # the weights at the end of each epoch, as fit leaves them
    save_state = train.save_state
    monkeypatch.setattr(train, "save_state", lambda path, model, center_loss, opt, record: (
        after.__setitem__(record["epoch"], copy.deepcopy(model.state_dict())),
        save_state(path, model, center_loss, opt, record)))
    tested = {}
    evaluate = train.evaluate
    monkeypatch.setattr(train, "evaluate", lambda model, loader, rt, desc: (
        tested.setdefault(desc, copy.deepcopy(model.state_dict())), evaluate(model, loader, rt, desc))[1])

    cfg = make_config(dict(demo=True, demo_corpus=str(small_corpus), epochs=4, patience=4, max_len=8000,
                           no_tensorboard=True))
    corpus = corpora.load(cfg)
    metrics = train.run_job(cfg, corpus, decode(corpus.utterances), Job("2", 0, cfg), tmp_path / "job", CPU)

    assert metrics["best_epoch"] == 2 and sorted(after) == [1, 2, 3, 4]
    (weights,) = tested.values()
    assert all(weights[k].equal(after[2][k]) for k in weights)  # the best epoch's, reloaded
    assert not all(weights[k].equal(after[4][k]) for k in weights)  # not the last epoch's (the authors' bug 2)


def step_with(center_weight, model, center_loss, batch):
    """train_step on copies of the model and centers with this center-loss weight; returns the
    copies, whose .grad hold the step's gradient."""
    model, center_loss = copy.deepcopy(model), copy.deepcopy(center_loss)
    cfg = Config(center_weight=center_weight)
    torch.manual_seed(0)  # the same dropout masks for every weight
    train.train_step(model, center_loss, Optimisation(cfg, model, center_loss, CPU), batch, cfg, CPU)
    return model, center_loss


def test_the_center_loss_reaches_the_gradient_with_its_configured_weight():
    torch.manual_seed(1)
    model = SERModel(load_backbone("tiny"), layers=2)
    center_loss = CenterLoss(4, 64)
    x = torch.randn(4, 8000)
    y = torch.tensor([0, 1, 2, 3])
    lengths = torch.full((4,), 8000)
    batch = (x, x, None, lengths, lengths, y, y)  # each item its own partner: one-hot targets

    # Eq. 5's gradient on the centers, from the same forward pass: lambda times it is what the step leaves
    reference = copy.deepcopy(model)
    torch.manual_seed(0)
    z, _ = reference(x)
    centers = center_loss.centers.detach().clone().requires_grad_(True)
    L_c = ((z.detach() - centers[y]) ** 2).sum(-1).mean()
    (d_centers,) = torch.autograd.grad(L_c, centers)

    none, none_c = step_with(0.0, model, center_loss, batch)
    one, one_c = step_with(0.002, model, center_loss, batch)
    two, two_c = step_with(0.004, model, center_loss, batch)
    assert none_c.centers.grad.abs().max() == 0
    assert d_centers.abs().max() > 0
    torch.testing.assert_close(one_c.centers.grad, 0.002 * d_centers)
    torch.testing.assert_close(two_c.centers.grad, 0.004 * d_centers)
    # the model's gradient: Eq. 4's plus lambda times Eq. 5's, linear in lambda
    for (name, p0), p1, p2 in zip(none.named_parameters(), one.parameters(), two.parameters()):
        if p0.grad is None:
            continue
        torch.testing.assert_close(p2.grad - p0.grad, 2 * (p1.grad - p0.grad), atol=1e-7, rtol=1e-3, msg=name)
    assert (one.f0.weight.grad - none.f0.weight.grad).abs().max() > 0
