"""losses.py: Eq. 1-6 against numbers worked by hand."""

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from losses import CenterLoss, joint_loss, label_adaptive_targets, mix_waveforms, mixup_targets, recognition_loss

ANG, HAP, SAD, NEU = torch.eye(4)


def test_mix_waveforms_is_as_long_as_the_longer_and_zero_pads_the_shorter():
    x_i = torch.tensor([2.0, 4.0])
    x_j = torch.tensor([10.0, 20.0, 30.0, 40.0])
    expected = torch.tensor([0.25 * 2 + 0.75 * 10, 0.25 * 4 + 0.75 * 20, 0.75 * 30, 0.75 * 40])
    assert torch.allclose(mix_waveforms(x_i, x_j, lam=0.25), expected)
    assert torch.allclose(mix_waveforms(x_j, x_i, lam=0.75), expected)


def test_mixup_target_at_half_is_the_average_of_the_two_one_hots():
    y = mixup_targets(ANG[None], SAD[None], lam=0.5)
    assert torch.allclose(y, torch.tensor([[0.5, 0.0, 0.5, 0.0]]))


def test_mixup_target_at_lambda_point_three_weights_the_first_label_point_three():
    y = mixup_targets(ANG[None], SAD[None], lam=0.3)  # Eq. 2: 0.3 * ang + 0.7 * sad
    assert torch.allclose(y, torch.tensor([[0.3, 0.0, 0.7, 0.0]]))


def test_label_adaptive_target_weights_one_and_three_second_clips_as_quarter_and_three_quarters():
    y = label_adaptive_targets(HAP[None], NEU[None], torch.tensor([16000]), torch.tensor([48000]))
    assert torch.allclose(y, torch.tensor([[0.0, 0.25, 0.0, 0.75]]))


def test_label_adaptive_target_with_lambda_weights_lengths_as_eq3():
    # lam=0.2, l_i=3, l_j=1: 0.6 / (0.6 + 0.8) = 3/7 for y_i, 4/7 for y_j
    y = label_adaptive_targets(ANG[None], SAD[None], torch.tensor([3.0]), torch.tensor([1.0]), lam=0.2)
    assert torch.allclose(y, torch.tensor([[3 / 7, 0.0, 4 / 7, 0.0]]))


def test_label_adaptive_target_is_one_hot_for_same_class_pair():
    y = label_adaptive_targets(
        torch.stack([SAD, ANG]), torch.stack([SAD, HAP]), torch.tensor([16000, 20000]), torch.tensor([48000, 60000])
    )
    assert torch.allclose(y, torch.tensor([[0.0, 0.0, 1.0, 0.0], [0.25, 0.75, 0.0, 0.0]]))
    assert torch.allclose(y.sum(1), torch.ones(2))


def test_recognition_loss_equals_cross_entropy_for_one_hot_targets():
    logits = torch.tensor([[2.0, 0.0, -1.0, 0.5], [0.0, 0.0, 0.0, 0.0]])
    targets = torch.stack([ANG, SAD])
    # by hand: -log softmax of the true class, averaged over the batch
    row0 = -(2.0 - math.log(math.exp(2) + 1 + math.exp(-1) + math.exp(0.5)))
    row1 = math.log(4)
    assert recognition_loss(logits, targets).item() == pytest.approx((row0 + row1) / 2, rel=1e-6)
    assert recognition_loss(logits, targets).item() == pytest.approx(F.cross_entropy(logits, targets.argmax(1)).item())


def test_recognition_loss_is_zero_when_softmax_equals_the_soft_target():
    targets = torch.tensor([[0.25, 0.75, 0.0, 0.0]])
    logits = torch.tensor([[math.log(0.25), math.log(0.75), -1e4, -1e4]])
    assert recognition_loss(logits, targets).item() == pytest.approx(0.0, abs=1e-6)


def test_recognition_loss_of_soft_target_is_kl_by_hand():
    targets = torch.tensor([[0.5, 0.5, 0.0, 0.0]])
    logits = torch.zeros(1, 4)  # uniform prediction: KL = 2 * 0.5 * log(0.5 / 0.25) = log 2
    assert recognition_loss(logits, targets).item() == pytest.approx(math.log(2), rel=1e-6)


def test_center_loss_is_zero_at_the_centers():
    center_loss = CenterLoss(num_classes=4, feat_dim=64)
    labels = torch.tensor([3, 0, 0, 2])
    assert center_loss(center_loss.centers[labels].detach(), labels).item() == 0.0


def test_center_loss_equals_worked_example():
    center_loss = CenterLoss(num_classes=2, feat_dim=2)
    with torch.no_grad():
        center_loss.centers.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0]]))
    z = torch.tensor([[3.0, 4.0], [1.0, 3.0]])
    # ||(3,4)-(0,0)||^2 = 25, ||(1,3)-(1,1)||^2 = 4, mean over N=2 -> 14.5
    assert center_loss(z, torch.tensor([0, 1])).item() == pytest.approx(14.5)


def test_center_loss_centers_start_standard_normal_with_shape_classes_by_64():
    torch.manual_seed(0)
    centers = CenterLoss(num_classes=4, feat_dim=64).centers
    assert isinstance(centers, nn.Parameter) and centers.shape == (4, 64)
    assert abs(centers.mean().item()) < 0.2 and abs(centers.std().item() - 1) < 0.2


def test_center_loss_gradient_reaches_features_and_centers():
    center_loss = CenterLoss(num_classes=2, feat_dim=2)
    with torch.no_grad():
        center_loss.centers.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0]]))
    z = torch.tensor([[3.0, 4.0], [1.0, 3.0]], requires_grad=True)
    center_loss(z, torch.tensor([0, 1])).backward()
    # d/dz of mean_i ||z_i - mu_i||^2 = 2 (z_i - mu_i) / N; centers get the negative
    assert torch.allclose(z.grad, torch.tensor([[3.0, 4.0], [0.0, 2.0]]))
    assert torch.allclose(center_loss.centers.grad, torch.tensor([[-3.0, -4.0], [0.0, -2.0]]))


def test_joint_loss_is_recognition_plus_lambda_times_center():
    assert joint_loss(torch.tensor(1.5), torch.tensor(100.0), 0.002).item() == pytest.approx(1.7)
