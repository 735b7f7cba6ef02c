"""The SER model of Fig. 1: HuBERT-Large cut to its first k self-attention
modules, attention-output dropout, pooling, and the projection module f0/f1.

Sec. 2.2 and 3.3 of the paper; REFERENCE.md for what the authors' script ran.
"""
import os

import huggingface_hub
import torch
import torch.nn as nn
from transformers import HubertConfig, HubertModel

DEFAULT_HUBERT = "facebook/hubert-large-ll60k"  # HuBERT-Large, Libri-Light 60k h (Sec. 2.2)

# The checkpoint's hub config turns on layer drop (0.1) and time masking, and
# HubertConfig defaults its dropouts to 0.1; the authors' model had none of
# them (REFERENCE.md).
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


class HubertLoadError(Exception):
    """HuBERT weights could not be loaded; the message says how to get them."""


def _hub_reachable(timeout=5.0):
    # One HEAD request without retries. from_pretrained retries five times with
    # back-off, which takes ~23 s to fail on a machine without internet.
    # get_session() honours proxies and HF_HUB_OFFLINE (it raises when offline).
    try:
        huggingface_hub.get_session().head(huggingface_hub.constants.ENDPOINT, timeout=timeout)
        return True
    except Exception:  # DNS failure, refused, timeout or offline mode: all mean "no hub"
        return False


def load_hubert(name_or_path=DEFAULT_HUBERT, attn_implementation="sdpa"):
    """A pretrained HubertModel from a hub id or a local folder, with every
    dropout, layer drop and time mask off (the authors' setting).

    The Hugging Face cache or the folder is tried first (no network), then the
    hub. attn_implementation ("sdpa", "eager", ...) is passed to transformers.
    """
    kwargs = dict(NO_REGULARISATION, attn_implementation=attn_implementation)
    try:
        return HubertModel.from_pretrained(name_or_path, local_files_only=True, **kwargs)
    except OSError as err:
        reason = str(err).splitlines()[0]
    if os.path.exists(name_or_path):
        where = f"'{name_or_path}' exists but holds no loadable HuBERT checkpoint ({reason})"
    elif not _hub_reachable():
        where = f"'{name_or_path}' is neither a local folder nor cached, and the hub is not reachable"
    else:
        try:
            return HubertModel.from_pretrained(name_or_path, **kwargs)
        except OSError as err:
            where = f"'{name_or_path}' could not be downloaded ({str(err).splitlines()[0]})"
    raise HubertLoadError(
        f"Cannot load HuBERT: {where}. On a machine with internet run "
        f"`hf download {DEFAULT_HUBERT} --local-dir hubert-large-ll60k` "
        f"(`huggingface-cli download {DEFAULT_HUBERT}` on older huggingface_hub), copy the folder here and pass "
        f"`--hubert hubert-large-ll60k`, or copy the Hugging Face cache and set HF_HOME to it. "
        f"`--demo` runs the whole pipeline without the weights, on a tiny random HuBERT."
    )


def tiny_hubert_config(**overrides):
    """HuBERT-Large's architecture (layer-norm conv front end with the same
    kernels and strides, pre-LayerNorm "stable" transformer, GELU) at a width
    that trains in seconds on a CPU. For --demo and the tests, random init."""
    config = dict(
        hidden_size=64,  # Large: 1024
        num_hidden_layers=4,  # Large: 24
        num_attention_heads=4,  # Large: 16
        intermediate_size=128,  # Large: 4096
        conv_dim=(32,) * 7,  # Large: 512 each
        conv_kernel=(10, 3, 3, 3, 3, 2, 2),  # as Large: 400-sample receptive field
        conv_stride=(5, 2, 2, 2, 2, 2, 2),  # as Large: 320-sample hop
        conv_bias=True,
        feat_extract_norm="layer",
        do_stable_layer_norm=True,
        feat_extract_activation="gelu",
        hidden_act="gelu",
        num_conv_pos_embeddings=16,  # Large: 128
        num_conv_pos_embedding_groups=4,  # Large: 16
        **NO_REGULARISATION,
    )
    config.update(overrides)
    return HubertConfig(**config)


class SERModel(nn.Module):
    """Fig. 1: emotional feature extractor (HuBERT cut to k layers) and
    projection module f0, f1.

    hubert: a HubertModel, cut in place (the model takes ownership of it).
    layers: k, 1-based as in the paper (Fig. 2: 22 of 24).
    dropout: attention-output ("projection") dropout of the k layers (Table 1: 0.4).
    pooling: "first" = F_e^0 (Sec. 2.2), "avg" = mean over valid frames (Table 2, row 1).
    normalize_waveform: zero mean / unit variance per utterance inside the model,
        as the checkpoint's feature extractor (do_normalize) would. Off by default:
        the authors only peak-normalise, on the data side.
    Shape comments use HuBERT-Large's width (1024); the tiny config has 64.
    """

    def __init__(self, hubert, layers=22, dropout=0.4, pooling="first", num_classes=4, normalize_waveform=False):
        super().__init__()
        num_layers = len(hubert.encoder.layers)
        if not 1 <= layers <= num_layers:
            raise ValueError(f"layers must be in 1..{num_layers} (1-based), got {layers}")
        if pooling not in ("first", "avg"):
            raise ValueError(f"pooling must be 'first' or 'avg', got {pooling!r}")
        self.pooling = pooling
        self.normalize_waveform = normalize_waveform

        # Only the first k layers exist, so only k are computed (the authors'
        # script ran all 24 and discarded two).
        hubert.encoder.layers = hubert.encoder.layers[:layers]
        hubert.config.num_hidden_layers = layers
        # The stable-layer-norm encoder (Large) applies a final LayerNorm after
        # its last layer; the authors' feature is layer k's output without it.
        # (The post-LN encoder of Base applies its LayerNorm before the layers.)
        if hubert.config.do_stable_layer_norm:
            hubert.encoder.layer_norm = nn.Identity()

        hubert.config.update(NO_REGULARISATION)  # layer drop and masking are read from the config at run time
        for module in hubert.modules():
            if isinstance(module, nn.Dropout):
                module.p = 0.0
        for layer in hubert.encoder.layers:
            layer.attention.dropout = 0.0  # dropout on the attention probabilities (a float, not a module)
            # The paper's "projection dropout" (Sec. 3.3, Table 1) sits between
            # multi-head self-attention and the feed-forward module: this
            # module. config.hidden_dropout would also set the feed-forward
            # output dropout and the one after the positional convolution,
            # which the authors kept at 0.
            layer.dropout.p = dropout
        self.hubert = hubert

        hidden = hubert.config.hidden_size
        self.f0 = nn.Linear(hidden, 64)  # z: the feature the center loss sees (Eq. 5)
        self.f1 = nn.Linear(64, num_classes)  # logits for the softmax of Eq. 4
        self.train()  # from_pretrained returns eval mode; start like any new module

    def frame_mask(self, num_frames, attention_mask):
        """(B, T) bool, True on frames computed from valid samples only; None without a mask."""
        if attention_mask is None:
            return None
        # The same conv length formula the encoder uses for its own mask;
        # clamped because fewer than 400 valid samples give no valid frame.
        lengths = self.hubert._get_feat_extract_output_lengths(attention_mask.sum(-1)).clamp(min=0)  # (B,)
        return torch.arange(num_frames, device=attention_mask.device) < lengths[:, None]  # (B, T)

    def features(self, waveforms, attention_mask=None):
        """F_e: (B, T, hidden) output of layer k, before the encoder's final LayerNorm."""
        if self.normalize_waveform:
            valid = torch.ones_like(waveforms) if attention_mask is None else attention_mask.to(waveforms.dtype)
            n = valid.sum(-1, keepdim=True).clamp(min=1)  # (B, 1)
            mean = (waveforms * valid).sum(-1, keepdim=True) / n
            var = ((waveforms - mean) ** 2 * valid).sum(-1, keepdim=True) / n
            waveforms = (waveforms - mean) / torch.sqrt(var + 1e-7) * valid  # padding stays 0
        return self.hubert(waveforms, attention_mask=attention_mask).last_hidden_state  # (B, T, 1024)

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
        logits = self.f1(z)  # (B, num_classes); no activation between f0 and f1 (REFERENCE.md)
        return z, logits
