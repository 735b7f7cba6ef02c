"""losses.py and model.py: Eq. 1-6 against hand-computed numbers, and the cut HuBERT."""
import copy
import math
import time

import huggingface_hub
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import HubertModel

from losses import CenterLoss, joint_loss, label_adaptive_targets, mix_waveforms, mixup_targets, recognition_loss
from model import HubertLoadError, SERModel, load_hubert, tiny_hubert_config

ANG, HAP, SAD, NEU = torch.eye(4)



def tiny_hubert(seed=0, **overrides):
    torch.manual_seed(seed)
    return HubertModel(tiny_hubert_config(**overrides))


# ---- losses.py ----


def test_mix_waveforms_is_as_long_as_the_longer_and_zero_pads_the_shorter():
    x_i = torch.tensor([2.0, 4.0])
    x_j = torch.tensor([10.0, 20.0, 30.0, 40.0])
    expected = torch.tensor([0.25 * 2 + 0.75 * 10, 0.25 * 4 + 0.75 * 20, 0.75 * 30, 0.75 * 40])
    assert torch.allclose(mix_waveforms(x_i, x_j, lam=0.25), expected)
    assert torch.allclose(mix_waveforms(x_j, x_i, lam=0.75), expected)


def test_mixup_target_at_half_is_the_average_of_the_two_one_hots():
    y = mixup_targets(ANG[None], SAD[None], lam=0.5)
    assert torch.allclose(y, torch.tensor([[0.5, 0.0, 0.5, 0.0]]))


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


# ---- model.py ----


@pytest.mark.parametrize("k", [1, 2, 4])
def test_features_of_k_layer_model_equal_pre_layernorm_hidden_state_k_of_uncut_model(k):
    uncut = tiny_hubert().eval()
    model = SERModel(copy.deepcopy(uncut), layers=k).eval()
    x = torch.randn(2, 8000)
    with torch.no_grad():
        out = uncut(x, output_hidden_states=True)
        features = model.features(x)
    assert torch.allclose(features, out.hidden_states[k], atol=1e-5)
    # the final LayerNorm would change it (proves the comparison is not vacuous)
    assert not torch.allclose(features, uncut.encoder.layer_norm(out.hidden_states[k]), atol=1e-3)


def test_k_layer_model_keeps_exactly_k_layers():
    model = SERModel(tiny_hubert(), layers=3)
    assert len(model.hubert.encoder.layers) == 3
    assert model.hubert.config.num_hidden_layers == 3


def test_exactly_k_attention_output_dropouts_are_set_and_every_other_dropout_is_zero():
    # a config with the checkpoint's regularisation on: SERModel must switch it off
    hubert = tiny_hubert(
        hidden_dropout=0.1, attention_dropout=0.1, activation_dropout=0.1, feat_proj_dropout=0.1,
        layerdrop=0.1, apply_spec_augment=True, mask_time_prob=0.05,
    )
    model = SERModel(hubert, layers=3, dropout=0.4)
    dropouts = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    set_ = [m for m in dropouts if m.p == 0.4]
    assert len(set_) == 3
    assert all(any(m is layer.dropout for layer in model.hubert.encoder.layers) for m in set_)
    assert all(m.p == 0.0 for m in dropouts if m.p != 0.4)
    assert all(layer.attention.dropout == 0.0 for layer in model.hubert.encoder.layers)
    assert model.hubert.config.layerdrop == 0.0
    assert model.hubert.config.apply_spec_augment is False


def test_train_mode_forward_is_deterministic_without_dropout():
    # no layer drop, no time masking: with dropout 0 a training step sees the same features twice
    model = SERModel(tiny_hubert(layerdrop=0.5, apply_spec_augment=True, mask_time_prob=0.5), layers=4, dropout=0.0)
    model.train()
    x = torch.randn(2, 8000)
    assert torch.equal(model(x)[1], model(x)[1])


@pytest.mark.parametrize("pooling", ["avg", "first"])
def test_changing_padded_samples_does_not_change_pooled_output(pooling):
    model = SERModel(tiny_hubert(), layers=4, pooling=pooling).eval()
    x = torch.randn(2, 24000)
    mask = torch.ones(2, 24000, dtype=torch.long)
    mask[0, 16000:] = 0
    x_other = x.clone()
    x_other[0, 16000:] = 5 * torch.randn(8000)
    with torch.no_grad():
        z, logits = model(x, mask)
        z_other, logits_other = model(x_other, mask)
        z_alone, _ = model(x[:1, :16000])
    assert torch.allclose(z, z_other, atol=1e-5) and torch.allclose(logits, logits_other, atol=1e-5)
    assert torch.allclose(z[0], z_alone[0], atol=1e-4)  # padded in a batch = on its own


def test_avg_pooling_is_zero_for_an_utterance_with_no_valid_frame():
    model = SERModel(tiny_hubert(), layers=2, pooling="avg").eval()
    mask = torch.ones(2, 8000, dtype=torch.long)
    mask[0, 300:] = 0  # fewer than 400 samples: no complete frame
    assert model.frame_mask(24, mask)[0].sum() == 0
    with torch.no_grad():
        z, _ = model(torch.randn(2, 8000), mask)
    assert torch.allclose(z[0], model.f0.bias) and torch.isfinite(z).all()


def test_normalize_waveform_ignores_gain_and_padding():
    model = SERModel(tiny_hubert(), layers=2, pooling="avg", normalize_waveform=True).eval()
    x = torch.randn(2, 16000)
    mask = torch.ones(2, 16000, dtype=torch.long)
    mask[1, 12000:] = 0
    with torch.no_grad():
        z, _ = model(x, mask)
        z_scaled, _ = model(3 * x + 1, mask)
    assert torch.allclose(z, z_scaled, atol=1e-4)


def test_batch_of_two_different_length_waveforms_runs_forward_and_backward():
    model = SERModel(tiny_hubert(), layers=2).train()
    center_loss = CenterLoss(num_classes=4, feat_dim=64)
    x_a, x_b = torch.randn(16000), torch.randn(11000)
    x = torch.zeros(2, 16000)
    x[0], x[1, :11000] = x_a, x_b
    mask = torch.zeros(2, 16000, dtype=torch.long)
    mask[0], mask[1, :11000] = 1, 1
    targets = label_adaptive_targets(torch.stack([ANG, SAD]), torch.stack([HAP, SAD]), torch.tensor([16000, 11000]),
                                     torch.tensor([11000, 16000]))
    z, logits = model(x, mask)
    assert z.shape == (2, 64) and logits.shape == (2, 4)
    loss = joint_loss(recognition_loss(logits, targets), center_loss(z, targets.argmax(1)), 0.002)
    loss.backward()
    for p in (model.f0.weight, model.f1.weight, model.hubert.encoder.layers[0].attention.q_proj.weight,
              model.hubert.feature_extractor.conv_layers[0].conv.weight, center_loss.centers):
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_tiny_hubert_frames_follow_large_front_end_400_sample_window_and_320_sample_hop():
    model = SERModel(tiny_hubert(), layers=1).eval()
    with torch.no_grad():
        assert model.features(torch.randn(1, 16000)).shape == (1, (16000 - 400) // 320 + 1, 64)  # 49 frames
        assert model.features(torch.randn(1, 400)).shape == (1, 1, 64)
    c = model.hubert.config
    assert c.feat_extract_norm == "layer" and c.do_stable_layer_norm and c.conv_bias


def test_eager_and_sdpa_attention_give_the_same_features():
    eager = SERModel(tiny_hubert(attn_implementation="eager"), layers=4).eval()
    sdpa = SERModel(tiny_hubert(attn_implementation="sdpa"), layers=4).eval()
    assert eager.hubert.config._attn_implementation == "eager" and sdpa.hubert.config._attn_implementation == "sdpa"
    x = torch.randn(2, 12000)
    mask = torch.ones(2, 12000, dtype=torch.long)
    mask[1, 7000:] = 0
    with torch.no_grad():
        assert torch.allclose(eager.features(x, mask), sdpa.features(x, mask), atol=1e-5)


@pytest.mark.parametrize("k", [0, -1, 5])
def test_layers_outside_one_to_num_layers_raise(k):
    with pytest.raises(ValueError):
        SERModel(tiny_hubert(), layers=k)


def test_unknown_pooling_raises():
    with pytest.raises(ValueError):
        SERModel(tiny_hubert(), pooling="max")


@pytest.fixture
def offline(monkeypatch):
    # HF_HUB_OFFLINE is read when huggingface_hub is imported: patch the constant too.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.mark.parametrize("name", ["no-such-org/no-such-hubert", "/no/such/folder/hubert"])
def test_load_hubert_without_weights_raises_quickly_with_how_to_message(offline, name):
    start = time.time()
    with pytest.raises(HubertLoadError) as info:
        load_hubert(name)
    assert time.time() - start < 5
    message = str(info.value)
    assert name in message and "hf download facebook/hubert-large-ll60k" in message
    assert "--hubert" in message and "HF_HOME" in message and "--demo" in message


def test_load_hubert_from_local_folder_loads_the_weights_with_regularisation_off(offline, tmp_path):
    saved = tiny_hubert(hidden_dropout=0.1, attention_dropout=0.1, activation_dropout=0.1, feat_proj_dropout=0.1,
                        layerdrop=0.1, apply_spec_augment=True, mask_time_prob=0.05)
    saved.save_pretrained(tmp_path)
    hubert = load_hubert(str(tmp_path), attn_implementation="eager")
    assert isinstance(hubert, HubertModel)
    c = hubert.config
    assert (c.hidden_dropout, c.attention_dropout, c.activation_dropout, c.feat_proj_dropout, c.layerdrop) == (0,) * 5
    assert c.apply_spec_augment is False and c._attn_implementation == "eager"
    assert all(m.p == 0.0 for m in hubert.modules() if isinstance(m, nn.Dropout))
    for name, tensor in saved.state_dict().items():
        assert torch.equal(hubert.state_dict()[name], tensor), name


def test_load_hubert_on_folder_without_checkpoint_raises_how_to_message(offline, tmp_path):
    with pytest.raises(HubertLoadError, match="exists but holds no loadable HuBERT checkpoint"):
        load_hubert(str(tmp_path))
