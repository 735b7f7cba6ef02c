"""The optimisation of Sec. 3.2, and what a training step needs besides the paper: micro-batches
(--grad-accum), the gradient all-reduce of DistributedDataParallel under torchrun, and the loss
scaling of fp16 autocast. train.train_step shows the step itself."""
import math
from contextlib import nullcontext

import torch
import torch.distributed as dist


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

    def zero_grad(self):
        self.opt.zero_grad(set_to_none=True)
        self.opt_c.zero_grad(set_to_none=True)

    def micro_batches(self, n, net, weight=1.0):
        """(part, share) of each micro-batch of a batch of n items (--grad-accum; one without it):
        `part` slices the batch, `share` is the part's weight in the batch's mean loss. weight: this
        process's share of the global batch (1 in one process). Under torchrun DistributedDataParallel
        averages the gradients over the ranks after the last micro-batch only (no_sync before it)."""
        micro = math.ceil(n / self.grad_accum)
        starts = range(0, n, micro)
        for s in starts:
            part = slice(s, s + micro)
            with net.no_sync() if self.rt.size > 1 and s != starts[-1] else nullcontext():
                yield part, weight * len(range(n)[part]) / n

    def scaled(self, loss):
        """The loss whose backward() gives this process's part of the batch's gradient: under
        torchrun x world size, so that the average DistributedDataParallel takes over the ranks
        equals the single-process gradient; with fp16 autocast, x GradScaler's scale."""
        return self.scaler.scale(loss * self.rt.size)

    def step(self, total, where=""):
        """One step of each Adam on the gradients backward() left (the class centers', outside the
        DDP module, averaged over the ranks here). total: [L, L_r, L_c] of this process's part of
        the batch; returns them for the whole batch, as floats."""
        if self.rt.size > 1:
            dist.all_reduce(self.centers.grad)
            self.centers.grad /= self.rt.size
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
