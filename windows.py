"""A recording as the models take it: read (any file, resampled to 16 kHz mono), cut into windows of
the training crop, a window every half window (or the first alone, --crop), each window prepared as
training prepared an utterance (audio.prepare); with --vad, the speech segments that Silero VAD finds
are cut into windows and the silence between them is left out."""
import contextlib
import dataclasses
import os
import sys
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

import audio
from settings import CorpusError


def missing(path):
    return f"no such file or folder: {path}"


def warn(message):
    tqdm.write(f"warning: {message}", file=sys.stderr)


def window_starts(n, window, crop=False):
    """First samples of the windows of an n-sample recording: 0, then every half window while the
    previous window ended before the recording did. --crop: the first window alone."""
    hop = max(window // 2, 1)
    starts = [0]
    while not crop and starts[-1] + window < n:
        starts.append(starts[-1] + hop)
    return starts


@contextlib.contextmanager
def torch_threads(n):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


_VAD = {}  # this process's Silero VAD: (model, get_speech_timestamps), loaded once


def speech(x):
    """(start, end) samples of the speech segments of x (16 kHz mono float32): Silero VAD (the silero-vad
    package, MIT licence, its model inside the wheel) with its defaults: threshold 0.5, speech of 250 ms
    or more, pauses of 100 ms or more, segments padded by 30 ms. It runs at one thread (two are many times
    slower on such a small model) and its model keeps state, so each process loads its own."""
    if not _VAD:
        threads = torch.get_num_threads()
        with warnings.catch_warnings():  # "torch.jit.load is deprecated" (its TorchScript file), "path is deprecated"
            warnings.filterwarnings("ignore", message=".*torch.jit.load.*", category=DeprecationWarning)
            warnings.filterwarnings("ignore", message="path is deprecated", category=DeprecationWarning)
            from silero_vad import get_speech_timestamps, load_silero_vad
            _VAD["vad"] = load_silero_vad(), get_speech_timestamps
        torch.set_num_threads(threads)  # importing silero_vad sets torch's threads to 1 for the whole process
    model, timestamps = _VAD["vad"]
    with torch_threads(1):
        found = timestamps(torch.from_numpy(x), model, sampling_rate=audio.SAMPLE_RATE)
    return [(int(t["start"]), int(t["end"])) for t in found]


@dataclass
class Recording:
    """One input as decoded (in a DataLoader worker): its windows, ready for train.pad, or why it failed.
    The windows belong to parts: each window is its own part, or with --vad the speech segment it was cut
    from; --segments gives a row per part."""
    index: int
    path: str
    samples: int = 0  # at 16 kHz
    starts: list = dataclasses.field(default_factory=list)  # samples, one per window
    ends: list = dataclasses.field(default_factory=list)
    parts: list = dataclasses.field(default_factory=list)  # (start, end) samples
    part_of: list = dataclasses.field(default_factory=list)  # the part of each window
    waves: list = dataclasses.field(default_factory=list)  # float32 arrays, one per window
    error: str = ""
    probs: np.ndarray | None = None  # (windows, classes), filled by predict()

    def prob(self):
        """The file's probabilities: the unweighted mean of its windows'."""
        return self.probs.mean(0)


class Recordings(Dataset):
    def __init__(self, paths, window, crop, vad=False):
        self.paths, self.window, self.crop, self.vad = paths, window, crop, vad

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        path = self.paths[i]
        if not os.path.isfile(path):
            return Recording(i, path, error=missing(path))
        try:
            x = audio.load_audio(path)
        except CorpusError as e:
            return Recording(i, path, error=str(e))
        except Exception as e:  # a decoder failing in a way of its own must not stop the other 9,999 files
            first = (str(e).splitlines() or [""])[0]
            return Recording(i, path, error=f"cannot read {path}: {type(e).__name__}: {first}")
        rec = Recording(i, path, len(x))
        segments = speech(x) if self.vad else [(0, len(x))]
        if not segments:
            rec.error = f"{path}: no speech found (--vad)"
        for begin, end in segments:
            starts = [begin + s for s in window_starts(end - begin, self.window, self.crop)]
            ends = [min(s + self.window, end) for s in starts]
            for s, e in zip(starts, ends):
                rec.part_of.append(len(rec.parts) if self.vad else len(rec.starts))
                rec.starts.append(s)
                rec.ends.append(e)
                if not self.vad:
                    rec.parts.append((s, e))
                # numpy, not tensors: pickled through the worker's pipe, where a tensor costs a shared-memory file each
                rec.waves.append(audio.prepare(x[s:e], self.window))
            if self.vad:
                rec.parts.append((begin, end))
        return rec
