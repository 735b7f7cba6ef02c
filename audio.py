"""Audio as the model takes it, in the authors' order (BACKGROUND.md, "Data pipeline"): read any
file as float32 mono at 16 kHz, cut to its first max_len samples, divide by the peak of that cut,
pad to HuBERT's receptive field; decode a corpus once into memory; the augmentation chains.

soundfile (libsndfile) reads wav, flac, ogg and mp3; what it cannot read (mp4, m4a, avi, webm, mkv,
aac, ...) is read by FFmpeg through PyAV: the first audio stream of the container (docs/corpora.md)."""
import contextlib
import os
import random
import struct
import warnings

import numpy as np
import soundfile as sf
import soxr
from tqdm import tqdm

from settings import MIN_SAMPLES, CorpusError

SAMPLE_RATE = 16_000
CUT_SHORT = 0.1  # seconds a file may decode short of its declared length (codecs' frames, rounding)


def header_seconds(path) -> float:
    """A file's length in seconds from its header, without decoding it (a container's: its first
    audio stream's, else the container's); 0 when it cannot be read (the callers' own checks, or
    load_audio, then say why)."""
    try:
        return sf.info(str(path)).duration
    except Exception:
        pass
    try:
        import av
        with av.open(str(path)) as container:
            stream = container.streams.audio[0]
            if stream.duration is not None:
                return float(stream.duration * stream.time_base)
            return (container.duration or 0) / av.time_base
    except Exception:
        return 0.0


def load_audio(path, part=None) -> np.ndarray:
    """An audio file (wav, flac, ogg, mp3, ...) or the first audio stream of a container (mp4, m4a,
    avi, webm, mkv, ...) as float32 mono at 16 kHz, whatever rate, channels or sample format it
    holds: the channels' mean, resampled by soxr. part: (start, end) in seconds, the utterance
    where one recording holds many (EmoBox's PAVOQUE); only that part is read. A file holding NaN
    or infinite samples, a container without an audio stream, one whose audio fails to decode and one
    that decodes more than CUT_SHORT seconds shorter than its header or container says (a file cut short
    in a copy or a download) are refused, by name."""
    try:
        with sf.SoundFile(path) as f:  # (L, channels)
            rate, frames, declared = f.samplerate, -1, f.frames
            if part is not None:  # seek, not decode the recording up to it
                first, last = (min(round(t * rate), f.frames) for t in part)
                f.seek(first)
                frames = last - first
            elif f.format in ("WAV", "WAVEX"):  # libsndfile counts the frames the file holds, not those declared
                declared = wav_frames(path) or declared
            samples = f.read(frames, dtype="float32", always_2d=True)
    except sf.LibsndfileError as err:
        if not os.path.isfile(path):  # libsndfile says the same of a missing file
            raise CorpusError(f"cannot read {path}: {err}") from None
        samples, rate, declared = read_container(path)
        if part is not None:
            samples = samples[round(part[0] * rate):round(part[1] * rate)]
    except (OSError, RuntimeError) as err:
        raise CorpusError(f"cannot read {path}: {err}") from None
    if part is None and declared - len(samples) > CUT_SHORT * rate:
        raise CorpusError(f"{path} is cut short: its header says {declared / rate:.2f} s, {len(samples) / rate:.2f} s "
                          f"of it decode ({(declared - len(samples)) / rate:.2f} s missing): a broken or unfinished "
                          "file, replace or remove it")
    if part is not None and not len(samples):
        raise CorpusError(f"{path} holds no audio at {part[0]}-{part[1]} s, the part a manifest names")
    if not np.isfinite(samples).all():
        raise CorpusError(f"{path} holds NaN or infinite samples: a broken file, replace or remove it")
    samples = samples.mean(axis=1)
    if rate != SAMPLE_RATE:
        samples = soxr.resample(samples, rate, SAMPLE_RATE)
    return np.ascontiguousarray(samples, dtype=np.float32)


def read_container(path):
    """(samples (L, channels) float32, rate, the frames its container declares) of the first audio stream of a
    file FFmpeg reads, at the stream's own rate and channels, as soundfile gives them: PyAV's AudioResampler
    only converts the sample format to float (its own downmix would weigh the channels otherwise than the
    mean). The declared length is the stream's duration, else the container's (0 when it gives none)."""
    import av  # here: only files soundfile cannot read need it

    try:
        container = av.open(str(path))
    except (av.FFmpegError, ValueError) as err:
        raise CorpusError(f"cannot read {path}: neither soundfile nor FFmpeg reads it "
                          f"({getattr(err, 'strerror', None) or err})") from None
    with container:
        if not container.streams.audio:
            raise CorpusError(f"{path} holds no audio stream (a video without sound?): replace or remove it")
        stream = container.streams.audio[0]
        seconds = (float(stream.duration * stream.time_base) if stream.duration is not None else
                   (container.duration or 0) / av.time_base)
        to_float = av.AudioResampler(format="fltp")  # rate and channels kept
        try:
            frames = [f for frame in container.decode(stream) for f in to_float.resample(frame)]
            frames += to_float.resample(None)
        except (av.FFmpegError, ValueError) as err:
            raise CorpusError(f"cannot decode the audio of {path}: {getattr(err, 'strerror', None) or err}") from None
    if not frames:
        raise CorpusError(f"{path}: its audio stream holds no samples: replace or remove it")
    rate = frames[0].sample_rate
    return np.concatenate([f.to_ndarray() for f in frames], axis=1).T, rate, round(seconds * rate)


def wav_frames(path):
    """The frames a WAV file's header declares (its data chunk's size over its frame size), or None when it
    declares none: no data chunk before the end, or the sizes a recorder writes while it streams (0, or
    0xFFFFFFFF)."""
    with open(path, "rb") as f:
        if f.read(4) != b"RIFF" or (f.read(4), f.read(4))[1] != b"WAVE":
            return None
        align = None
        while len(head := f.read(8)) == 8:
            chunk, size = struct.unpack("<4sI", head)
            if chunk == b"fmt ":
                align = struct.unpack("<HHIIH", f.read(14))[4]  # format, channels, rate, bytes/s, block align
                f.seek(size - 14 + (size & 1), 1)
            elif chunk == b"data":
                return size // align if align and 0 < size < 0xFFFFFFFF else None
            else:
                f.seek(size + (size & 1), 1)
    return None


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
        x = load_audio(u.wav, u.part)
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
