"""A job's files on disk while it trains: state.pt, the end of its last finished epoch (weights,
class centers, both optimisers, the record of early stopping), from which an interrupted job
resumes; and best.safetensors, the weights of its best epoch, which the test reloads (Sec. 3.4)."""
import json
from functools import partial

import torch
from safetensors.torch import load_file, save_file

from files import atomic_write, read_back, save_torch


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
