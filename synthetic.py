"""The demo's corpus: a synthetic replica of IEMOCAP_full_release, laid out as BACKGROUND.md
("IEMOCAP on disk") describes the real one, with synthetic voices whose classes a tiny random
HuBERT can learn across speakers; and the replica's EmoBox-style manifest.

    python synthetic.py DIR                                  # the demo's size: 40 utterances per speaker
    python synthetic.py DIR --utterances-per-speaker 553 --iemocap-lengths   # IEMOCAP's size and lengths
"""
import argparse
import functools
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import lfilter

from audio import SAMPLE_RATE
from iemocap import CLASSES, MERGED, PUBLISHED, SESSIONS, print_summary, read_iemocap

# A random-init HuBERT learns across speakers only from cues present in every frame and
# independent of the speaker's pitch (BACKGROUND.md, "What a synthetic corpus must carry").
# Each class has three such cues, and any two classes differ in two of them: spectral tilt
# (one-pole low-pass coefficient: corner near 570 Hz at 0.8, 100 Hz at 0.96), breathiness
# (noise-to-voice ratio) and roughness (every other glottal pulse weaker: a subharmonic).
# Syllable rate and a pitch glide relative to the speaker's own base pitch come on top. Measured with a tiny random-init HuBERT trained
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


def draw_durations(rng, count, durations, mean_duration):
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
    `draw_durations`. `synthetic_manifest.tsv` records what was written (id, code, speaker,
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
        manifest += _write_session(root, session, codes, rng, durations, mean_duration)
    write_emobox_manifest(root, [line.rstrip("\n").split("\t") for line in manifest[1:]])
    (root / "synthetic_manifest.tsv").write_text("".join(manifest))  # last: its presence says the tree is whole
    return root


def _write_session(root, session, codes, rng, durations, mean_duration):
    """One session: two voices, each speaking every one of `codes`, spread over the dialogs; its wavs and
    label files. Returns the manifest's lines of what it wrote."""
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
    manifest = []
    for d, (leader, name) in enumerate(DIALOGS):
        dialog = f"Ses0{session}{leader}_{name}"
        mine = [turns[k] for k in rng.permutation(len(turns)) if dialog_of[k] == d]
        manifest += _write_dialog(root / f"Session{session}", dialog, mine, voices, rng, durations, mean_duration)
    # An AppleDouble file as macOS leaves them beside the real ones: binary, not UTF-8.
    (emo / f"._Ses0{session}F_impro01.txt").write_bytes(
        b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + bytes(range(256)))
    return manifest


def _write_dialog(session_dir, dialog, turns, voices, rng, durations, mean_duration):
    """One dialog's wavs (sentences/wav/<dialog>/) and its label files (dialog/EmoEvaluation/): the turns
    (speaker letter, code) in order, one after the other with pauses between. Returns manifest lines."""
    wav_dir = session_dir / "sentences" / "wav" / dialog
    wav_dir.mkdir(parents=True, exist_ok=True)
    emo = session_dir / "dialog" / "EmoEvaluation"
    session = session_dir.name[len("Session"):]
    blocks = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n"]
    categorical, attribute, manifest = [], [], []
    start, numbers = rng.uniform(1, 5), Counter()
    seconds = draw_durations(rng, len(turns), durations, mean_duration)
    for (letter, code), length in zip(turns, seconds):
        uid = f"{dialog}_{letter}{numbers[letter]:03d}"
        numbers[letter] += 1
        begin, end = round(start, 4), round(start + length, 4)
        n = round((end - begin) * SAMPLE_RATE)  # as IEMOCAP: (end - start) x 16 kHz
        sf.write(wav_dir / f"{uid}.wav", _synthesise(rng, n, voices[letter], code), SAMPLE_RATE, subtype="PCM_16")
        manifest.append(f"{uid}\t{code}\tSes0{session}{letter}\t{n}\n")
        blocks.append(_label_block(uid, code, begin, end, rng))
        categorical.append(f"{uid} :{WORDS[code]}; ()\n")
        attribute.append(f"{uid} :act 3; val 3; dom 3; ()\n")
        start = end + rng.uniform(0.2, 2.0)
    (emo / f"{dialog}.txt").write_text("".join(blocks))
    (emo / "Categorical" / f"{dialog}_e2_cat.txt").write_text("".join(categorical))
    (emo / "Attribute" / f"{dialog}_e3_atr.txt").write_text("".join(attribute))
    return manifest


# The demo's cross-corpus test set (--test-on): the replica's classes, by their cues (PROSODY), spoken by other
# voices, through another channel (a band of 80-7000 Hz), in a room (an exponentially decaying reverberation,
# 15 dB under the sound) and at other levels over other noise, as one real corpus differs from another. A tiny
# HuBERT trained on the replica's fold 5 scored 0.44 WA there against 0.91 on its own test (chance: 0.25);
# a telephone band (300-3400 Hz), a louder room or noise at 12-22 dB took it to chance.
OTHER_CORPUS = dict(per_class=40, speakers=6, f0=(100, 260), band=(80, 7000), reverb_seconds=0.2, drr_db=15,
                    snr_db=(30, 40))
WORDS_TRACK2 = {"ang": "angry", "hap": "happy", "sad": "sad", "neu": "neutral"}  # EmoBox's spelling


def make_other_corpus(root, seed=1, per_class=OTHER_CORPUS["per_class"]):
    """Write the demo's second corpus to the folder `root` (created; a whole one there already is kept):
    per_class utterances of each class in wavs under <label>/, listed in track2.jsonl as EmoBox's
    cross-corpus track lists its test sets (wav_filename relative to root, label, speaker). It is written
    to a folder of its own first, then renamed: processes writing it at once leave one whole corpus."""
    import os
    import shutil
    import tempfile
    final = Path(root)
    final.parent.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    try:
        _write_other_corpus(root, seed, per_class)
        os.rename(root, final)
    except OSError:  # another process renamed its own first
        if not (final / "track2.jsonl").exists():
            raise
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return final / "track2.jsonl"


def _write_other_corpus(root, seed, per_class):
    from scipy.signal import butter, fftconvolve, sosfilt
    rng = np.random.default_rng(seed)
    c = OTHER_CORPUS
    voices = [{"f0": rng.uniform(*c["f0"]), "formants": [(rng.uniform(lo, hi), rng.uniform(80, 200)) for lo, hi in
                                                         ((350, 1000), (1000, 2600), (2400, 3600))]}
              for _ in range(c["speakers"])]
    band = butter(4, c["band"], btype="band", fs=SAMPLE_RATE, output="sos")
    tail = np.arange(int(c["reverb_seconds"] * SAMPLE_RATE)) / SAMPLE_RATE
    lines = []
    for label in CLASSES:
        (root / WORDS_TRACK2[label]).mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            speaker = k % c["speakers"]
            x = _synthesise(rng, int(rng.uniform(1.0, 4.0) * SAMPLE_RATE), voices[speaker], label)
            room = rng.standard_normal(len(tail)) * np.exp(-6.9 * tail / c["reverb_seconds"])  # -60 dB at the end
            room *= np.sqrt(10 ** (-c["drr_db"] / 10) / np.sum(room ** 2))  # the reverberation drr_db under the sound
            room[0] = 1.0
            x = sosfilt(band, fftconvolve(x, room)[:len(x)])
            x += rng.standard_normal(len(x)) * x.std() * 10 ** (-rng.uniform(*c["snr_db"]) / 20)
            name = f"{WORDS_TRACK2[label]}/other_S{speaker + 1}_{label}{k:03d}.wav"
            sf.write(root / name, x / np.abs(x).max() * rng.uniform(0.05, 0.5), SAMPLE_RATE, subtype="PCM_16")
            lines.append(json.dumps(dict(wav_filename=name, label=WORDS_TRACK2[label], speaker=f"S{speaker + 1}")))
    (root / "track2.jsonl").write_text("".join(line + "\n" for line in lines))


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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Write a synthetic replica of IEMOCAP_full_release, and an "
                                     "EmoBox-style manifest of it.")
    parser.add_argument("folder", help="where to write it")
    parser.add_argument("--utterances-per-speaker", type=int, default=40,
                        help="4-class utterances per speaker (553: IEMOCAP's size; default: 40, the demo's)")
    parser.add_argument("--iemocap-lengths", action="store_true",
                        help="lengths like IEMOCAP's (mean 4.55 s, up to 34 s)")
    args = parser.parse_args(argv)
    make_synthetic_iemocap(args.folder, args.utterances_per_speaker, **(IEMOCAP_LENGTHS if args.iemocap_lengths else {}))
    print(f"wrote a synthetic replica to {args.folder}, and an EmoBox-style manifest of it: "
          f"--manifest {Path(args.folder) / 'emobox' / 'replica'} --audio-root {args.folder}")
    print_summary(read_iemocap(args.folder))
    return 0


if __name__ == "__main__":
    sys.exit(main())
