"""IEMOCAP for the paper's 4-class task (Sec. 3.1): read a user's copy, and check it against
the published counts. corpus.from_iemocap turns it into the five leave-one-session-out folds.

The corpus is licensed, so it never ships with this suite. Users point the scripts at their
own `IEMOCAP_full_release/` (`--iemocap` or `IEMOCAP_ROOT`); `python iemocap.py PATH`
checks such a copy against the published counts. The on-disk format followed here is the
one described in BACKGROUND.md ("IEMOCAP on disk").
"""

import argparse
import os
import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from settings import CorpusError

CLASSES = ("ang", "hap", "sad", "neu")  # label id = index; the order of Sec. 2
SESSIONS = (1, 2, 3, 4, 5)  # leave-one-session-out: fold k tests on session k (Sec. 3.1)
# The 4-class set (hap includes exc): 5531 utterances (Sec. 3.1; BACKGROUND.md, "The paper's 4-class set").
PUBLISHED = {"total": 5531, "sessions": {1: 1085, 2: 1023, 3: 1151, 4: 1031, 5: 1241},
             "classes": {"ang": 1103, "hap": 1636, "sad": 1084, "neu": 1708}}

# The only line of a label block to read; the annotator lines never match it.
SUMMARY_LINE = re.compile(
    r"^\[(\d+\.\d+) - (\d+\.\d+)\]\t(\S+)\t(\w+)\t\[(\d+\.\d+), (\d+\.\d+), (\d+\.\d+)\]$")
# Dialog = the id without its last part; the speaker's letter starts that last part.
UTTERANCE_ID = re.compile(r"^(Ses0([1-5])[FM]_.+)_([FM])\d+$")
MERGED = {"exc": "hap"}  # "hap + exc" as in every 4-class IEMOCAP paper


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
    part: tuple | None = None  # (start, end) seconds of `wav` that are the utterance, where one recording holds many


    @property
    def duration(self) -> float:
        return self.end - self.start


def read_iemocap(root) -> list[Utterance]:
    """Every utterance of the 4-class set under `root` (= IEMOCAP_full_release/), sorted by id."""
    root = Path(root).absolute()
    if not root.is_dir():
        raise CorpusError(f"{root} is not a folder; pass the path of IEMOCAP_full_release/")
    label_files = sorted(root.glob("Session[1-5]/dialog/EmoEvaluation/*.txt"))
    # macOS copies carry binary AppleDouble files "._<name>" beside the real ones.
    label_files = [f for f in label_files if not f.name.startswith("._")]
    if not label_files:
        raise CorpusError(f"{root} holds no SessionN/dialog/EmoEvaluation/*.txt; "
                           "pass the path of IEMOCAP_full_release/")
    utterances = []
    for path in label_files:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError:
            raise CorpusError(f"{path} is not a text file: is {root} "
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
                raise CorpusError(f"{path}: unexpected utterance id {uid!r}")
            dialog, session, letter = parts.group(1), int(parts.group(2)), parts.group(3)
            wav = root / f"Session{session}" / "sentences" / "wav" / dialog / f"{uid}.wav"
            utterances.append(Utterance(
                id=uid, session=session, speaker=f"Ses0{session}{letter}", label=label,
                start=float(start), end=float(end), wav=str(wav), dialog=dialog,
                improvised="_impro" in dialog))
    if not utterances:
        raise CorpusError(f"{root}: the label files hold no ang/hap/exc/sad/neu utterance")
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
    parser = argparse.ArgumentParser(description="Check a copy of IEMOCAP against the published 4-class counts "
                                     "(python synthetic.py DIR writes a synthetic replica).")
    parser.add_argument("root", nargs="?", default=os.environ.get("IEMOCAP_ROOT"),
                        help="path of IEMOCAP_full_release/ (default: $IEMOCAP_ROOT)")
    args = parser.parse_args(argv)
    try:
        if args.root is None:
            raise CorpusError("no path given: pass IEMOCAP_full_release/ or set IEMOCAP_ROOT")
        utterances = read_iemocap(args.root)
    except CorpusError as error:
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
