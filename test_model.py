"""model.py: the cut backbone of each family (Fig. 1), its dropouts, pooling and padding, loading a checkpoint."""

import copy
import json
import time

import huggingface_hub
import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file
from transformers import AutoModel, BertConfig, BertModel

from losses import CenterLoss, joint_loss, label_adaptive_targets, recognition_loss
from model import (
    FAMILIES,
    TINY,
    BackboneError,
    SERModel,
    backbone_config,
    load_backbone,
    model_from_spec,
    normalise,
    tiny_config,
)

PRE_LN = ("hubert", "wav2vec2", "wavlm")  # families with a pre-LN ("stable layer norm") encoder


POST_LN = [(family, dict(do_stable_layer_norm=False)) for family in PRE_LN] + [("data2vec-audio", {})]


REGULARISED = dict(hidden_dropout=0.1, attention_dropout=0.1, activation_dropout=0.1, feat_proj_dropout=0.1,
                   layerdrop=0.1, apply_spec_augment=True, mask_time_prob=0.05)

ANG, HAP, SAD, NEU = torch.eye(4)


def tiny_backbone(family="hubert", seed=0, **overrides):
    """A random-init tiny backbone of the family (tiny_config), the same for the same seed."""
    torch.manual_seed(seed)
    return AutoModel.from_config(tiny_config(family, **overrides))


@pytest.mark.parametrize("k", [1, 2, 4])
@pytest.mark.parametrize("family", PRE_LN)
def test_features_of_k_layer_model_equal_pre_layernorm_hidden_state_k_of_uncut_model(family, k):
    uncut = tiny_backbone(family).eval()
    model = SERModel(copy.deepcopy(uncut), layers=k).eval()
    x = torch.randn(2, 8000)
    # layer k's output, taken from the layer itself: for k = all layers, hidden_states[k] is taken
    # after the final LayerNorm by transformers < 5.16 and before it by 5.16 and later
    outputs = []
    uncut.encoder.layers[k - 1].register_forward_hook(
        lambda module, args, out: outputs.append(out[0] if isinstance(out, tuple) else out))
    with torch.no_grad():
        uncut(x)
        features = model.features(x)
    assert torch.allclose(features, outputs[0], atol=1e-5)
    # the final LayerNorm would change it (proves the comparison is not vacuous)
    assert not torch.allclose(features, uncut.encoder.layer_norm(outputs[0]), atol=1e-3)


@pytest.mark.parametrize("family, overrides", POST_LN, ids=[family for family, _ in POST_LN])
def test_features_of_k_layer_post_layernorm_model_equal_hidden_state_k_of_uncut_model(family, overrides):
    uncut = tiny_backbone(family, **overrides).eval()
    model = SERModel(copy.deepcopy(uncut), layers=2).eval()
    x = torch.randn(2, 8000)
    with torch.no_grad():
        out = uncut(x, output_hidden_states=True)
        features = model.features(x)
    assert torch.allclose(features, out.hidden_states[2], atol=1e-5)
    # the encoder's LayerNorm acts before the layers here, so it stays, and nothing follows the last layer
    assert isinstance(model.backbone.encoder.layer_norm, nn.LayerNorm)
    assert torch.allclose(out.last_hidden_state, out.hidden_states[4], atol=1e-6)


def test_k_layer_model_keeps_exactly_k_layers():
    model = SERModel(tiny_backbone(), layers=3)
    assert len(model.backbone.encoder.layers) == 3
    assert model.backbone.config.num_hidden_layers == 3


@pytest.mark.parametrize("family, overrides", [(family, {}) for family in PRE_LN] + POST_LN,
                         ids=[f"{family}-pre-ln" for family in PRE_LN] + [f"{family}-post-ln" for family, _ in POST_LN])
def test_exactly_k_attention_output_dropouts_are_set_and_every_other_dropout_is_zero(family, overrides):
    model = SERModel(tiny_backbone(family, **REGULARISED, **overrides), layers=3, dropout=0.4)
    dropouts = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    set_ = [m for m in dropouts if m.p == 0.4]
    assert len(set_) == 3
    assert all(any(m is layer.dropout for layer in model.backbone.encoder.layers) for m in set_)
    assert all(m.p == 0.0 for m in dropouts if m.p != 0.4)
    assert all(layer.attention.dropout == 0.0 for layer in model.backbone.encoder.layers)
    assert model.backbone.config.layerdrop == 0.0
    assert model.backbone.config.apply_spec_augment is False


@pytest.mark.parametrize("family", FAMILIES)
def test_train_mode_forward_is_deterministic_without_dropout(family):
    # no layer drop, no time masking: with dropout 0 a training step sees the same features twice
    model = SERModel(tiny_backbone(family, **dict(REGULARISED, layerdrop=0.5, mask_time_prob=0.5)), layers=4,
                     dropout=0.0)
    model.train()
    x = torch.randn(2, 8000)
    assert torch.equal(model(x)[1], model(x)[1])


def padded_batch():
    """Two waveforms of 24,000 samples, the first valid on 16,000 of them."""
    x = torch.randn(2, 24000)
    mask = torch.ones(2, 24000, dtype=torch.long)
    mask[0, 16000:] = 0
    return x, mask


@pytest.mark.parametrize("pooling", ["avg", "first"])
@pytest.mark.parametrize("family", FAMILIES)
def test_changing_padded_samples_does_not_change_pooled_output(family, pooling):
    model = SERModel(tiny_backbone(family), layers=4, pooling=pooling).eval()
    x, mask = padded_batch()
    x_other = x.clone()
    x_other[0, 16000:] = 5 * torch.randn(8000)
    with torch.no_grad():
        z, logits = model(x, mask)
        z_other, logits_other = model(x_other, mask)
    assert torch.allclose(z, z_other, atol=1e-5) and torch.allclose(logits, logits_other, atol=1e-5)


@pytest.mark.parametrize("pooling", ["avg", "first"])
@pytest.mark.parametrize("family", PRE_LN)
def test_padded_item_has_the_pooled_output_it_has_alone(family, pooling):
    model = SERModel(tiny_backbone(family), layers=4, pooling=pooling).eval()
    x, mask = padded_batch()
    with torch.no_grad():
        z, _ = model(x, mask)
        z_alone, _ = model(x[:1, :16000])
    assert torch.allclose(z[0], z_alone[0], atol=1e-4)


def test_avg_pooling_is_zero_for_an_utterance_with_no_valid_frame():
    model = SERModel(tiny_backbone(), layers=2, pooling="avg").eval()
    mask = torch.ones(2, 8000, dtype=torch.long)
    mask[0, 300:] = 0  # fewer than 400 samples: no complete frame
    assert model.frame_mask(24, mask)[0].sum() == 0
    with torch.no_grad():
        z, _ = model(torch.randn(2, 8000), mask)
    assert torch.allclose(z[0], model.f0.bias) and torch.isfinite(z).all()


def test_normalize_waveform_ignores_gain_and_padding():
    model = SERModel(tiny_backbone(), layers=2, pooling="avg", normalize_waveform=True).eval()
    x = torch.randn(2, 16000)
    mask = torch.ones(2, 16000, dtype=torch.long)
    mask[1, 12000:] = 0
    other_padding = x.clone()
    other_padding[1, 12000:] = 7.0
    with torch.no_grad():
        z, _ = model(x, mask)
        z_scaled, _ = model(3 * x + 1, mask)
        z_padding, _ = model(other_padding, mask)
    assert torch.allclose(z, z_scaled, atol=1e-4)
    assert torch.allclose(z, z_padding, atol=1e-5)  # what the mask hides plays no part


def test_normalize_waveform_takes_its_mean_and_variance_over_the_valid_samples_only():
    model = SERModel(tiny_backbone(), layers=2, pooling="avg", normalize_waveform=True).eval()
    torch.manual_seed(3)
    x = 0.2 * torch.randn(12000) + 0.05
    batch = torch.full((2, 16000), 7.0)  # padding far from the item's own statistics
    batch[0, :12000], batch[1] = x, torch.randn(16000)
    mask = torch.ones(2, 16000, dtype=torch.long)
    mask[0, 12000:] = 0
    with torch.no_grad():
        z_batch, _ = model(batch, mask)
        z_alone, _ = model(x[None])
    torch.testing.assert_close(z_batch[0], z_alone[0], rtol=0, atol=1e-4)
    # the waveform itself (the model's layer norms forgive a wrong scale): mean 0 and variance 1 over the valid samples
    y = normalise(batch, mask)[0]
    assert abs(y[:12000].mean()) < 1e-5 and y[:12000].var(unbiased=False) == pytest.approx(1, abs=1e-4)
    assert not y[12000:].any()
    torch.testing.assert_close(y[:12000], normalise(x[None])[0], rtol=0, atol=1e-5)


def test_batch_of_two_different_length_waveforms_runs_forward_and_backward():
    model = SERModel(tiny_backbone(), layers=2).train()
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
    for p in (model.f0.weight, model.f1.weight, model.backbone.encoder.layers[0].attention.q_proj.weight,
              model.backbone.feature_extractor.conv_layers[0].conv.weight, center_loss.centers):
        assert p.grad is not None and p.grad.abs().sum() > 0


@pytest.mark.parametrize("name", TINY)
def test_tiny_backbone_frames_follow_large_front_end_400_sample_window_and_320_sample_hop(name):
    torch.manual_seed(0)
    model = SERModel(load_backbone(name), layers=1).eval()
    with torch.no_grad():
        assert model.features(torch.randn(1, 16000)).shape == (1, (16000 - 400) // 320 + 1, 64)  # 49 frames
        assert model.features(torch.randn(1, 400)).shape == (1, 1, 64)
    c = model.backbone.config
    assert c.model_type == TINY[name] == backbone_config(name).model_type
    assert backbone_config(name).num_hidden_layers == 4
    if c.model_type in PRE_LN:
        assert c.feat_extract_norm == "layer" and c.do_stable_layer_norm
    if name == "tiny":
        assert c.conv_bias  # as HuBERT-Large


@pytest.mark.parametrize("family", [family for family in FAMILIES if family != "wavlm"])
def test_eager_and_sdpa_attention_give_the_same_features(family):
    eager = SERModel(tiny_backbone(family, attn_implementation="eager"), layers=4).eval()
    sdpa = SERModel(tiny_backbone(family, attn_implementation="sdpa"), layers=4).eval()
    assert eager.backbone.config._attn_implementation == "eager"
    assert sdpa.backbone.config._attn_implementation == "sdpa"
    x = torch.randn(2, 12000)
    mask = torch.ones(2, 12000, dtype=torch.long)
    mask[1, 7000:] = 0
    with torch.no_grad():
        assert torch.allclose(eager.features(x, mask), sdpa.features(x, mask), atol=1e-5)


def test_wavlm_asked_for_sdpa_attention_gets_eager():
    torch.manual_seed(0)
    assert load_backbone("tiny-wavlm", attn_implementation="sdpa").config._attn_implementation == "eager"


@pytest.mark.parametrize("k", [0, -1, 5])
def test_layers_outside_one_to_num_layers_raise(k):
    with pytest.raises(ValueError):
        SERModel(tiny_backbone(), layers=k)


def test_unknown_pooling_raises():
    with pytest.raises(ValueError):
        SERModel(tiny_backbone(), pooling="max")


@pytest.mark.parametrize("family", FAMILIES)
def test_spec_rebuilds_a_model_that_loads_the_saved_state_dict_strictly_and_gives_the_same_logits(family, tmp_path):
    model = SERModel(tiny_backbone(family, **REGULARISED), layers=3, dropout=0.3, pooling="avg", num_classes=5,
                     normalize_waveform=True).eval()
    save_file(model.state_dict(), tmp_path / "best.safetensors")
    spec = json.loads(json.dumps(model.spec()))
    assert spec["backbone_config"]["num_hidden_layers"] == 3
    torch.manual_seed(1)  # other random weights than the saved ones
    rebuilt = model_from_spec(spec).eval()
    assert rebuilt.state_dict().keys() == model.state_dict().keys()
    rebuilt.load_state_dict(load_file(tmp_path / "best.safetensors"), strict=True)
    x = torch.randn(2, 12000)
    mask = torch.ones(2, 12000, dtype=torch.long)
    mask[1, 9000:] = 0
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x, mask)[1], model(x, mask)[1], rtol=0, atol=1e-6)
    assert json.loads(json.dumps(rebuilt.spec())) == spec


@pytest.fixture
def offline(monkeypatch):
    # HF_HUB_OFFLINE is read when huggingface_hub is imported: patch the constant too.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.mark.parametrize("load", [load_backbone, backbone_config])
@pytest.mark.parametrize("name", ["no-such-org/no-such-hubert", "/no/such/folder/hubert"])
def test_missing_backbone_raises_quickly_with_one_line_how_to_message(offline, name, load):
    start = time.time()
    with pytest.raises(BackboneError) as info:
        load(name)
    assert time.time() - start < 5
    message = str(info.value)
    assert name in message and "hf download facebook/hubert-large-ll60k" in message
    assert "--backbone" in message and "HF_HOME" in message and "--demo" in message
    assert "\n" not in message


@pytest.mark.parametrize("family", FAMILIES)
def test_load_backbone_from_local_folder_loads_the_weights_with_regularisation_off(offline, tmp_path, family):
    saved = tiny_backbone(family, **REGULARISED)
    saved.save_pretrained(tmp_path)
    assert backbone_config(str(tmp_path)).num_hidden_layers == 4
    backbone = load_backbone(str(tmp_path))
    assert type(backbone) is type(saved)
    c = backbone.config
    assert (c.hidden_dropout, c.attention_dropout, c.activation_dropout, c.feat_proj_dropout, c.layerdrop) == (0,) * 5
    assert c.apply_spec_augment is False
    assert c._attn_implementation == ("eager" if family == "wavlm" else "sdpa")  # WavLM has no SDPA attention
    assert all(m.p == 0.0 for m in backbone.modules() if isinstance(m, nn.Dropout))
    assert all(layer.attention.dropout == 0.0 for layer in backbone.encoder.layers)
    assert backbone.state_dict().keys() == saved.state_dict().keys()
    for name, tensor in saved.state_dict().items():
        assert torch.equal(backbone.state_dict()[name], tensor), name


def test_load_backbone_honours_eager_attention(offline, tmp_path):
    tiny_backbone().save_pretrained(tmp_path)
    assert load_backbone(str(tmp_path), attn_implementation="eager").config._attn_implementation == "eager"


def test_load_backbone_on_folder_without_checkpoint_raises_how_to_message(offline, tmp_path):
    with pytest.raises(BackboneError, match="exists but holds no loadable checkpoint"):
        load_backbone(str(tmp_path))


def test_folder_with_only_config_json_gives_its_config_but_no_backbone(offline, tmp_path):
    tiny_config("wavlm", num_hidden_layers=3).save_pretrained(tmp_path)
    assert backbone_config(str(tmp_path)).num_hidden_layers == 3
    with pytest.raises(BackboneError, match="exists but holds no loadable checkpoint"):
        load_backbone(str(tmp_path))


@pytest.mark.parametrize("load", [load_backbone, backbone_config])
def test_a_checkpoint_of_another_family_is_refused_in_one_line_naming_its_model_type(offline, tmp_path, load):
    BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                         vocab_size=100)).save_pretrained(tmp_path)
    with pytest.raises(BackboneError) as info:
        load(str(tmp_path))
    message = str(info.value)
    assert "'bert'" in message and all(family in message for family in FAMILIES) and "\n" not in message
