"""The suite's tests: CPU only, no downloads, a tiny random HuBERT and the synthetic replica.

Run with `python -m pytest -q test_smoke.py`."""

import copy
import dataclasses
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import HubertModel

import bench
import iemocap
import reproduce
from iemocap import (CLASSES, IemocapError, Utterance, UtteranceDataset, check_iemocap, count_utterances, crop,
                     load_audio, make_synthetic_iemocap, peak_normalise, read_iemocap, read_split, split_fold,
                     write_split)
from losses import CenterLoss, joint_loss, label_adaptive_targets, mix_waveforms, mixup_targets, recognition_loss
from model import HubertLoadError, SERModel, load_hubert, tiny_hubert_config


# ==== iemocap.py: reading, checking, folds, audio, the synthetic replica ====

HERE = Path(__file__).parent


@pytest.fixture(scope="session")
def replica(tmp_path_factory):
    return make_synthetic_iemocap(tmp_path_factory.mktemp("iemocap") / "IEMOCAP_full_release")


@pytest.fixture(scope="session")
def written(replica):
    """The generator's own record of what it wrote: {id: (code, speaker, samples)}."""
    lines = (replica / "synthetic_manifest.tsv").read_text().splitlines()[1:]
    return {uid: (code, speaker, int(n)) for uid, code, speaker, n in
            (line.split("\t") for line in lines)}


@pytest.fixture(scope="session")
def utterances(replica):
    return read_iemocap(replica)


def four_class(written):
    """{id: (label, speaker)} of the written utterances the paper keeps, exc counted as hap."""
    label = {"exc": "hap", "hap": "hap", "ang": "ang", "sad": "sad", "neu": "neu"}
    return {uid: (label[code], speaker) for uid, (code, speaker, _) in written.items()
            if code in label}


def expected_counts(written):
    kept = four_class(written)
    return {"total": len(kept),
            "sessions": {s: sum(uid[4] == str(s) for uid in kept) for s in range(1, 6)},
            "classes": {c: sum(label == c for label, _ in kept.values()) for c in CLASSES}}


def linked_copy(replica, tmp_path):
    """A copy of the replica made of hard links: cheap, and safe to delete files from."""
    return Path(shutil.copytree(replica, tmp_path / "copy", copy_function=os.link))


def cli(script, *args, timeout=600):
    """Run a script of the suite as a user would; returns the CompletedProcess."""
    return subprocess.run([sys.executable, str(HERE / script), *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=timeout)


# ---- Reading ----

def test_reader_counts_match_what_the_generator_wrote(utterances, written):
    kept = four_class(written)
    assert sorted(u.id for u in utterances) == sorted(kept)
    assert count_utterances(utterances) == expected_counts(written)
    assert Counter((u.label, u.speaker) for u in utterances) == Counter(kept.values())


def test_reader_merges_exc_into_hap(utterances, written):
    codes = {uid: code for uid, (code, _, _) in written.items()}
    labels = {u.id: u.label for u in utterances}
    exc = [uid for uid, code in codes.items() if code == "exc"]
    hap = [uid for uid, code in codes.items() if code == "hap"]
    assert exc and hap
    assert {labels[uid] for uid in exc + hap} == {"hap"}


def test_reader_drops_codes_outside_the_four_classes(utterances, written):
    others = {uid for uid, (code, _, _) in written.items()
              if code not in ("ang", "hap", "exc", "sad", "neu")}
    assert {written[uid][0] for uid in others} >= {"xxx", "fru", "sur", "fea"}
    assert not others & {u.id for u in utterances}


def test_reader_takes_the_speaker_from_the_utterance_suffix_not_the_dialog(utterances):
    crossed = [u for u in utterances if u.id[5] != u.id.rsplit("_", 1)[1][0]]
    assert crossed
    assert all(u.speaker == u.id[:5] + u.id.rsplit("_", 1)[1][0] for u in utterances)
    assert len({u.speaker for u in utterances}) == 10


def test_reader_fills_dialog_wav_times_and_improvised(utterances, replica):
    u = next(u for u in utterances if "impro05b" in u.id)
    assert u.dialog == u.id.rsplit("_", 1)[0] and u.improvised
    assert Path(u.wav) == replica / f"Session{u.session}/sentences/wav/{u.dialog}/{u.id}.wav"
    assert any(u.dialog.endswith("script01_1b") and not u.improvised for u in utterances)
    assert all(u.end > u.start for u in utterances)


def test_reader_ignores_appledouble_files_and_annotator_subfolders(replica, utterances, tmp_path):
    copy = linked_copy(replica, tmp_path)
    emo = copy / "Session1/dialog/EmoEvaluation"
    assert (emo / "._Ses01F_impro01.txt").read_bytes()[:4] == b"\x00\x05\x16\x07"
    # A label file inside a per-annotator folder would double Session 1 if it were read.
    for sub in ("Categorical", "Attribute", "Self-evaluation"):
        (emo / sub).mkdir(exist_ok=True)
        for label_file in emo.glob("Ses01*.txt"):
            shutil.copy(label_file, emo / sub / label_file.name)
    assert [u.id for u in read_iemocap(copy)] == [u.id for u in utterances]


def test_reader_refuses_a_missing_or_empty_root(tmp_path):
    with pytest.raises(IemocapError, match="not a folder"):
        read_iemocap(tmp_path / "nowhere")
    with pytest.raises(IemocapError, match="EmoEvaluation"):
        read_iemocap(tmp_path)


def test_replica_wavs_hold_end_minus_start_samples_at_16k_mono_int16(utterances, written):
    for u in utterances[::7]:
        info = sf.info(u.wav)
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        assert info.frames == written[u.id][2] == round((u.end - u.start) * 16000)


def test_replica_is_deterministic_for_a_seed(tmp_path):
    a = make_synthetic_iemocap(tmp_path / "a", utterances_per_speaker=4, seed=3)
    b = make_synthetic_iemocap(tmp_path / "b", utterances_per_speaker=4, seed=3)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)


# ---- Checking ----

def test_check_passes_a_tree_with_the_expected_counts(replica, utterances, written):
    assert check_iemocap(replica, utterances, expected=expected_counts(written)) == []


def test_check_names_a_removed_wav(replica, utterances, written, tmp_path):
    copy = linked_copy(replica, tmp_path)
    gone = read_iemocap(copy)[10]
    os.remove(gone.wav)
    problems = check_iemocap(copy, read_iemocap(copy), expected=expected_counts(written))
    assert problems == [f"1 wav files are missing, e.g. {Path(gone.wav).relative_to(copy)}"]


def test_check_reports_a_missing_session(replica, written, tmp_path):
    copy = linked_copy(replica, tmp_path)
    shutil.rmtree(copy / "Session3")
    problems = check_iemocap(copy, read_iemocap(copy), expected=expected_counts(written))
    assert any(p.startswith("Session3 is missing") for p in problems)
    assert any(p.startswith("total:") for p in problems)


def test_cli_exits_2_with_one_line_and_no_traceback_on_a_wrong_root(tmp_path):
    result = cli("iemocap.py", tmp_path / "nowhere", timeout=120)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"error: {tmp_path / 'nowhere'} is not a folder; "
                                          "pass the path of IEMOCAP_full_release/"]
    assert result.stdout == ""


def test_cli_exits_2_with_one_line_on_an_empty_root(tmp_path, capsys):
    assert iemocap.main([str(tmp_path)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1 and "EmoEvaluation" in err


def test_cli_exits_1_and_lists_differences_on_the_replica(replica):
    result = cli("iemocap.py", replica, timeout=120)
    assert result.returncode == 1
    assert "Ses05M" in result.stdout and "hours of audio" in result.stdout
    assert "total: 400 utterances, expected 5531" in result.stdout


def test_cli_exits_0_when_the_counts_match(replica, written, monkeypatch, capsys):
    monkeypatch.setattr(iemocap, "PUBLISHED", expected_counts(written))
    assert iemocap.main([str(replica)]) == 0
    assert "matches the published counts" in capsys.readouterr().out


# ---- Folds ----

def test_folds_are_disjoint_and_cover_every_utterance(utterances):
    for fold in range(1, 6):
        split = split_fold(utterances, fold)
        ids = [u.id for part in split.values() for u in part]
        assert sorted(ids) == sorted(u.id for u in utterances)


def test_fold_k_tests_on_exactly_session_k(utterances):
    for fold in range(1, 6):
        split = split_fold(utterances, fold)
        assert {u.id for u in split["test"]} == {u.id for u in utterances if u.session == fold}
        assert all(u.session != fold for u in split["train"] + split["val"])


def test_validation_is_a_class_stratified_tenth_of_the_training_sessions(utterances):
    split = split_fold(utterances, 5)
    pool = split["train"] + split["val"]
    assert len(split["val"]) == round(0.1 * len(pool))
    pool_share = Counter(u.label for u in pool)
    val_share = Counter(u.label for u in split["val"])
    for c in CLASSES:
        assert abs(val_share[c] - 0.1 * pool_share[c]) <= 1
    assert split_fold(utterances, 5, val_fraction=0)["val"] == []


def test_split_is_deterministic_per_seed_and_differs_across_seeds(utterances):
    assert split_fold(utterances, 2, seed=1) == split_fold(utterances, 2, seed=1)
    assert split_fold(utterances, 2, seed=1)["val"] != split_fold(utterances, 2, seed=2)["val"]


def test_written_split_reads_back_as_the_same_ids(utterances, tmp_path):
    split = split_fold(utterances, 4, seed=7)
    write_split(split, tmp_path / "run")
    assert read_split(tmp_path / "run") == {k: [u.id for u in v] for k, v in split.items()}


# ---- Audio ----

def one_utterance(wav, uid="Ses01F_impro01_F000"):
    return Utterance(uid, 1, "Ses01F", "neu", 0.0, 1.0, str(wav), "Ses01F_impro01", True)


def test_load_audio_turns_44k_stereo_int16_into_16k_mono_float32(tmp_path):
    t = np.arange(44100) / 44100
    left = 0.5 * np.sin(2 * np.pi * 440 * t)
    sf.write(tmp_path / "a.wav", np.stack([left, np.zeros_like(left)], axis=1), 44100,
             subtype="PCM_16")
    x = load_audio(tmp_path / "a.wav")
    assert x.dtype == np.float32 and x.shape == (16000,)
    assert abs(np.abs(x[1000:-1000]).max() - 0.25) < 0.01  # the two channels averaged


@pytest.mark.parametrize("subtype", ["PCM_32", "FLOAT"])
def test_load_audio_reads_int32_and_float_files(tmp_path, subtype):
    samples = np.linspace(-0.5, 0.5, 800)
    sf.write(tmp_path / "a.wav", samples, 16000, subtype=subtype)
    assert np.allclose(load_audio(tmp_path / "a.wav"), samples, atol=1e-6)


def test_dataset_pads_a_200_sample_utterance_to_400_with_a_warning(tmp_path):
    sf.write(tmp_path / "short.wav", np.full(200, 0.1), 16000, subtype="PCM_16")
    dataset = UtteranceDataset([one_utterance(tmp_path / "short.wav")])
    with pytest.warns(UserWarning, match="Ses01F_impro01_F000 has 200 samples"):
        x, length, label = dataset[0]
    assert x.shape == (400,) and length == 400 and label == CLASSES.index("neu")
    assert x[:200].eq(1).all() and x[200:].eq(0).all()


def test_peak_normalise_gives_max_abs_one_and_leaves_silence_alone():
    x = np.array([0.1, -0.4, 0.2], dtype=np.float32)
    assert np.abs(peak_normalise(x)).max() == 1
    assert not peak_normalise(np.zeros(5, dtype=np.float32)).any()


def test_crop_and_dataset_lengths_are_min_of_length_and_max_len(utterances):
    assert len(crop(np.zeros(150_000))) == 100_000 and len(crop(np.zeros(900))) == 900
    dataset = UtteranceDataset(utterances[:20], max_len=30_000)
    for i, u in enumerate(dataset.utterances):
        x, length, _ = dataset[i]
        frames = sf.info(u.wav).frames
        assert length == len(x) == min(frames, 30_000)
        # The peak is the whole utterance's (normalise, then crop), as in REFERENCE.md.
        assert x.abs().max() == 1 if frames <= 30_000 else x.abs().max() <= 1


@pytest.mark.parametrize("name", ["authors", "paper"])
def test_augmentation_is_identical_for_the_same_seed_epoch_and_index(utterances, name):
    first = UtteranceDataset(utterances[:12], augment=name, seed=5)
    other_worker = UtteranceDataset(utterances[:12], augment=name, seed=5)
    first.set_epoch(2)
    other_worker.set_epoch(2)
    random.seed(0)
    for i in range(12):
        x, length, _ = first[i]
        assert x.dtype == torch.float32
        assert len(x) == length == len(load_audio(first.utterances[i].wav))
        assert x.equal(other_worker[i][0])
    assert random.random() == random.Random(0).random()  # the caller's RNG is left alone
    first.set_epoch(3)
    assert any(not first[i][0].equal(other_worker[i][0]) for i in range(12))


# ==== losses.py and model.py: Eq. 1-6 against hand-computed numbers, the cut HuBERT ====

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


# ==== reproduce.py and ablate.py through their command lines ====

@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("small") / "corpus"
    iemocap.make_synthetic_iemocap(root, utterances_per_speaker=8)
    return root


def test_demo_learns_emotion_from_sound_and_shuffled_labels_stay_at_chance(replica, tmp_path):
    real = cli("reproduce.py", "--demo", "--fold", "5", "--demo-corpus", replica, "--out", tmp_path / "real")
    assert real.returncode == 0, real.stderr[-2000:]
    results = json.loads((tmp_path / "real" / "results.json").read_text())
    assert [f["fold"] for f in results["folds"]] == [5]
    assert results["mean"]["ua"] >= 0.60, real.stdout
    assert set(results) >= {"folds", "mean", "std"} and set(results["mean"]) == {"wa", "ua"}
    assert (tmp_path / "real" / "fold5" / "best.safetensors").exists()
    assert not (tmp_path / "real" / "fold5" / "state.pt").exists()

    control = cli("reproduce.py", "--demo", "--fold", "5", "--demo-corpus", replica, "--out", tmp_path / "control",
                  "--shuffle-labels")
    assert control.returncode == 0, control.stderr[-2000:]
    ua = json.loads((tmp_path / "control" / "results.json").read_text())["mean"]["ua"]
    assert ua <= 0.45, control.stdout


def test_resumed_run_ends_with_the_numbers_of_an_uninterrupted_one(small_corpus, tmp_path):
    args = ["--demo", "--fold", "2", "--demo-corpus", small_corpus, "--epochs", "3", "--patience", "3",
            "--max-len", "16000"]
    whole = cli("reproduce.py", *args, "--out", tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr[-2000:]

    proc = subprocess.Popen([sys.executable, str(HERE / "reproduce.py"), *map(str, args), "--out", tmp_path / "cut"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in proc.stdout:
        if "epoch   1" in line:  # printed once the state of epoch 1 is on disk
            proc.kill()
            break
    proc.wait()
    assert (tmp_path / "cut" / "fold2" / "state.pt").exists()
    assert not (tmp_path / "cut" / "results.json").exists()

    again = cli("reproduce.py", *args, "--out", tmp_path / "cut")
    assert again.returncode == 2 and "--resume" in again.stderr
    resumed = cli("reproduce.py", *args, "--out", tmp_path / "cut", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed after epoch 1" in resumed.stdout
    a = json.loads((tmp_path / "whole" / "results.json").read_text())
    b = json.loads((tmp_path / "cut" / "results.json").read_text())
    assert a == b
    history = lambda run: [{k: v for k, v in row.items() if k not in ("seconds", "audio_per_s")}
                           for row in json.loads((tmp_path / run / "fold2" / "metrics.json").read_text())["history"]]
    assert history("whole") == history("cut")


def run_main(argv, capsys):
    code = reproduce.main([str(a) for a in argv])
    return code, capsys.readouterr().err


def test_no_corpus_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("IEMOCAP_ROOT", raising=False)
    code, err = run_main(["--out", tmp_path / "r"], capsys)
    assert code == 2 and "--iemocap" in err and "--demo" in err and err.count("\n") == 1


def test_a_folder_that_is_not_iemocap_is_refused(tmp_path, capsys):
    (tmp_path / "not_iemocap").mkdir()
    code, err = run_main(["--iemocap", tmp_path / "not_iemocap", "--out", tmp_path / "r"], capsys)
    assert code == 2 and "not_iemocap" in err and err.count("\n") == 1


def test_a_copy_with_other_counts_is_refused_without_allow_incomplete(small_corpus, tmp_path, capsys):
    code, err = run_main(["--iemocap", small_corpus, "--out", tmp_path / "r"], capsys)
    assert code == 2 and "--allow-incomplete" in err and "differs" in err


def test_an_unreadable_wav_is_named(small_corpus, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(small_corpus, copy)
    victim = sorted(copy.glob("Session1/sentences/wav/*/*.wav"))[0]
    victim.write_bytes(b"not a wav at all")
    code, err = run_main(["--iemocap", copy, "--allow-incomplete", "--hubert", "tiny", "--layers", "2",
                          "--workers", "0", "--fold", "1", "--out", tmp_path / "r"], capsys)
    assert code == 2 and victim.name in err


def test_missing_hubert_weights_say_how_to_get_them(small_corpus, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, err = run_main(["--iemocap", small_corpus, "--allow-incomplete", "--hubert", tmp_path / "no_such_folder",
                          "--workers", "0", "--fold", "1", "--out", tmp_path / "r"], capsys)
    assert code == 2 and "download" in err and "--demo" in err


def test_a_nan_loss_stops_the_fold_with_a_message(small_corpus, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(reproduce, "recognition_loss", lambda logits, targets: logits.sum() * float("nan"))
    code, err = run_main(["--demo", "--demo-corpus", small_corpus, "--fold", "1", "--epochs", "1", "--max-len", "8000",
                          "--out", tmp_path / "r"], capsys)
    assert code == 1 and "the loss became nan" in err
    assert not (tmp_path / "r" / "results.json").exists()


def test_bad_fold_is_refused(tmp_path, capsys):
    code, err = run_main(["--demo", "--fold", "6", "--out", tmp_path / "r"], capsys)
    assert code == 2 and "--fold" in err


def test_layer_sweep_writes_table_csv_and_plot_and_skips_finished_cells(small_corpus, tmp_path):
    args = ["--demo", "--demo-corpus", small_corpus, "--layers", "1", "2", "--epochs", "1", "--max-len", "16000",
            "--out", tmp_path / "abl"]
    first = cli("ablate.py", *args)
    assert first.returncode == 0, first.stderr[-2000:]
    table = (tmp_path / "abl" / "ablation.md").read_text()
    assert "| layers | WA (%) | UA (%)" in table and table.count("\n| 1 |") == 1 and table.count("\n| 2 |") == 1
    rows = (tmp_path / "abl" / "ablation.csv").read_text().splitlines()
    assert rows[0].startswith("layers,wa_mean") and len(rows) == 3
    assert (tmp_path / "abl" / "ablation_layers.png").read_bytes()[:4] == b"\x89PNG"
    for k in (1, 2):
        cfg = json.loads((tmp_path / "abl" / f"layers-{k}" / "seed0" / "config.json").read_text())["config"]
        assert cfg["layers"] == k and cfg["epochs"] == 1 and cfg["val_fraction"] == 0.0 and cfg["mixup"] == "none"

    second = cli("ablate.py", *args)
    assert second.returncode == 0, second.stderr[-2000:]
    assert second.stdout.count("finished earlier") == 2 and "epoch   1" not in second.stdout


def test_table2_runs_its_seven_rows_with_the_paper_settings(small_corpus, tmp_path):
    done = cli("ablate.py", "--demo", "--demo-corpus", small_corpus, "--table2", "--epochs", "1", "--max-len", "8000",
               "--layers", "1", "--out", tmp_path / "t2")
    assert done.returncode == 0, done.stderr[-2000:]
    cells = sorted((tmp_path / "t2").glob("*/seed0/config.json"))
    settings = {tuple(json.loads(p.read_text())["config"][k] for k in ("pooling", "mixup", "center_weight", "augment",
                                                                       "val_fraction"))
                for p in cells}
    assert settings == {("avg", "none", 0.0, "none", 0.1), ("first", "none", 0.0, "none", 0.1),
                        ("first", "conventional", 0.0, "authors", 0.1), ("first", "adaptive", 0.0, "authors", 0.1),
                        ("first", "adaptive", 0.0005, "authors", 0.1), ("first", "adaptive", 0.001, "authors", 0.1),
                        ("first", "adaptive", 0.002, "authors", 0.1)}
    table = (tmp_path / "t2" / "ablation.md").read_text()
    assert table.count("\n| ") == 8 and "74.86" in table and "70.91" in table  # header + 7 rows, paper beside ours


# ==== bench.py: the fast path computes what the default path computes ====

CPU = torch.device("cpu")
# 1 s items and max_len 1 s: fixed padding adds nothing, so both paths see the same samples
DEFAULT = reproduce.Config(padding="fixed", max_len=16_000, precision="fp32")
FAST = reproduce.Config(padding="dynamic", max_len=16_000, precision="bf16")


def tiny_model(pooling="first"):
    torch.manual_seed(0)
    return SERModel(HubertModel(tiny_hubert_config()), layers=3, pooling=pooling).eval()  # eval: no dropout


def run(model, waves, cfg):
    """(z, logits) in fp32 for waveforms padded and autocast as reproduce.py does under cfg."""
    x, mask = reproduce.pad(waves, [len(w) for w in waves], cfg)
    with torch.no_grad(), reproduce.autocast(cfg, CPU):
        z, logits = model(x, mask)
    return z.float(), logits.float()


def test_fast_bf16_logits_equal_default_fp32_logits_within_bf16_tolerance_on_an_unpadded_batch():
    torch.manual_seed(1)
    waves = [0.1 * torch.randn(16_000) for _ in range(3)]
    model = tiny_model()
    _, default = run(model, waves, DEFAULT)
    _, fast = run(model, waves, FAST)
    assert not torch.equal(fast, default)  # bf16 did run
    # bf16 keeps 8 bits of mantissa (rtol 1.6e-2 is torch's own bf16 tolerance); logits near 0
    # need an absolute bound, 2% of the largest logit
    torch.testing.assert_close(fast, default, rtol=1.6e-2, atol=0.02 * default.abs().max().item())


def test_dynamic_padding_with_an_all_ones_mask_equals_fixed_padding_without_mask_in_fp32():
    torch.manual_seed(1)
    waves = [0.1 * torch.randn(16_000) for _ in range(3)]
    model = tiny_model()
    assert reproduce.pad(waves, [16_000] * 3, FAST)[1].all()  # the fast path does pass a mask, of ones
    z, logits = run(model, waves, DEFAULT)
    z_fast, logits_fast = run(model, waves, dataclasses.replace(FAST, precision="fp32"))
    torch.testing.assert_close(z_fast, z, rtol=0, atol=1e-5)
    torch.testing.assert_close(logits_fast, logits, rtol=0, atol=1e-5)


@pytest.mark.parametrize("pooling", ["first", "avg"])
def test_an_unpadded_item_has_the_same_pooled_feature_alone_and_beside_a_longer_neighbour(pooling):
    torch.manual_seed(2)
    item, neighbour = 0.1 * torch.randn(12_345), 0.1 * torch.randn(30_000)
    model = tiny_model(pooling)
    fp32 = dataclasses.replace(FAST, precision="fp32", max_len=100_000)
    z_alone, logits_alone = run(model, [item], fp32)
    z_batch, logits_batch = run(model, [item, neighbour], fp32)  # item padded by 17,655 masked zeros
    torch.testing.assert_close(z_batch[:1], z_alone, rtol=0, atol=1e-5)
    torch.testing.assert_close(logits_batch[:1], logits_alone, rtol=0, atol=1e-5)


def test_flop_count_of_one_more_layer_is_six_per_matmul_weight_per_frame_plus_attention():
    config = tiny_hubert_config()
    layer = HubertModel(config).encoder.layers[0]
    weights = sum(m.weight.numel() for m in layer.modules() if isinstance(m, torch.nn.Linear))  # Q, K, V, O, FF
    T = (16_000 - 400) // 320 + 1
    extra = bench.train_flops(config, 2, 16_000) - bench.train_flops(config, 1, 16_000)
    assert extra == 3 * (2 * T * weights + 4 * T * T * config.hidden_size)


def test_bench_quick_runs_and_its_last_line_is_the_speedup(tmp_path):
    done = cli("bench.py", "--quick", "--corpus", tmp_path / "replica", timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert re.fullmatch(r"speedup fast/authors: \d+\.\d\dx on .+", lines[-1]), lines[-1]
    header = max(k for k, line in enumerate(lines) if line.startswith("| variant |"))  # the table just before it
    rows = [line.split(" | ")[0].strip("| ") for line in lines[header + 2:-1]]
    assert rows[:2] == ["authors", "default"] and rows[-1] == "fast" and set(rows) <= {"authors", "default", "fast fp32", "fast"}


def test_authors_model_and_suite_model_of_the_bench_compute_the_same_logits_on_the_same_weights():
    authors = bench.build("authors", {}, 3, CPU).eval()  # all 4 layers run, hidden_states[3] taken
    suite = bench.build("suite", {}, 3, CPU).eval()  # 3 layers
    assert len(authors.hubert.encoder.layers) == 4 and len(suite.hubert.encoder.layers) == 3
    x = 0.1 * torch.randn(2, 20_000)
    with torch.no_grad():
        torch.testing.assert_close(authors(x)[1], suite(x)[1], rtol=0, atol=1e-5)
