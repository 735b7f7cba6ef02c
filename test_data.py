"""data.py, the training data pipeline: each utterance cropped, then divided by its crop's peak, padded, augmented as the authors did."""
import random

import numpy as np
import pytest
import soundfile as sf
import torch

import audio
from audio import crop, load_audio
from conftest import one_utterance
from iemocap import CLASSES
from data import UtteranceDataset


def test_dataset_pads_a_200_sample_utterance_to_400_with_a_warning(tmp_path):
    sf.write(tmp_path / "short.wav", np.full(200, 0.1), 16000, subtype="PCM_16")
    dataset = UtteranceDataset([one_utterance(tmp_path / "short.wav")])
    with pytest.warns(UserWarning, match="Ses01F_impro01_F000 has 200 samples"):
        x, length, label = dataset[0]
    assert x.shape == (400,) and length == 400 and label == CLASSES.index("neu")
    assert x[:200].eq(1).all() and x[200:].eq(0).all()


def test_crop_and_dataset_lengths_are_min_of_length_and_max_len(utterances):
    assert len(crop(np.zeros(150_000))) == 100_000 and len(crop(np.zeros(900))) == 900
    dataset = UtteranceDataset(utterances[:20], max_len=30_000)
    for i, u in enumerate(dataset.utterances):
        x, length, _ = dataset[i]
        frames = sf.info(u.wav).frames
        assert length == len(x) == min(frames, 30_000)
        assert x.abs().max() == 1  # the crop is normalised by its own peak (BACKGROUND.md, "Data pipeline")


@pytest.mark.parametrize("cached", [False, True])
def test_an_utterance_whose_peak_lies_after_the_cut_still_reaches_one(tmp_path, cached):
    x = np.concatenate([0.1 * np.sin(np.arange(20_000) / 5), 0.9 * np.ones(10_000)])  # loudest after 20,000
    sf.write(tmp_path / "late.wav", x, 16000, subtype="PCM_16")
    utterance = one_utterance(tmp_path / "late.wav")
    dataset = UtteranceDataset([utterance], max_len=20_000, cache=audio.decode([utterance]) if cached else None)
    served, length, _ = dataset[0]
    assert length == 20_000
    assert served.abs().max().item() == pytest.approx(1.0, abs=1e-4)  # crop, then divide by the crop's peak
    expected = x[:20_000] / np.abs(x[:20_000]).max()
    np.testing.assert_allclose(served.numpy(), expected, atol=2e-3)  # int16 file and cache: 1/32767 of the peak


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
