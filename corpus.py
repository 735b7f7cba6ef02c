"""The corpus a run trains on: its utterances, its classes in a fixed order, and its folds.

    --iemocap DIR         IEMOCAP_full_release: the paper's four classes (ang, hap + exc, sad, neu,
                          in that order), leave-one-session-out folds 1-5 (Sec. 3.1)
    --demo                the synthetic IEMOCAP-shaped replica (synthetic.py)
    --manifest DIR        an EmoBox dataset folder (data/<dataset>/: fold_<k>/<dataset>_{train,test}_fold_<k>.jsonl
      --audio-root DIR    and label_map.json); the `wav` paths start from --audio-root. EmoBox's own folds.
    --manifest FILE       a CSV or JSONL file of your own: `path` and `label`, and `fold` (leave one fold
                          out) or `speaker` (with --num-folds K: speaker-independent folds)

Classes: IEMOCAP's four in the paper's order; an EmoBox corpus's in the order label_map.json
first names them; a CSV's sorted by name; or --classes a,b,c (which also drops the others).
Fold k of every corpus tests on its test list and trains on its training list; the validation
set is a seeded, class-stratified share of the training list (hold_out).
"""
import csv
import json
import math
import os
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import iemocap
from audio import header_seconds
from iemocap import CLASSES, Utterance
from settings import CorpusError
from files import atomic_write, read_back


@dataclass
class Corpus:
    name: str
    classes: tuple  # label id = index
    utterances: list  # of iemocap.Utterance
    tests: dict  # fold name -> ids tested on; the folds in their order
    trains: dict | None = None  # fold name -> ids trained on (None: every utterance not tested on)
    vals: dict | None = None  # fold name -> ids validated on, where the corpus publishes them (None: held out)
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
        if self.vals and self.vals.get(fold) and val_fraction > 0:
            train, val = pool, [u for u in self.utterances if u.id in self.vals[fold]]
        else:
            train, val = hold_out(pool, val_fraction, seed)
        test = [u for u in self.utterances if u.id in test_ids]
        return {name: sorted(part, key=lambda u: u.id) for name, part in (("train", train), ("val", val), ("test", test))}


def write_split(split, folder):
    """train.txt, val.txt, test.txt: one utterance id per line, so any split can be reused."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, utterances in split.items():
        atomic_write(folder / f"{name}.txt", lambda tmp: tmp.write_text("".join(f"{u.id}\n" for u in utterances)))


def read_split(folder, known=None) -> dict:
    """The id lists written by write_split: {"train": [ids], "val": [...], "test": [...]}; with
    `known` (a set of ids), an id outside it makes the file damaged (cut short, or another corpus's)."""
    def load(path):
        ids = path.read_text().split()
        strangers = [i for i in ids if known is not None and i not in known]
        if strangers:
            raise ValueError(f"{len(strangers)} id(s) not in the corpus, e.g. {strangers[0]!r}")
        return ids
    return {name: read_back(Path(folder) / f"{name}.txt", load, "the ids of the job's split; train the job again in a new "
                                                                "--out, or check that the run's corpus is the one it was "
                                                                "trained on") for name in ("train", "val", "test")}


def hold_out(pool, val_fraction, seed):
    """(train, val): `val_fraction` of the pool held out for early stopping (Sec. 3.4).

    The authors drew it at random and never published it; we stratify it by class, so that it
    has the class balance of the training set, and seed it, so that a run can be repeated.
    The pool is taken in id order, so the draw does not depend on how the corpus was listed."""
    pool = sorted(pool, key=lambda u: u.id)
    if val_fraction == 0:
        return pool, []
    from sklearn.model_selection import train_test_split  # here: scikit-learn takes seconds to import
    return train_test_split(pool, test_size=val_fraction, random_state=seed, stratify=[u.label for u in pool])


def from_iemocap(utterances, name="IEMOCAP"):
    """Leave-one-session-out folds of IEMOCAP-shaped utterances."""
    tests = {str(s): {u.id for u in utterances if u.session == s} for s in iemocap.SESSIONS}
    return Corpus(name, CLASSES, utterances, tests, paper=True)


def load(cfg, folds=None, flag="--fold"):
    """The corpus of a run's settings: a manifest, the user's IEMOCAP, checked against the published
    counts, or the demo's synthetic replica (written once). Reads label files only, no audio.
    folds: those the run asks for, by name or "all", checked (choose_folds) before the demo's replica
    is written the first time, as --classes is: a bad setting writes nothing."""
    if cfg.manifest:
        if cfg.iemocap:
            raise CorpusError("--manifest and --iemocap: give one corpus")
        corpus = from_manifest(cfg.manifest, cfg.audio_root, cfg.num_folds)
    elif cfg.demo and not cfg.iemocap:
        name = "synthetic IEMOCAP replica"
        root = demo_root(cfg)
        if writes(cfg):
            shape = from_iemocap([], name)  # the replica's folds and classes, before it exists
            choose_folds(keep_classes(shape, cfg.classes) if cfg.classes else shape, folds, flag)
            import synthetic  # here: it needs scipy.signal, seconds to import
            if not (root / "synthetic_manifest.tsv").exists():
                print(f"writing the synthetic corpus to {root}", file=sys.stderr)
                synthetic.make_synthetic_iemocap(root, utterances_per_speaker=cfg.demo_speaker_utterances)
            print(f"writing a second synthetic corpus, to test on (--test-on), to {root / OTHER_CORPUS}",
                  file=sys.stderr)
            synthetic.make_other_corpus((root / OTHER_CORPUS).parent)
        corpus = from_iemocap(iemocap.read_iemocap(root), name=name)
    else:
        corpus = load_iemocap(cfg.iemocap or os.environ.get("IEMOCAP_ROOT", ""), cfg.allow_incomplete)
    if cfg.classes:
        corpus = keep_classes(corpus, cfg.classes)
    check_folds(corpus)
    return corpus


OTHER_CORPUS = "other-corpus/track2.jsonl"  # under --demo's replica: its cross-corpus test set (synthetic.py)


def demo_root(cfg):
    """Where --demo's synthetic replica is, or is written on its first run."""
    return Path(cfg.demo_corpus or Path.home() / ".cache" / "ser-lam-mixup" / f"synthetic-iemocap-{cfg.demo_speaker_utterances}")


def writes(cfg):
    """Whether load(cfg) writes: --demo's replica and its cross-corpus test set, the first time."""
    root = demo_root(cfg)
    return (cfg.demo and not cfg.manifest and not cfg.iemocap and
            not ((root / "synthetic_manifest.tsv").exists() and (root / OTHER_CORPUS).exists()))


def choose_folds(corpus, folds, flag="--fold"):
    """The folds that `folds` names, in that order (None or ["all"]: every one of the corpus); one line
    naming `flag` when one is not the corpus's."""
    if folds is None or list(folds) == ["all"]:
        return corpus.folds
    strangers = [f for f in folds if f not in corpus.folds]
    if strangers:
        raise CorpusError(f"{flag} {' '.join(folds)}: {strangers[0]} is not a fold of {corpus.name} "
                          f"({', '.join(corpus.folds)}; all: every one)")
    return list(folds)


def load_iemocap(root, allow_incomplete):
    """The user's IEMOCAP, checked against the published counts; a copy that differs only with allow_incomplete."""
    if not root:
        raise CorpusError("no corpus: pass --iemocap PATH/TO/IEMOCAP_full_release (or set IEMOCAP_ROOT), or --demo")
    utterances = iemocap.read_iemocap(root)
    problems = iemocap.check_iemocap(root, utterances)
    if problems and not allow_incomplete:
        raise CorpusError(f"{root} differs from the published IEMOCAP ({'; '.join(problems[:3])}); "
                           f"`python iemocap.py {root}` lists every difference, --allow-incomplete trains on it anyway")
    if problems:
        present = [u for u in utterances if os.path.isfile(u.wav)]
        print(f"warning: {root} differs from the published IEMOCAP; training on it anyway "
              f"({len(utterances) - len(present)} utterances without a wav left out)", file=sys.stderr)
        utterances = present
    return from_iemocap(utterances)


def check_folds(corpus):
    """Every fold has utterances to test on, and every class in its training part."""
    for fold in corpus.folds:
        split = corpus.split(fold, val_fraction=0)
        if not split["test"]:
            raise CorpusError(f"{corpus.name}: fold {fold} has no utterance to test on")
        missing = [c for c in corpus.classes if not any(u.label == c for u in split["train"])]
        if missing:
            raise CorpusError(f"{corpus.name}: fold {fold} has no {', '.join(missing)} utterance to train on; "
                               "drop the class with --classes or use other folds")


def check_validation(corpus, folds, val_fraction):
    """Before any work: the training part of each fold in `folds` can give up a class-stratified
    validation part of val_fraction (hold_out, scikit-learn's stratified split) and still hold every
    class: 2 utterances of each class at least, and as many utterances on either side as classes.
    Where it cannot, one line says what is short and what to change. A small corpus is refused
    rather than split another way: a validation part without some class would stop early on a
    score that never sees it."""
    if val_fraction == 0:
        return
    instead = "or pass --val-fraction 0 (no validation: the last epoch is tested, as in Sec. 3.3)"
    for fold in folds:
        if corpus.vals and corpus.vals.get(fold):
            continue  # the corpus publishes its own validation list
        pool = corpus.split(fold, val_fraction=0)["train"]
        counts = Counter(u.label for u in pool)
        n, k = len(pool), len(corpus.classes)
        n_val = math.ceil(val_fraction * n)  # as scikit-learn rounds it
        where = f"{corpus.name}, fold {fold}"
        rare = [f"{c} has {counts[c]}" for c in corpus.classes if counts[c] < 2]
        if rare:
            raise CorpusError(f"{where}: {', '.join(rare)} training utterance(s), and a validation part drawn by class "
                              f"needs 2 of each: drop the class with --classes, {instead}")
        if n_val < k:
            raise CorpusError(f"{where}: --val-fraction {val_fraction} of its {n} training utterances is a validation "
                              f"part of {n_val}, fewer than its {k} classes: raise --val-fraction to "
                              f"{math.ceil(100 * k / n) / 100} or more, keep fewer --classes, {instead}")
        if n - n_val < k:
            raise CorpusError(f"{where}: --val-fraction {val_fraction} leaves {n - n_val} of its {n} training utterances "
                              f"to train on, fewer than its {k} classes: lower --val-fraction, {instead}")


def keep_classes(corpus, classes):
    """--classes a,b,c: these classes, in this order; utterances of the others are dropped."""
    wanted = tuple(c.strip() for c in classes.split(",") if c.strip())
    unknown = [c for c in wanted if c not in corpus.classes]
    if unknown or len(set(wanted)) < 2 or len(set(wanted)) < len(wanted):
        raise CorpusError(f"--classes {classes}: name two or more different classes of {corpus.name} "
                           f"({', '.join(corpus.classes)})")
    kept = [u for u in corpus.utterances if u.label in wanted]
    ids = {u.id for u in kept}
    only = lambda lists: None if lists is None else {f: t & ids for f, t in lists.items()}
    return Corpus(corpus.name, wanted, kept, only(corpus.tests), only(corpus.trains), only(corpus.vals),
                  paper=corpus.paper and wanted == CLASSES)


# ---------------------------------------------------------------------------- manifests


def from_manifest(path, audio_root="", num_folds=0):
    path = Path(path)
    if path.is_dir():
        corpus = from_emobox(path, Path(audio_root) if audio_root else None)
    elif path.is_file():
        corpus = from_table(path, Path(audio_root) if audio_root else path.parent, num_folds)
    else:
        raise CorpusError(f"--manifest {path}: no such file or folder")
    missing = [u.wav for u in corpus.utterances if not os.path.isfile(u.wav)]
    if missing:
        raise CorpusError(f"{len(missing)} of {len(corpus.utterances)} audio files of {path} are missing, e.g. "
                           f"{', '.join(missing[:3])}" + ("" if audio_root else "; is --audio-root right?"))
    return corpus


def _jsonl(path):
    try:
        return [json.loads(line) for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
    except (ValueError, UnicodeDecodeError) as e:
        raise CorpusError(f"{path}: not JSON lines ({e})") from None


def _map_label(code, label_map, where):
    """The class of a raw label code; a code that differs from a label map key only in case
    (EmoDB's "neutral" against "Neutral") is matched too."""
    if code in label_map:
        return label_map[code]
    folded = {k.lower(): v for k, v in label_map.items()}
    if str(code).lower() in folded:
        return folded[str(code).lower()]
    raise CorpusError(f"{where}: label {code!r} is not in label_map.json ({', '.join(label_map)})")


def from_emobox(folder, audio_root):
    """An EmoBox dataset folder: fold_<k>/<dataset>_{train,test}_fold_<k>.jsonl and label_map.json.
    Fold k trains on its train list and tests on its test list; it validates on its valid list
    where EmoBox publishes one (MELD, M3ED, MSP-Podcast), else on a share of the train list."""
    if audio_root is None:
        raise CorpusError(f"--manifest {folder} is an EmoBox folder: pass --audio-root, the folder its `wav` "
                           "paths start from (the one holding downloads/)")
    maps = [folder / name for name in ("label_map.json", "label_dict.json") if (folder / name).exists()]
    if not maps:
        raise CorpusError(f"{folder} holds no label_map.json: pass an EmoBox dataset folder (data/<dataset>/)")
    label_map = json.loads(maps[0].read_text())
    classes = tuple(dict.fromkeys(label_map.values()))
    folds = sorted((d for d in folder.glob("fold_*") if d.is_dir() and d.name[5:].isdigit()), key=lambda d: int(d.name[5:]))
    if not folds:
        raise CorpusError(f"{folder} holds no fold_<k>/ folders: pass an EmoBox dataset folder (data/<dataset>/)")
    utterances, tests, trains, vals = {}, {}, {}, {}
    for d in folds:
        k = d.name[5:]
        lists = {}
        for part in ("train", "test", "valid"):
            found = [p for p in d.glob(f"*_{part}_fold_{k}.jsonl")]
            if part == "valid" and not found:
                continue
            if len(found) != 1:
                raise CorpusError(f"{d}: expected one *_{part}_fold_{k}.jsonl, found {len(found)}")
            lists[part] = set()
            for row in _jsonl(found[0]):
                if not {"key", "wav", "emo"} <= set(row):
                    raise CorpusError(f"{found[0]}: a line without key, wav and emo ({', '.join(row)})")
                label = _map_label(row["emo"], label_map, found[0])
                span = None
                if "start_time" in row and "end_time" in row:  # PAVOQUE's: a part of a recording hours long
                    span = (float(row["start_time"]), float(row["end_time"]))
                    if not span[1] > span[0] >= 0:
                        raise CorpusError(f"{found[0]}: {row['key']} is the part {span[0]}-{span[1]} s of {row['wav']}, "
                                          "which holds nothing")
                start, end = span or (0.0, float(row.get("length") or 0.0))
                utterances.setdefault(row["key"], Utterance(
                    id=row["key"], session=0, speaker=str(row.get("speaker", "")), label=label, start=start, end=end,
                    wav=str(audio_root / row["wav"]), dialog="", improvised=False, part=span))
                lists[part].add(row["key"])
        tests[k], trains[k], vals[k] = lists["test"], lists["train"], lists.get("valid", set())
    return Corpus(folder.name, classes, sorted(utterances.values(), key=lambda u: u.id), tests, trains,
                  vals if any(vals.values()) else None)


def spreadsheet_rows(path):
    """The rows of a CSV (or, named .tsv, TSV) file as dicts, column names stripped and in lower case,
    cells stripped, a spreadsheet's empty rows (",,,") left out."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f, dialect=csv.excel_tab if path.suffix.lower() == ".tsv" else csv.excel))
    except (UnicodeDecodeError, csv.Error) as e:
        raise CorpusError(f"{path}: not a CSV file ({e})") from None
    rows = [{k.strip().lower(): (v or "").strip() for k, v in row.items() if isinstance(k, str)} for row in rows]
    return [row for row in rows if any(row.values())]


def from_table(path, audio_root, num_folds):
    """A CSV, TSV (or JSON lines) file: `path`, `label`, and `fold` or `speaker`; optional `id`.
    Read as spreadsheets save them: a byte-order mark, CRLF line ends, blank lines, spaces around
    cells and column names in any case are all taken in stride."""
    if path.suffix.lower() in (".jsonl", ".json"):
        rows = [{str(k).strip().lower(): v for k, v in row.items()} for row in _jsonl(path)]
    else:
        rows = spreadsheet_rows(path)
    columns = set(rows[0]) if rows else set()
    if not {"path", "label"} <= columns or not columns & {"fold", "speaker"}:
        raise CorpusError(f"{path}: columns {', '.join(sorted(columns)) or 'none'}; a manifest needs path, label and "
                           "fold (leave one fold out) or speaker (with --num-folds K)")
    by_fold = "fold" in columns
    if not by_fold and num_folds < 2:
        raise CorpusError(f"{path} gives speakers, not folds: pass --num-folds K (K >= 2) for K speaker-independent folds")
    utterances = []
    for row in rows:
        wav = Path(row["path"]) if Path(row["path"]).is_absolute() else audio_root / row["path"]
        uid = str(row.get("id") or os.path.splitext(str(row["path"]))[0])
        utterances.append(Utterance(id=uid, session=0, speaker=str(row.get("speaker", "")), label=str(row["label"]),
                                    start=0.0, end=header_seconds(wav), wav=str(wav), dialog="", improvised=False))
    if len({u.id for u in utterances}) < len(utterances):
        raise CorpusError(f"{path}: two rows have the same id (or path)")
    classes = tuple(sorted({u.label for u in utterances}))
    if by_fold:
        fold_of = [str(row["fold"]) for row in rows]
        names = sorted(set(fold_of), key=fold_key)
        tests = {f: {u.id for u, g in zip(utterances, fold_of) if g == f} for f in names}
    else:
        from sklearn.model_selection import GroupKFold
        speakers = [u.speaker for u in utterances]
        if len(set(speakers)) < num_folds:
            raise CorpusError(f"{path}: {len(set(speakers))} speakers cannot fill --num-folds {num_folds} folds")
        splits = GroupKFold(n_splits=num_folds).split(utterances, groups=speakers)
        tests = {str(k + 1): {utterances[i].id for i in test} for k, (_, test) in enumerate(splits)}
    return Corpus(path.stem, classes, sorted(utterances, key=lambda u: u.id), tests)


def fold_key(fold):
    """Folds in order: numbers by value (2 before 10), then names."""
    return (0, int(fold), "") if fold.isdigit() else (1, 0, fold)
