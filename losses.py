"""Eq. 1-6 of the paper: mixup (conventional and label-adaptive), the
recognition loss, the center loss and the joint loss. One function per equation."""
import torch
import torch.nn as nn
import torch.nn.functional as F


def mix_waveforms(x_i, x_j, lam=0.5):
    """Eq. 1: x_ij = lam * x_i + (1 - lam) * x_j.

    x_i (..., L_i), x_j (..., L_j) -> (..., max(L_i, L_j)): the shorter one is
    zero-padded (silence) at the end. The authors padded every utterance to
    100,000 samples with its own mean value before mixing (BACKGROUND.md,
    "Data pipeline").
    """
    length = max(x_i.shape[-1], x_j.shape[-1])
    x_i = F.pad(x_i, (0, length - x_i.shape[-1]))
    x_j = F.pad(x_j, (0, length - x_j.shape[-1]))
    return lam * x_i + (1 - lam) * x_j


def mixup_targets(y_i, y_j, lam=0.5):
    """Eq. 2: y_ij = lam * y_i + (1 - lam) * y_j  (conventional mixup, Table 2 row 3).

    y_i, y_j: one-hot (B, C) float.
    """
    return lam * y_i + (1 - lam) * y_j


def label_adaptive_targets(y_i, y_j, l_i, l_j, lam=0.5):
    """Eq. 3: y_ij = lam*l_i / (lam*l_i + (1-lam)*l_j) * y_i
                   + (1-lam)*l_j / (lam*l_i + (1-lam)*l_j) * y_j.

    y_i, y_j: one-hot (B, C) float; l_i, l_j: (B,) lengths of the two
    utterances (after the crop); lam = 0.5 in the paper, so the weights are
    l_i / (l_i + l_j) and l_j / (l_i + l_j).

    Each target sums to 1, also when both utterances have the same class: the
    two weights add up to a one-hot target. The authors' script wrote the
    second weight over the first in that case, so its target summed to less
    than 1 (BACKGROUND.md, bug 1); this function does not repeat that.
    """
    l_i = torch.as_tensor(l_i, dtype=y_i.dtype, device=y_i.device)
    l_j = torch.as_tensor(l_j, dtype=y_i.dtype, device=y_i.device)
    w_i = lam * l_i / (lam * l_i + (1 - lam) * l_j)  # (B,)
    w_j = 1 - w_i  # = (1-lam)*l_j / (lam*l_i + (1-lam)*l_j)
    return w_i.unsqueeze(-1) * y_i + w_j.unsqueeze(-1) * y_j  # (B, C)


def recognition_loss(logits, targets):
    """Eq. 4: L_r = sum_k z_k log(z_k / z^_k),  z^ = softmax(logits).

    The KL divergence of the (soft) target from the prediction, averaged over
    the batch ("batchmean", as the authors). For a one-hot target it equals
    the cross-entropy.
    """
    return F.kl_div(F.log_softmax(logits, dim=-1), targets, reduction="batchmean")


class CenterLoss(nn.Module):
    """Eq. 5: L_c = 1/N sum_i || f0(F_e^0)_i - mu_argmax(y_ij) ||_2^2.

    Holds the class centers mu (num_classes, feat_dim), drawn from a standard
    normal as the authors did; they are trained by their own optimizer
    (Sec. 3.2: lr 1e-3). The caller passes labels = targets.argmax(1): with a
    tie (a 50/50 mix of two classes) argmax picks the lower class index.
    """

    def __init__(self, num_classes=4, feat_dim=64):
        super().__init__()
        self.centers = nn.Parameter(torch.randn(num_classes, feat_dim))  # mu

    def forward(self, z, labels):
        mu = self.centers[labels]  # (B, 64)
        return ((z - mu) ** 2).sum(-1).mean()


def joint_loss(l_r, l_c, lam_c):
    """Eq. 6: L = L_r + lambda * L_c  (lambda = 0.002, Table 2)."""
    return l_r + lam_c * l_c
