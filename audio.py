"""Audio as the model takes it, in the authors' order (BACKGROUND.md, "Data pipeline"): read any
file as float32 mono at 16 kHz, cut to its first max_len samples, divide by the peak of that cut,
pad to HuBERT's receptive field; decode a corpus once into memory; the augmentation chains."""
import contextlib
import random
import warnings

import numpy as np
import soundfile as sf
import soxr
from tqdm import tqdm

from settings import MIN_SAMPLES, CorpusError

SAMPLE_RATE = 16_000


def header_seconds(path) -> float:
    """A file's length in seconds from its header, without decoding it; 0 when it cannot be read
    (the callers' own checks, or load_audio, then say why)."""
    try:
        return sf.info(str(path)).duration
    except Exception:
        return 0.0


def load_audio(path) -> np.ndarray:
    """An audio file (wav, flac, ogg, ...) as float32 mono at 16 kHz, whatever rate, channels
    or sample format it holds. A file holding NaN or infinite samples is refused, by name."""
    try:
        samples, rate = sf.read(path, dtype="float32", always_2d=True)  # (L, channels)
    except (sf.LibsndfileError, OSError, RuntimeError) as err:
        raise CorpusError(f"cannot read {path}: {err}") from None
    if not np.isfinite(samples).all():
        raise CorpusError(f"{path} holds NaN or infinite samples: a broken file, replace or remove it")
    samples = samples.mean(axis=1)
    if rate != SAMPLE_RATE:
        samples = soxr.resample(samples, rate, SAMPLE_RATE)
    return np.ascontiguousarray(samples, dtype=np.float32)


def peak_normalise(x) -> np.ndarray:
    """x / max|x|, as the authors did per utterance; silence stays silence."""
    peak = np.abs(x).max(initial=0.0)
    return x / peak if peak > 0 else x


def crop(x, max_len=100_000):
    """The first `max_len` samples (100,000 = 6.25 s in the paper)."""
    return x[:max_len]


def prepare(x, max_len=100_000) -> np.ndarray:
    """A waveform as the model sees it, in the authors' order: cropped to its first max_len
    samples, divided by the peak of that crop, zero-padded to at least MIN_SAMPLES (HuBERT's
    receptive field), float32. Training (train.UtteranceDataset) and predict.py both call it."""
    x = peak_normalise(crop(x, max_len))
    if len(x) < MIN_SAMPLES:
        x = np.pad(x, (0, MIN_SAMPLES - len(x)))
    return np.ascontiguousarray(x, dtype=np.float32)


def decode(utterances, cache=None) -> dict:
    """id -> the utterance's whole waveform as int16, scaled to its peak (a 4-class IEMOCAP
    takes ~0.8 GB). Every wav of a run is read once, here, before training starts, so a broken
    file stops the run before anything is written, and forked DataLoader workers share the
    result. The scale is undone by the peak normalisation after the crop; the rounding costs
    at most 1/32767 of the peak. An all-silent utterance is named in a warning."""
    cache = {} if cache is None else cache
    todo = [u for u in utterances if u.id not in cache]
    for u in tqdm(todo, desc="decoding audio", leave=False, disable=True if len(todo) < 500 else None):
        x = load_audio(u.wav)
        if not np.abs(x).max(initial=0.0) > 0:
            warnings.warn(f"{u.id} ({u.wav}) is silent: every sample is 0")
        cache[u.id] = np.round(peak_normalise(x) * 32767).astype(np.int16)
    return cache


def make_augmentation(name):
    """The waveform augmentation called `name`, or None for "none".

    "authors": the released script's chain, applied to 80% of the utterances.
    "paper": Sec. 3.4's list as a random combination (one to three of the nine, 80% of
    the time). The paper gives no ranges; audiomentations' defaults are used, with the
    authors' +/-10 dB for Gain. PitchShift keeps its default method, not
    librosa_phase_vocoder (30 s of numba compilation on first use).
    """
    if name == "none":
        return None
    import audiomentations as am  # imported here, when needed: it pulls in librosa, slow to import

    if name == "authors":
        return am.Compose([am.Gain(min_gain_db=-10, max_gain_db=10, p=0.3),
                           am.PolarityInversion(p=0.9)], p=0.8)
    if name == "paper":
        return am.SomeOf((1, 3), [
            am.AddGaussianNoise(p=1.0), am.ClippingDistortion(p=1.0),
            am.Gain(min_gain_db=-10, max_gain_db=10, p=1.0), am.GainTransition(p=1.0),
            am.PolarityInversion(p=1.0), am.TanhDistortion(p=1.0), am.TimeMask(p=1.0),
            am.TimeStretch(leave_length_unchanged=True, p=1.0), am.PitchShift(p=1.0),
        ], p=0.8)
    raise ValueError(f"unknown augmentation {name!r}: use none, authors or paper")


@contextlib.contextmanager
def seeded_global_rngs(*key):
    """audiomentations draws from `random` and numpy's global RNG and takes no generator,
    so seed both from `key` for the call and give the caller its own state back after."""
    saved = random.getstate(), np.random.get_state()
    seed = int(np.random.SeedSequence(key).generate_state(1)[0])
    random.seed(seed)
    np.random.seed(seed)
    try:
        yield
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
