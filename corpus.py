"""The corpus a run trains on: its utterances, its classes in a fixed order, and its folds.

    --iemocap DIR     IEMOCAP_full_release: the paper's four classes (ang, hap + exc, sad, neu, in
                      that order), leave-one-session-out folds 1-5 (Sec. 3.1)
    --demo            the synthetic IEMOCAP-shaped replica (iemocap.make_synthetic_iemocap)

Fold k of every corpus tests on its test list and trains on its training list; the
validation set is a seeded, class-stratified share of the training list (iemocap.hold_out).
"""
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import iemocap
from iemocap import CLASSES, IemocapError


@dataclass
class Corpus:
    name: str
    classes: tuple  # label id = index
    utterances: list  # of iemocap.Utterance
    tests: dict  # fold name -> ids tested on; the folds in their order
    trains: dict | None = None  # fold name -> ids trained on (None: every utterance not tested on)
    paper: bool = False  # IEMOCAP's 4-class task: the paper's numbers apply

    @property
    def folds(self):
        return list(self.tests)

    def fold_number(self, fold):
        """The number that seeds a fold's draws: the fold's own number, else its position (1-based)."""
        return int(fold) if fold.isdigit() else self.folds.index(fold) + 1

    def split(self, fold, seed=0, val_fraction=0.1):
        """{"train", "val", "test"}: lists of utterances sorted by id."""
        test_ids = self.tests[fold]
        if self.trains is None:
            pool = [u for u in self.utterances if u.id not in test_ids]
        else:
            pool = [u for u in self.utterances if u.id in self.trains[fold]]
        train, val = iemocap.hold_out(pool, val_fraction, seed)
        test = [u for u in self.utterances if u.id in test_ids]
        return {name: sorted(part, key=lambda u: u.id) for name, part in (("train", train), ("val", val), ("test", test))}


def from_iemocap(utterances, name="IEMOCAP"):
    """Leave-one-session-out folds of IEMOCAP-shaped utterances."""
    tests = {str(s): {u.id for u in utterances if u.session == s} for s in iemocap.SESSIONS}
    return Corpus(name, CLASSES, utterances, tests, paper=True)


def load(cfg):
    """The corpus of a run's settings: the user's IEMOCAP, checked against the published counts,
    or the demo's synthetic replica (written once). Reads label files only, no audio."""
    if cfg.demo and not cfg.iemocap:
        root = Path(cfg.demo_corpus or Path.home() / ".cache" / "ser-lam-mixup" /
                    f"synthetic-iemocap-{cfg.demo_speaker_utterances}")
        if not (root / "synthetic_manifest.tsv").exists():
            print(f"writing the synthetic corpus to {root}", file=sys.stderr)
            iemocap.make_synthetic_iemocap(root, utterances_per_speaker=cfg.demo_speaker_utterances)
        return from_iemocap(iemocap.read_iemocap(root), name="synthetic IEMOCAP replica")
    root = cfg.iemocap or os.environ.get("IEMOCAP_ROOT", "")
    if not root:
        raise IemocapError("no corpus: pass --iemocap PATH/TO/IEMOCAP_full_release (or set IEMOCAP_ROOT), or --demo")
    utterances = iemocap.read_iemocap(root)
    problems = iemocap.check_iemocap(root, utterances)
    if problems and not cfg.allow_incomplete:
        raise IemocapError(f"{root} differs from the published IEMOCAP ({'; '.join(problems[:3])}); "
                           f"`python iemocap.py {root}` lists every difference, --allow-incomplete trains on it anyway")
    if problems:
        present = [u for u in utterances if os.path.isfile(u.wav)]
        print(f"warning: {root} differs from the published IEMOCAP; training on it anyway "
              f"({len(utterances) - len(present)} utterances without a wav left out)", file=sys.stderr)
        utterances = present
    corpus = from_iemocap(utterances)
    for fold, ids in corpus.tests.items():
        if not ids or len(ids) == len(utterances):
            raise IemocapError(f"{root}: fold {fold} needs session {fold} and at least one other session")
    return corpus
