"""The SER model of Fig. 1 (Sec. 2.2 and 3.3): a self-supervised speech encoder
cut to its first k self-attention modules, attention-output dropout, pooling,
and the projection module f0/f1.

The paper's encoder is HuBERT-Large. Its relatives in transformers, wav2vec 2.0
(named beside HuBERT in Sec. 1), WavLM and data2vec-audio, have the same layout:
a conv front end, then `encoder.layers` of self-attention, dropout and
feed-forward. So any of the four can be the backbone.
"""
import os

import huggingface_hub
import torch
import torch.nn as nn
from transformers import MODEL_MAPPING, AutoConfig, AutoModel

from settings import DEFAULT_BACKBONE, FAMILIES, TINY, UserError

# Checkpoints' hub configs turn on layer drop (0.1) and time masking, and the
# configs default their dropouts to 0.1; the authors' script trained with none of them.
# apply_spec_augment=False switches masking off while keeping the checkpoint's
# masked_spec_embed weight, so loading reports no unexpected keys.
NO_REGULARISATION = dict(
    hidden_dropout=0.0,
    attention_dropout=0.0,
    activation_dropout=0.0,
    feat_proj_dropout=0.0,
    final_dropout=0.0,
    layerdrop=0.0,
    apply_spec_augment=False,
)


class BackboneError(UserError):
    """The backbone cannot be loaded, or is not of the wav2vec 2.0 family; the message is one line."""


def _hub_reachable(timeout=5.0):
    # One HEAD request without retries. from_pretrained retries five times with
    # back-off, which takes ~23 s to fail on a machine without internet.
    # get_session() honours proxies and HF_HUB_OFFLINE (it raises when offline).
    try:
        huggingface_hub.get_session().head(huggingface_hub.constants.ENDPOINT, timeout=timeout)
        return True
    except Exception:  # DNS failure, refused, timeout or offline mode: all mean "no hub"
        return False


def _first_line(err):
    return (str(err).splitlines() or [type(err).__name__])[0]


def _fetch(load, name_or_path):
    """load(local_files_only=True): the folder or the Hugging Face cache; else, when the
    hub answers, load(local_files_only=False). BackboneError saying how to get the weights."""
    try:
        return load(local_files_only=True)
    except (OSError, ValueError) as err:  # ValueError: a config.json transformers does not recognise
        reason = _first_line(err)
    if os.path.exists(name_or_path):
        where = f"'{name_or_path}' exists but holds no loadable checkpoint ({reason})"
    elif not _hub_reachable():
        where = f"'{name_or_path}' is neither a local folder nor cached, and the hub is not reachable"
    else:
        try:
            return load(local_files_only=False)
        except (OSError, ValueError) as err:
            where = f"'{name_or_path}' could not be downloaded ({_first_line(err)})"
    raise BackboneError(
        f"Cannot load the backbone: {where}. On a machine with internet run "
        f"`hf download {DEFAULT_BACKBONE} --local-dir hubert-large-ll60k` "
        f"(`huggingface-cli download {DEFAULT_BACKBONE}` on older huggingface_hub), copy the folder here and pass "
        f"`--backbone hubert-large-ll60k`, or copy the Hugging Face cache and set HF_HOME to it. "
        f"`--demo` runs the whole pipeline without the weights, on a tiny random HuBERT."
    )


def _check_family(config, name_or_path):
    if config.model_type not in FAMILIES:
        raise BackboneError(f"'{name_or_path}' is a {config.model_type!r} model; the backbone must be of the "
                            f"wav2vec 2.0 family, model_type one of {', '.join(FAMILIES)}")


def _attention(config, attn_implementation):
    # WavLM's attention adds a gated relative position bias through
    # F.multi_head_attention_forward: transformers has no SDPA version of it.
    if attn_implementation == "sdpa" and not MODEL_MAPPING[type(config)]._supports_sdpa:
        return "eager"
    return attn_implementation


def tiny_config(family="hubert", **overrides):
    """The Large architecture of `family` (layer-norm conv front end with the same
    kernels and strides, pre-LayerNorm "stable" transformer where the family has one,
    GELU) at a width that trains in seconds on a CPU. For --demo, the tests and the
    bench, random init. `overrides` are config fields."""
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {', '.join(FAMILIES)}, got {family!r}")
    config = dict(
        hidden_size=64,  # Large: 1024
        num_hidden_layers=4,  # Large: 24
        num_attention_heads=4,  # Large: 16
        intermediate_size=128,  # Large: 4096
        conv_dim=(32,) * 7,  # Large: 512 each
        conv_kernel=(10, 3, 3, 3, 3, 2, 2),  # as Large: 400-sample receptive field
        conv_stride=(5, 2, 2, 2, 2, 2, 2),  # as Large: 320-sample hop
        feat_extract_activation="gelu",
        hidden_act="gelu",
        num_conv_pos_embedding_groups=4,  # Large: 16
        **NO_REGULARISATION,
    )
    if family == "data2vec-audio":
        # Post-LN only, convs always layer-normed; its positional embedding is a stack of
        # 5 convolutions of kernel 19 (Large's too), not one wide convolution.
        config.update(conv_bias=False, num_conv_pos_embeddings=5, conv_pos_kernel_size=19)
    else:
        config.update(
            conv_bias=family != "wavlm",  # as each family's Large checkpoint
            feat_extract_norm="layer",
            do_stable_layer_norm=True,
            num_conv_pos_embeddings=16,  # kernel of the positional convolution; Large: 128
        )
    config.update(overrides)
    return AutoConfig.for_model(family, **config)


def backbone_config(name_or_path=DEFAULT_BACKBONE):
    """The transformers config of a hub id, a local folder or a TINY name, without its
    weights (a hub id fetches config.json only). BackboneError when it cannot be had
    or is not of the wav2vec 2.0 family."""
    if name_or_path in TINY:
        return tiny_config(TINY[name_or_path])
    config = _fetch(lambda **kw: AutoConfig.from_pretrained(name_or_path, **kw), name_or_path)
    _check_family(config, name_or_path)
    return config


def check_backbone(name_or_path, layers):
    """Before a run starts: the backbone's config can be had (its weights are not read) and it has
    at least `layers` layers."""
    try:
        num_layers = backbone_config(name_or_path).num_hidden_layers
    except BackboneError as e:
        raise BackboneError(f"--backbone {name_or_path}: {e}") from None
    if layers > num_layers:
        raise BackboneError(f"--layers {layers}: must be in 1..{num_layers}, the layers of --backbone {name_or_path}")


def load_backbone(name_or_path=DEFAULT_BACKBONE, attn_implementation="sdpa"):
    """The pretrained backbone from a hub id or a local folder, with every dropout,
    layer drop and time mask off (the authors' setting), in fp32 whatever the
    checkpoint stores (training keeps fp32 weights under autocast). A TINY name gives
    a random-init model: seed torch before the call.

    The Hugging Face cache or the folder is tried first (no network), then the hub.
    attn_implementation ("sdpa", "eager", ...) is passed to transformers; "sdpa"
    falls back to "eager" for a family without it (WavLM).
    """
    config = backbone_config(name_or_path)
    config.update(NO_REGULARISATION)
    attn_implementation = _attention(config, attn_implementation)
    if name_or_path in TINY:
        return AutoModel.from_config(config, attn_implementation=attn_implementation)
    return _fetch(lambda **kw: AutoModel.from_pretrained(
        name_or_path, config=config, attn_implementation=attn_implementation, dtype=torch.float32, **kw), name_or_path)


class SERModel(nn.Module):
    """Fig. 1: emotional feature extractor (the backbone cut to k layers) and
    projection module f0, f1.

    backbone: a model of FAMILIES (load_backbone), cut in place (the model takes ownership of it).
    layers: k, 1-based as in the paper (Fig. 2: 22 of 24).
    dropout: attention-output ("projection") dropout of the k layers (Table 1: 0.4).
    pooling: "first" = F_e^0 (Sec. 2.2), "avg" = mean over valid frames (Table 2, row 1).
    normalize_waveform: zero mean / unit variance per utterance inside the model,
        as the checkpoint's feature extractor (do_normalize) would. Off by default:
        the authors only peak-normalise, on the data side.
    Shape comments use Large's width (1024); the tiny configs have 64.
    """

    def __init__(self, backbone, layers=22, dropout=0.4, pooling="first", num_classes=4, normalize_waveform=False):
        super().__init__()
        _check_family(backbone.config, type(backbone).__name__)
        num_layers = len(backbone.encoder.layers)
        if not 1 <= layers <= num_layers:
            raise ValueError(f"layers must be in 1..{num_layers} (1-based), got {layers}")
        if pooling not in ("first", "avg"):
            raise ValueError(f"pooling must be 'first' or 'avg', got {pooling!r}")
        self.layers, self.dropout, self.pooling = layers, dropout, pooling
        self.num_classes, self.normalize_waveform = num_classes, normalize_waveform

        # Only the first k layers exist, so only k are computed (the authors'
        # script ran all 24 and discarded two). WavLM's first layer also holds the
        # relative position bias the others reuse: k >= 1 keeps it.
        backbone.encoder.layers = backbone.encoder.layers[:layers]
        backbone.config.num_hidden_layers = layers
        # The pre-LN ("stable layer norm") encoder of HuBERT, wav2vec 2.0 and WavLM
        # Large applies a final LayerNorm after its last layer; the authors' feature
        # is layer k's output without it. The post-LN encoder (data2vec-audio, Base
        # configs) applies its LayerNorm before the layers and each layer ends with
        # its own final_layer_norm, so there the cut encoder's output already is layer
        # k's output, the uncut model's hidden_states[k], and nothing is removed.
        if type(backbone.encoder).__name__.endswith("EncoderStableLayerNorm"):
            backbone.encoder.layer_norm = nn.Identity()

        backbone.config.update(NO_REGULARISATION)  # layer drop and masking are read from the config at run time
        for module in backbone.modules():
            if isinstance(module, nn.Dropout):
                module.p = 0.0
        for layer in backbone.encoder.layers:
            # Dropout on the attention probabilities: a float in every family (WavLM
            # passes it to F.multi_head_attention_forward), not a module.
            layer.attention.dropout = 0.0
            # The paper's "projection dropout" (Sec. 3.3, Table 1) sits between
            # multi-head self-attention and the feed-forward module: this
            # module, in pre-LN and post-LN layers of every family alike.
            # config.hidden_dropout would also set the feed-forward output
            # dropout and the one after the positional convolution, which the
            # authors kept at 0.
            layer.dropout.p = dropout
        self.backbone = backbone

        hidden = backbone.config.hidden_size
        self.f0 = nn.Linear(hidden, 64)  # z: the feature the center loss sees (Eq. 5)
        self.f1 = nn.Linear(64, num_classes)  # logits for the softmax of Eq. 4
        self.train()  # from_pretrained returns eval mode; start like any new module

    def spec(self):
        """JSON-serialisable description from which model_from_spec rebuilds this
        architecture without the hub or the checkpoint (config of the cut backbone)."""
        return dict(backbone_config=self.backbone.config.to_dict(), layers=self.layers, dropout=self.dropout,
                    pooling=self.pooling, num_classes=self.num_classes, normalize_waveform=self.normalize_waveform)

    def frame_mask(self, num_frames, attention_mask):
        """(B, T) bool, True on frames computed from valid samples only; None without a mask."""
        if attention_mask is None:
            return None
        # The same conv length formula the encoder uses for its own mask;
        # clamped because fewer than 400 valid samples give no valid frame.
        lengths = self.backbone._get_feat_extract_output_lengths(attention_mask.sum(-1)).clamp(min=0)  # (B,)
        return torch.arange(num_frames, device=attention_mask.device) < lengths[:, None]  # (B, T)

    def features(self, waveforms, attention_mask=None):
        """F_e: (B, T, hidden) output of layer k, before a pre-LN encoder's final LayerNorm."""
        if self.normalize_waveform:
            waveforms = normalise(waveforms, attention_mask)
        return self.backbone(waveforms, attention_mask=attention_mask).last_hidden_state  # (B, T, 1024)

    def forward(self, waveforms, attention_mask=None):
        """waveforms (B, L) float, attention_mask (B, L) 1 on samples, 0 on padding -> (z, logits)."""
        F_e = self.features(waveforms, attention_mask)  # (B, T, 1024)
        if self.pooling == "first":
            pooled = F_e[:, 0]  # (B, 1024): F_e^0
        else:
            mask = self.frame_mask(F_e.shape[1], attention_mask)
            if mask is None:
                pooled = F_e.mean(1)  # (B, 1024)
            else:
                mask = mask.unsqueeze(-1).to(F_e.dtype)  # (B, T, 1)
                pooled = (F_e * mask).sum(1) / mask.sum(1).clamp(min=1)  # (B, 1024)
        z = self.f0(pooled)  # (B, 64)
        logits = self.f1(z)  # (B, num_classes); no activation between f0 and f1, as the authors' script
        return z, logits


def normalise(waveforms, attention_mask=None):
    """Zero mean and unit variance per utterance, over its valid samples only, as the checkpoint's
    feature extractor (do_normalize) would; padding stays 0. (B, L) -> (B, L)."""
    valid = torch.ones_like(waveforms) if attention_mask is None else attention_mask.to(waveforms.dtype)
    n = valid.sum(-1, keepdim=True).clamp(min=1)  # (B, 1)
    mean = (waveforms * valid).sum(-1, keepdim=True) / n
    var = ((waveforms - mean) ** 2 * valid).sum(-1, keepdim=True) / n
    return (waveforms - mean) / torch.sqrt(var + 1e-7) * valid


def model_from_spec(spec, attn_implementation="sdpa"):
    """A random-init SERModel of the architecture SERModel.spec() described: its
    state_dict has the same keys, so saved weights load with strict=True."""
    config = dict(spec["backbone_config"])
    config = AutoConfig.for_model(config.pop("model_type"), **config)
    _check_family(config, "the spec's backbone_config")
    backbone = AutoModel.from_config(config, attn_implementation=_attention(config, attn_implementation))
    return SERModel(backbone, layers=spec["layers"], dropout=spec["dropout"], pooling=spec["pooling"],
                    num_classes=spec["num_classes"], normalize_waveform=spec["normalize_waveform"])
