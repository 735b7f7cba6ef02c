"""IEMOCAP for the paper's 4-class task: read a user's copy, check it, split it into
leave-one-session-out folds, serve its audio to the model, and write a synthetic replica.

The corpus is licensed, so it never ships with this suite. Users point the scripts at their
own `IEMOCAP_full_release/` (`--iemocap` or `IEMOCAP_ROOT`); `python iemocap.py PATH`
checks such a copy against the published counts. The on-disk format followed here is the
one described in BACKGROUND.md ("IEMOCAP on disk"); the audio pipeline is the authors'
(BACKGROUND.md, "Data pipeline").
"""

import argparse
import contextlib
import functools
import json
import os
import random
import re
import sys
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch
from scipy.signal import lfilter
from sklearn.model_selection import train_test_split
from tqdm import tqdm

CLASSES = ("ang", "hap", "sad", "neu")  # label id = index; the order of Sec. 2
SAMPLE_RATE = 16_000
MIN_SAMPLES = 400  # HuBERT's conv front end needs 400 samples for its first frame
SESSIONS = (1, 2, 3, 4, 5)
# The 4-class set (hap includes exc): 5531 utterances (Sec. 3.1; BACKGROUND.md, "The paper's 4-class set").
PUBLISHED = {"total": 5531, "sessions": {1: 1085, 2: 1023, 3: 1151, 4: 1031, 5: 1241},
             "classes": {"ang": 1103, "hap": 1636, "sad": 1084, "neu": 1708}}

# The only line of a label block to read; the annotator lines never match it.
SUMMARY_LINE = re.compile(
    r"^\[(\d+\.\d+) - (\d+\.\d+)\]\t(\S+)\t(\w+)\t\[(\d+\.\d+), (\d+\.\d+), (\d+\.\d+)\]$")
# Dialog = the id without its last part; the speaker's letter starts that last part.
UTTERANCE_ID = re.compile(r"^(Ses0([1-5])[FM]_.+)_([FM])\d+$")
MERGED = {"exc": "hap"}  # "hap + exc" as in every 4-class IEMOCAP paper


class IemocapError(Exception):
    """A problem with the user's copy, said in one line."""


@dataclass(frozen=True)
class Utterance:
    id: str
    session: int
    speaker: str  # e.g. "Ses01F": session + the actor's gender letter
    label: str  # one of CLASSES
    start: float  # seconds within the dialog
    end: float
    wav: str  # absolute path of the utterance's wav
    dialog: str
    improvised: bool

    @property
    def duration(self) -> float:
        return self.end - self.start


def read_iemocap(root) -> list[Utterance]:
    """Every utterance of the 4-class set under `root` (= IEMOCAP_full_release/), sorted by id."""
    root = Path(root).absolute()
    if not root.is_dir():
        raise IemocapError(f"{root} is not a folder; pass the path of IEMOCAP_full_release/")
    label_files = sorted(root.glob("Session[1-5]/dialog/EmoEvaluation/*.txt"))
    # macOS copies carry binary AppleDouble files "._<name>" beside the real ones.
    label_files = [f for f in label_files if not f.name.startswith("._")]
    if not label_files:
        raise IemocapError(f"{root} holds no SessionN/dialog/EmoEvaluation/*.txt; "
                           "pass the path of IEMOCAP_full_release/")
    utterances = []
    for path in label_files:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError:
            raise IemocapError(f"{path} is not a text file: is {root} "
                               "IEMOCAP_full_release/?") from None
        for line in lines:
            match = SUMMARY_LINE.match(line)
            if match is None:
                continue
            start, end, uid, code = match.group(1, 2, 3, 4)
            label = MERGED.get(code, code)
            if label not in CLASSES:
                continue
            parts = UTTERANCE_ID.match(uid)
            if parts is None:
                raise IemocapError(f"{path}: unexpected utterance id {uid!r}")
            dialog, session, letter = parts.group(1), int(parts.group(2)), parts.group(3)
            wav = root / f"Session{session}" / "sentences" / "wav" / dialog / f"{uid}.wav"
            utterances.append(Utterance(
                id=uid, session=session, speaker=f"Ses0{session}{letter}", label=label,
                start=float(start), end=float(end), wav=str(wav), dialog=dialog,
                improvised="_impro" in dialog))
    if not utterances:
        raise IemocapError(f"{root}: the label files hold no ang/hap/exc/sad/neu utterance")
    return sorted(utterances, key=lambda u: u.id)


def count_utterances(utterances) -> dict:
    """Counts in the shape of PUBLISHED."""
    return {"total": len(utterances),
            "sessions": {s: sum(u.session == s for u in utterances) for s in SESSIONS},
            "classes": {c: sum(u.label == c for u in utterances) for c in CLASSES}}


def check_iemocap(root, utterances, expected=PUBLISHED) -> list[str]:
    """Readable differences between a copy and the expected counts; [] when it matches."""
    counts = count_utterances(utterances)
    problems = []
    for s in SESSIONS:
        if counts["sessions"][s] == 0:
            problems.append(f"Session{s} is missing: no utterance read from "
                            f"{Path(root) / f'Session{s}/dialog/EmoEvaluation'}")
        elif counts["sessions"][s] != expected["sessions"][s]:
            problems.append(f"Session{s}: {counts['sessions'][s]} utterances, "
                            f"expected {expected['sessions'][s]}")
    missing = [u.wav for u in utterances if not os.path.isfile(u.wav)]
    if missing:
        shown = ", ".join(os.path.relpath(w, root) for w in missing[:3])
        problems.append(f"{len(missing)} wav files are missing, e.g. {shown}")
    for c in CLASSES:
        if counts["classes"][c] != expected["classes"][c]:
            problems.append(f"{c}: {counts['classes'][c]} utterances, "
                            f"expected {expected['classes'][c]}")
    if counts["total"] != expected["total"]:
        problems.append(f"total: {counts['total']} utterances, expected {expected['total']}")
    return problems


# ---- Leave-one-session-out folds (Sec. 3.1) ----

def hold_out(pool, val_fraction, seed):
    """(train, val): `val_fraction` of the pool held out for early stopping.

    The authors drew it at random and never published it; we stratify it by class, so that it
    has the class balance of the training set, and seed it, so that a run can be repeated.
    The pool is taken in id order, so the draw does not depend on how the corpus was listed."""
    pool = sorted(pool, key=lambda u: u.id)
    if val_fraction == 0:
        return pool, []
    return train_test_split(pool, test_size=val_fraction, random_state=seed, stratify=[u.label for u in pool])


def write_split(split, folder):
    """train.txt, val.txt, test.txt: one utterance id per line, so any split can be reused."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, utterances in split.items():
        (folder / f"{name}.txt").write_text("".join(f"{u.id}\n" for u in utterances))


def read_split(folder) -> dict:
    """The id lists written by write_split: {"train": [ids], "val": [...], "test": [...]}."""
    return {name: (Path(folder) / f"{name}.txt").read_text().split()
            for name in ("train", "val", "test")}


# ---- Audio (BACKGROUND.md, "The authors' script": data) ----

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
        raise IemocapError(f"cannot read {path}: {err}") from None
    if not np.isfinite(samples).all():
        raise IemocapError(f"{path} holds NaN or infinite samples: a broken file, replace or remove it")
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
    receptive field), float32. Training (UtteranceDataset) and predict.py both call it."""
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
def _seeded_global_rngs(*key):
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


class UtteranceDataset(torch.utils.data.Dataset):
    """(waveform, length, label id) per utterance, in the authors' order: cropped to its first
    max_len samples, then divided by the peak of that crop (so an utterance whose loudest
    moment lies after the cut still reaches |x| = 1), padded to at least 400 samples, then
    augmented with draws seeded by (seed, epoch, index), so an item is the same whichever
    DataLoader worker makes it. `cache` is `decode`'s dict, or None to read each wav anew."""

    def __init__(self, utterances, classes=CLASSES, max_len=100_000, augment="none", cache=None, seed=0):
        self.utterances = list(utterances)
        self.label_ids = [classes.index(u.label) for u in self.utterances]
        self.max_len = max_len
        self.augmentation = make_augmentation(augment)
        self.cache = cache
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return len(self.utterances)

    def __getitem__(self, i):
        u = self.utterances[i]
        x = self.cache[u.id].astype(np.float32) / 32767 if self.cache is not None else load_audio(u.wav)
        if len(x) < MIN_SAMPLES:
            warnings.warn(f"{u.id} has {len(x)} samples; zero-padded to {MIN_SAMPLES}, "
                          "HuBERT's receptive field")
        x = prepare(x, self.max_len)
        if self.augmentation is not None:
            with _seeded_global_rngs(self.seed, self.epoch, i):
                x = self.augmentation(samples=x, sample_rate=SAMPLE_RATE)
        x = np.ascontiguousarray(x, dtype=np.float32)
        return torch.from_numpy(x), len(x), self.label_ids[i]


# ---- Synthetic replica (BACKGROUND.md, "IEMOCAP on disk", followed to the letter) ----

# A random-init HuBERT learns across speakers only from cues present in every frame and
# independent of the speaker's pitch (BACKGROUND.md, "What a synthetic corpus must carry").
# Each class has three such cues, and any two classes differ in two of them: spectral tilt
# (one-pole low-pass coefficient: corner near 570 Hz at 0.8, 100 Hz at 0.96), breathiness
# (noise-to-voice ratio) and roughness (every other glottal pulse weaker: a subharmonic). Syllable rate and a pitch glide relative to
# the speaker's own base pitch come on top. Measured with a tiny random-init HuBERT trained
# on four sessions of the default replica: UA 0.84-1.0 on the fifth after 5 epochs.
#            tilt, breath, rough, syllables/s, glide (semitones over the utterance)
PROSODY = {"ang": (0.8, 0.0, 0.7, 6.0, -4.0), "hap": (0.8, 1.2, 0.0, 5.0, 4.0),
           "sad": (0.96, 1.2, 0.7, 2.5, -2.0), "neu": (0.96, 0.0, 0.0, 3.5, 0.0)}
# Codes the reader must drop, in the order a speaker's extra utterances use them.
OTHER_CODES = ("xxx", "fru", "sur", "fea", "xxx", "fru", "oth", "dis")
WORDS = {"ang": "Anger", "hap": "Happiness", "exc": "Excited", "sad": "Sadness",
         "neu": "Neutral state", "fru": "Frustration", "sur": "Surprise", "fea": "Fear",
         "oth": "Other", "dis": "Disgust", "xxx": "Frustration"}
# (leader, name): scripted and improvised, with an a/b pair and a "b" script.
DIALOGS = (("F", "impro01"), ("M", "impro05a"), ("M", "impro05b"),
           ("F", "script01_1"), ("M", "script01_1b"))
# For a full-size replica (553 utterances per speaker): lengths shaped like IEMOCAP's.
IEMOCAP_LENGTHS = {"durations": (0.585, 34.1), "mean_duration": 4.55}
# IEMOCAP's 4-class proportions: each speaker gets them.
PROPORTIONS = {c: PUBLISHED["classes"][c] / PUBLISHED["total"] for c in CLASSES}


def _resonate(x, freq, bandwidth):
    """A two-pole resonator: one formant."""
    r = np.exp(-np.pi * bandwidth / SAMPLE_RATE)
    theta = 2 * np.pi * freq / SAMPLE_RATE
    gain = (1 - r) * np.sqrt(1 - 2 * r * np.cos(2 * theta) + r * r)  # peak gain 1 at any freq
    return lfilter([gain], [1, -2 * r * np.cos(theta), r * r], x)


def _synthesise(rng, n, voice, code):
    """n samples of one "utterance" of a speaker (base pitch, formants) in class `code`."""
    label = MERGED.get(code, code)
    if label not in CLASSES:  # dropped codes sound like any class
        label = CLASSES[rng.integers(len(CLASSES))]
    tilt, breath, rough, rate, glide = PROSODY[label]
    jitter = functools.partial(rng.uniform, 0.85, 1.15)  # each utterance varies around its class
    t = np.arange(n) / SAMPLE_RATE
    syllables = rng.uniform() + np.cumsum(rate * jitter() * (1 + 0.3 * np.sin(
        2 * np.pi * rng.uniform(0.3, 1.0) * t))) / SAMPLE_RATE
    envelope = 0.35 + 0.65 * np.sin(np.pi * syllables) ** 2  # never silent: cues in every frame
    semitones = glide * jitter() * t / t[-1] + rng.normal(0, 1.5) * np.sin(np.pi * syllables / 2)
    f0 = voice["f0"] * 2 ** (semitones / 12)
    periods = np.floor(np.cumsum(f0) / SAMPLE_RATE)
    pulses = np.diff(periods, prepend=0.0) * (1 + rough * jitter() * (1 - 2 * (periods % 2)))
    # The tilt shapes breath and voice alike, so breathiness cannot pass for brightness.
    voiced, noise = lfilter([1 - tilt], [1, -tilt], [pulses, rng.standard_normal(n)])
    source = voiced / voiced.std() + breath * jitter() * noise / noise.std()
    for freq, bandwidth in voice["formants"]:
        source = source + 0.5 * _resonate(source, freq * jitter() ** 0.3, bandwidth)
    x = envelope * source
    x += rng.standard_normal(n) * x.std() * 10 ** (-rng.uniform(20, 35) / 20)  # room noise
    return x / np.abs(x).max() * rng.uniform(0.2, 0.9)  # loudness: random, not a cue


def _durations(rng, count, durations, mean_duration):
    """Seconds, independent of the class: uniform within `durations`, or lognormal with
    `mean_duration` clipped to them (IEMOCAP: mean 4.55 s, 0.585 to 34.1 s)."""
    low, high = durations
    if mean_duration is None:
        return rng.uniform(low, high, count)
    sigma = 0.6
    return np.clip(rng.lognormal(np.log(mean_duration) - sigma ** 2 / 2, sigma, count), low, high)


def _label_block(uid, code, begin, end, rng):
    """One utterance's block of an EmoEvaluation file: the summary line, then annotators."""
    v, a, d = rng.integers(2, 10, size=3) / 2
    word = WORDS[code]
    second = "Neutral state" if code == "xxx" else word  # xxx: the annotators disagreed
    return (f"[{begin:.4f} - {end:.4f}]\t{uid}\t{code}\t[{v:.4f}, {a:.4f}, {d:.4f}]\n"
            f"C-E2:\t{word};\t()\nC-E3:\t{second};\t()\nC-F1:\t{word};\t(annotator note)\n"
            f"A-E3:\tval {v:.0f}; act {a:.0f}; dom  {d:.0f};\t()\n\n")


def make_synthetic_iemocap(root, utterances_per_speaker=40, seed=0, durations=(0.6, 4.0),
                           mean_duration=None, other_per_speaker=None):
    """Write an IEMOCAP-shaped tree to `root` and return root.

    5 sessions x 2 speakers; each speaker has `utterances_per_speaker` utterances of the
    four classes in IEMOCAP's proportions (hap coded as hap or exc) and `other_per_speaker`
    (default a quarter as many) with codes the reader must drop. Lengths follow
    `_durations`. `synthetic_manifest.tsv` records what was written (id, code, speaker,
    samples) so tests can count without the reader. Deterministic for a seed.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    if other_per_speaker is None:
        other_per_speaker = max(1, utterances_per_speaker // 4)
    bounds = np.round(np.cumsum([0, *PROPORTIONS.values()]) * utterances_per_speaker)
    codes = [c for c, n in zip(CLASSES, np.diff(bounds).astype(int)) for _ in range(n)]
    codes = ["exc" if c == "hap" and k % 3 else c for k, c in enumerate(codes)]
    codes += [OTHER_CODES[k % len(OTHER_CODES)] for k in range(other_per_speaker)]
    manifest = ["id\tcode\tspeaker\tsamples\n"]
    (root / "Documentation").mkdir(parents=True, exist_ok=True)
    (root / "Documentation" / "README.txt").write_text(
        "Synthetic replica of IEMOCAP_full_release: the layout of the real one, synthetic audio.\n")
    for session in SESSIONS:
        emo = root / f"Session{session}" / "dialog" / "EmoEvaluation"
        for sub in ("Categorical", "Attribute"):
            (emo / sub).mkdir(parents=True, exist_ok=True)
        voices = {letter: {"f0": rng.uniform(*{"F": (170, 250), "M": (90, 140)}[letter]),
                           "formants": [(rng.uniform(lo, hi), rng.uniform(80, 200)) for lo, hi in
                                        ((300, 900), (900, 2400), (2200, 3400))]}
                  for letter in "FM"}
        # Both speakers' turns spread over the dialogs at random and shuffled within each,
        # so neither the dialog nor the position in it says anything about the label.
        turns = [(letter, code) for letter in "FM" for code in codes]
        dialog_of = rng.integers(len(DIALOGS), size=len(turns))
        for d, (leader, name) in enumerate(DIALOGS):
            dialog = f"Ses0{session}{leader}_{name}"
            mine = [turns[k] for k in rng.permutation(len(turns)) if dialog_of[k] == d]
            wav_dir = root / f"Session{session}" / "sentences" / "wav" / dialog
            wav_dir.mkdir(parents=True, exist_ok=True)
            blocks = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n"]
            categorical, attribute = [], []
            start, numbers = rng.uniform(1, 5), Counter()
            seconds = _durations(rng, len(mine), durations, mean_duration)
            for (letter, code), length in zip(mine, seconds):
                uid = f"{dialog}_{letter}{numbers[letter]:03d}"
                numbers[letter] += 1
                begin, end = round(start, 4), round(start + length, 4)
                n = round((end - begin) * SAMPLE_RATE)  # as IEMOCAP: (end - start) x 16 kHz
                sf.write(wav_dir / f"{uid}.wav", _synthesise(rng, n, voices[letter], code),
                         SAMPLE_RATE, subtype="PCM_16")
                manifest.append(f"{uid}\t{code}\tSes0{session}{letter}\t{n}\n")
                blocks.append(_label_block(uid, code, begin, end, rng))
                categorical.append(f"{uid} :{WORDS[code]}; ()\n")
                attribute.append(f"{uid} :act 3; val 3; dom 3; ()\n")
                start = end + rng.uniform(0.2, 2.0)
            (emo / f"{dialog}.txt").write_text("".join(blocks))
            (emo / "Categorical" / f"{dialog}_e2_cat.txt").write_text("".join(categorical))
            (emo / "Attribute" / f"{dialog}_e3_atr.txt").write_text("".join(attribute))
        # An AppleDouble file as macOS leaves them beside the real ones: binary, not UTF-8.
        (emo / f"._Ses0{session}F_impro01.txt").write_bytes(
            b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + bytes(range(256)))
    write_emobox_manifest(root, [line.rstrip("\n").split("\t") for line in manifest[1:]])
    (root / "synthetic_manifest.tsv").write_text("".join(manifest))  # last: its presence says the tree is whole
    return root


def write_emobox_manifest(root, written, name="replica"):
    """The replica as an EmoBox dataset folder, root/emobox/<name>/: label_map.json (exc -> hap, as
    Sec. 3.1) and fold_<k>/<name>_{train,test}_fold_<k>.jsonl, fold k testing on session k, one
    line per 4-class utterance with EmoBox's fields; `wav` is relative to root (--audio-root)."""
    folder = Path(root) / "emobox" / name
    label_map = {"ang": "ang", "hap": "hap", "exc": "hap", "sad": "sad", "neu": "neu"}  # the paper's order
    (folder).mkdir(parents=True, exist_ok=True)
    (folder / "label_map.json").write_text(json.dumps(label_map, indent=4) + "\n")
    rows = []
    for uid, code, speaker, samples in written:
        if code in label_map:
            dialog = uid.rsplit("_", 1)[0]
            rows.append((int(uid[4]), dict(key=uid, dataset=name, wav=f"Session{uid[4]}/sentences/wav/{dialog}/{uid}.wav",
                                            type="raw", sample_rate=SAMPLE_RATE, num_frame=float(samples), task="category",
                                            length=int(samples) / SAMPLE_RATE, emo=code, channel=1)))
    for k in SESSIONS:
        (folder / f"fold_{k}").mkdir(exist_ok=True)
        for part, keep in (("train", lambda s: s != k), ("test", lambda s: s == k)):
            lines = "".join(json.dumps(row) + "\n" for session, row in rows if keep(session))
            (folder / f"fold_{k}" / f"{name}_{part}_fold_{k}.jsonl").write_text(lines)


# ---- Command line: check a copy ----

def print_summary(utterances):
    """Utterances per session x class and per speaker, the total and the hours of audio."""
    for key in ("session", "speaker"):
        print(f"{key:10}" + "".join(f"{c:>6}" for c in CLASSES) + f"{'total':>7}")
        for group in sorted({getattr(u, key) for u in utterances}) + ["all"]:
            labels = Counter(u.label for u in utterances if group in ("all", getattr(u, key)))
            print(f"{group!s:10}" + "".join(f"{labels[c]:6d}" for c in CLASSES)
                  + f"{sum(labels.values()):7d}")
        print()
    hours = sum(u.duration for u in utterances) / 3600
    print(f"total: {len(utterances)} utterances, {hours:.2f} hours of audio")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Check a copy of IEMOCAP against the "
                                     "published 4-class counts, or write a synthetic replica.")
    parser.add_argument("root", nargs="?", default=os.environ.get("IEMOCAP_ROOT"),
                        help="path of IEMOCAP_full_release/ (default: $IEMOCAP_ROOT)")
    parser.add_argument("--synthetic", metavar="DIR", help="write a synthetic replica to DIR")
    parser.add_argument("--utterances-per-speaker", type=int, default=40,
                        help="4-class utterances per speaker of the replica (553: IEMOCAP's size)")
    parser.add_argument("--iemocap-lengths", action="store_true",
                        help="replica lengths like IEMOCAP's (mean 4.55 s, up to 34 s)")
    args = parser.parse_args(argv)
    try:
        if args.synthetic:
            make_synthetic_iemocap(args.synthetic, args.utterances_per_speaker,
                                   **(IEMOCAP_LENGTHS if args.iemocap_lengths else {}))
            print(f"wrote a synthetic replica to {args.synthetic}, and an EmoBox-style manifest of it: "
                  f"--manifest {Path(args.synthetic) / 'emobox' / 'replica'} --audio-root {args.synthetic}")
            print_summary(read_iemocap(args.synthetic))
            return 0
        if args.root is None:
            raise IemocapError("no path given: pass IEMOCAP_full_release/ or set IEMOCAP_ROOT")
        utterances = read_iemocap(args.root)
    except IemocapError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print_summary(utterances)
    problems = check_iemocap(args.root, utterances, PUBLISHED)
    if not problems:
        print("matches the published counts (5531 utterances)")
        return 0
    print("DIFFERS from the published counts; this copy is incomplete or modified:")
    print("".join(f"  - {p}\n" for p in problems), end="")
    return 1


if __name__ == "__main__":
    sys.exit(main())
