"""Test sets of other corpora (--test-on): a model trained on one corpus, scored on others it never
heard, the robustness the paper's title claims (docs/corpora.md, "Cross-corpus").

A test set is an EmoBox track2 file (EmoBox's cross-corpus track: data/track2/<CORPUS>_selected_
balenced.jsonl, lines of wav_filename, label and speaker), an EmoBox dataset folder or one of its
manifests (lines of key, wav and emo), or a CSV/TSV file (path and label; id and speaker optional).
Its labels are mapped onto the model's classes by the emotion they name (EmoBox's spellings and
IEMOCAP's codes alike: angry, happy and excited, sad, neutral). Everything here is checked before
any training: labels the model has no class for, files that are missing or cannot be read, and an
utterance the training corpus holds too (the same file, or the same IEMOCAP utterance id).
"""
import json
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from corpus import from_emobox, spreadsheet_rows
from iemocap import UTTERANCE_ID, Utterance
from settings import CorpusError

# The emotion a label names, whatever its spelling: EmoBox's words and IEMOCAP's codes (hap + exc, Sec. 3.1)
EMOTIONS = {"ang": "angry", "angry": "angry", "anger": "angry", "hap": "happy", "happy": "happy",
            "happiness": "happy", "exc": "happy", "excited": "happy", "joy": "happy", "sad": "sad",
            "sadness": "sad", "neu": "neutral", "neutral": "neutral"}
TRACK2 = re.compile(r"^(.+?)_selected_bal[ae]nced$")  # EmoBox's file names (its own spelling)


@dataclass
class TestSet:
    name: str  # its name in metrics.json, results and figures: the corpus (track2) or the file's stem
    path: str  # as given to --test-on
    utterances: list  # iemocap.Utterance, label = a class of the model, id = "<name>/<relative path>"


def emotion(label):
    return EMOTIONS.get(str(label).strip().lower(), str(label).strip().lower())


def read(path, root=""):
    """(name, [(relative path, wav path, raw label, speaker)]) of a test set; root: where its relative paths
    start (default: the file's own folder; an EmoBox dataset folder needs one)."""
    path = Path(path)
    if path.is_dir():
        if not root:
            raise CorpusError(f"--test-on {path} is an EmoBox dataset folder: give its --test-root, the folder its "
                              "`wav` paths start from (the one holding downloads/)")
        corpus = from_emobox(path, Path(root))
        return path.name, [(os.path.relpath(u.wav, root), u.wav, u.label, u.speaker) for u in corpus.utterances]
    if not path.is_file():
        raise CorpusError(f"--test-on {path}: no such file or folder")
    root = Path(root) if root else path.parent
    if path.suffix.lower() in (".jsonl", ".json"):
        rows = json_rows(path)
        if rows and {"wav_filename", "label"} <= set(rows[0]):  # EmoBox track2
            match = TRACK2.match(path.stem)  # EmoBox's name, the corpus; a track2.jsonl, its folder's
            name = match[1] if match else path.parent.name if path.stem == "track2" else path.stem
            return name, [
                (r["wav_filename"], str(root / r["wav_filename"]), r["label"], str(r.get("speaker", ""))) for r in rows]
        if rows and {"wav", "emo"} <= set(rows[0]):  # an EmoBox manifest: its dataset's label map, if beside it
            maps = [p / "label_map.json" for p in (path.parent, path.parent.parent) if (p / "label_map.json").exists()]
            label_map = json.loads(maps[0].read_text()) if maps else {}
            return path.stem, [(r["wav"], str(root / r["wav"]), label_map.get(r["emo"], r["emo"]),
                                str(r.get("speaker", ""))) for r in rows]
        raise CorpusError(f"--test-on {path}: JSON lines with neither wav_filename and label (EmoBox track2) nor "
                          "wav and emo (an EmoBox manifest)")
    return path.stem, table_rows(path, root)


def json_rows(path):
    try:
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
    except (ValueError, UnicodeDecodeError) as e:
        raise CorpusError(f"--test-on {path}: not JSON lines ({e})") from None
    if not rows or not all(isinstance(r, dict) for r in rows):
        raise CorpusError(f"--test-on {path}: no JSON object per line")
    return rows


def table_rows(path, root):
    """A CSV or TSV test set: path and label columns (any case), id and speaker if there."""
    try:
        rows = spreadsheet_rows(path)
    except CorpusError as e:
        raise CorpusError(f"--test-on {e}") from None
    if not rows or not {"path", "label"} <= set(rows[0]):
        raise CorpusError(f"--test-on {path}: a test set's CSV needs path and label columns")
    return [(r["path"], r["path"] if os.path.isabs(r["path"]) else str(root / r["path"]), r["label"],
             r.get("speaker", "")) for r in rows]


def classes_of(labels, classes, where):
    """Each raw label as the model's class naming the same emotion; one line naming the label and the file
    when the model has none."""
    by_emotion = {emotion(c): c for c in classes}
    mapped = []
    for label in labels:
        if emotion(label) not in by_emotion:
            raise CorpusError(f"--test-on {where}: its label {label!r} names no class of the model "
                              f"({', '.join(classes)}); leave the file out, or keep only the classes it has")
        mapped.append(by_emotion[emotion(label)])
    return mapped


def load(paths, roots, corpus):
    """The test sets of --test-on (roots: --test-root, in the same order, "" or missing for the default),
    their labels mapped onto the corpus's classes, checked: no label outside them, every file there, no
    utterance shared with the training corpus (the same file, or the same IEMOCAP id), no two sets of one
    name. corpus: a corpus.Corpus, or (name, classes, training ids, training files) where there is none."""
    if not isinstance(corpus, tuple):
        corpus = (corpus.name, corpus.classes, {u.id for u in corpus.utterances},
                  {os.path.realpath(u.wav) for u in corpus.utterances})
    name_of_corpus, classes, training_ids, training_files = corpus
    if len(roots) > len(paths):
        raise CorpusError(f"--test-root: {len(roots)} folders for {len(paths)} --test-on test sets: give one per test "
                          "set, in their order ('' for the default)")
    sets = []
    for path, root in zip(paths, list(roots) + [""] * (len(paths) - len(roots))):
        name, rows = read(path, root)
        if any(s.name == name for s in sets):
            raise CorpusError(f"--test-on: two test sets are called {name}; give each file a name of its own")
        labels = classes_of([r[2] for r in rows], classes, path)
        missing = [wav for _, wav, _, _ in rows if not os.path.isfile(wav)]
        if missing:
            raise CorpusError(f"--test-on {path}: {len(missing)} of its {len(rows)} audio files are missing, e.g. "
                              f"{', '.join(missing[:3])}" + ("" if root else "; is --test-root right?"))
        sets.append(TestSet(name, str(path), [
            Utterance(id=f"{name}/{rel}", session=0, speaker=speaker, label=label, start=0.0, end=0.0, wav=wav,
                      dialog="", improvised=False) for (rel, wav, _, speaker), label in zip(rows, labels)]))
        check_overlap(sets[-1], name_of_corpus, training_ids, training_files)
    return sets


def check_overlap(test_set, corpus_name, training_ids, training_files):
    """Refuse a test set that shares an utterance with the training corpus: the same audio file, or the same
    IEMOCAP utterance id (EmoBox's IEMOCAP track2 set is drawn from IEMOCAP itself)."""
    iemocap_ids = {i for i in training_ids if UTTERANCE_ID.match(i)}
    shared = [u.wav for u in test_set.utterances
              if os.path.realpath(u.wav) in training_files or Path(u.wav).stem in iemocap_ids]
    if shared:
        raise CorpusError(f"--test-on {test_set.path}: {len(shared)} of its {len(test_set.utterances)} utterances are in "
                          f"the training corpus ({corpus_name}), e.g. {shared[0]}: a cross-corpus test set must be "
                          "another corpus")


def decode(test_sets, cache):
    """The test sets' audio added to `cache` (audio.decode's dict), every file tried: those that cannot be read
    are listed together in one line."""
    from audio import decode as decode_audio
    bad = []
    for s in test_sets:
        for u in s.utterances:
            try:
                decode_audio([u], cache)
            except CorpusError as e:
                bad.append(str(e))
    if bad:
        raise CorpusError(f"--test-on: {len(bad)} audio file(s) cannot be read: {'; '.join(bad[:3])}"
                          + (f"; and {len(bad) - 3} more" if len(bad) > 3 else ""))
    return cache


# ---------------------------------------------------------------------------- scores


def scores(y_true, probs, classes):
    """A model's (or an ensemble's) scores on a test set from its probabilities (N, classes): WA, UA (over the
    classes the set has, Sec. 3.1), macro-F1 (the same classes), per-class recall and the confusion matrix."""
    from metrics import macro_f1, scores as wa_ua
    result = wa_ua(np.asarray(y_true), np.asarray(probs).argmax(1), classes)
    result["f1"] = macro_f1(result["confusion"])
    return result


def evaluate(model, test_set, audio, classes, max_len, padding, batch_size, rt):
    """(labels, probabilities (N, classes)) of a model on a test set, its utterances prepared as the job's
    own test prepares its own (data.UtteranceDataset: the first max_len samples, peak-normalised, padded
    as the run trained)."""
    from functools import partial

    import torch
    from torch.utils.data import DataLoader

    from data import UtteranceDataset, collate_eval
    from runtime import autocast
    loader = DataLoader(UtteranceDataset(test_set.utterances, classes, max_len, "none", audio), batch_size=batch_size,
                        collate_fn=partial(collate_eval, padding=padding, max_len=max_len))
    model.eval()
    labels, probs = [], []
    with torch.no_grad():
        for x, mask, y in loader:
            with autocast(rt.precision, rt.device):
                _, logits = model(x.to(rt.device), None if mask is None else mask.to(rt.device))
            labels.append(y)
            probs.append(torch.softmax(logits.float(), -1).cpu())
    return torch.cat(labels).numpy(), torch.cat(probs).numpy()


def score_job(model, test_sets, audio, classes, cfg, rt, folder):
    """A job's model scored on each test set: {name: its scores and file}, and each set's probabilities in
    folder/targets/<name>.json (ids, labels, probabilities: what the fold ensemble of the summary and
    predict.py --score average)."""
    from files import write_json
    found = {}
    for s in test_sets:
        labels, probs = evaluate(model, s, audio, classes, cfg.max_len, cfg.padding, cfg.batch_size, rt)
        found[s.name] = dict(file=s.path, n=len(labels), **scores(labels, probs, classes))
        (Path(folder) / "targets").mkdir(parents=True, exist_ok=True)
        write_json(dict(name=s.name, file=s.path, ids=[u.id for u in s.utterances], labels=labels.tolist(),
                        probs=probs.tolist()), Path(folder) / "targets" / f"{s.name}.json")
    return found


def score_members(members, setup, test_set, audio, batch_size, rt):
    """predict.py --score: each member of an ensemble (ensemble.models, one at a time) and their mean on a test
    set: {"members": {name: scores}, "ensemble": scores, "probs": the ensemble's (N, classes)}."""
    from ensemble import models
    found, total, made = {}, 0.0, models(members, rt.device, rt.precision == "int8")
    for m in members:
        model = next(made)  # not zip(members, made): its reused tuple would hold a member while the next is read
        labels, probs = evaluate(model, test_set, audio, setup.classes, setup.max_len, setup.padding, batch_size, rt)
        found[m.name] = scores(labels, probs, setup.classes)
        total = total + probs / len(members)
        del model
    return dict(members=found, ensemble=scores(labels, total, setup.classes), probs=total)


def score_finished(folder, job, corpus, audio, test_sets, rt):
    """A finished job scored on the test sets it was not scored on yet, from its best.safetensors: its
    metrics.json gains them, as if it had been trained with them (the same model, the same evaluation).
    Several processes may try at once: they take turns (files.locked), and the later finds it done.
    Returns 1 when it scored, else 0."""
    import sys

    from board import Board
    from ensemble import Member, models
    from files import locked, read_json, write_json
    with locked(folder / ".targets.lock"):
        metrics = read_json(folder / "metrics.json", "delete the job's folder and rerun with --resume to train it again")
        todo = [s for s in test_sets if s.name not in metrics.get("targets", {})]
        if not todo:
            return 0
        if not (folder / "best.safetensors").exists():
            print(f"{job.name}: trained with --no-save, its best weights are gone: it cannot be scored on "
                  f"{', '.join(s.name for s in todo)}", file=sys.stderr)
            return 0
        spec = read_json(folder / "model.json", "train the job again in a new --out", keys=("model",))["model"]
        model = next(models([Member(job.fold, job.seed, spec, folder / "best.safetensors")], rt.device))
        found = score_job(model, todo, audio, corpus.classes, job.cfg, rt, folder)
        metrics["targets"] = {**metrics.get("targets", {}), **found}
        write_json(metrics, folder / "metrics.json")
    steps = -(-metrics["n_train"] // job.cfg.batch_size)  # optimizer steps per epoch, as the job's board counted
    Board(folder / "tb", job.cfg, rt, steps).targets(found, metrics["history"][-1]["epoch"] if metrics["history"] else 0)
    print(f"{job.name}: scored on " + ", ".join(f"{t} (WA {s['wa']:.4f} UA {s['ua']:.4f})" for t, s in found.items()),
          flush=True)
    return 1


def summary_counts(test_set):
    """'N utterances (class: n, ...)' of a test set, for the start-up line."""
    counts = Counter(u.label for u in test_set.utterances)
    return f"{test_set.name}: {len(test_set.utterances)} utterances (" + ", ".join(f"{c} {n}" for c, n in counts.items()) + ")"


# ---------------------------------------------------------------------------- the summary


def summarise(run, done, classes):
    """results.json's "targets": per test set, over the jobs scored on it, WA, UA and macro-F1 as mean, std
    and Student-t 95 % interval; the fold ensemble of each seed (the mean of its fold models' probabilities,
    as predict.py computes an ensemble's), and their mean over seeds; the pooled confusion matrix. The first
    entry, "in-corpus", holds the jobs' own tests, for comparison. {} without test sets."""
    import stats
    from metrics import macro_f1
    names = list(dict.fromkeys(t for m in done.values() for t in m.get("targets", {})))
    if not names:
        return {}
    spread = lambda v: dict(mean=float(np.mean(v)), std=stats.std(v), ci95=stats.t_interval(v))
    own = {"in-corpus": {k: dict(m, f1=macro_f1(m["confusion"])) for k, m in done.items()}}
    found = {}
    for name, jobs in {**own, **{t: {k: m["targets"][t] for k, m in done.items() if t in m.get("targets", {})}
                                 for t in names}}.items():
        entry = dict(jobs=len(jobs), **{m: spread([j[m] for j in jobs.values()]) for m in ("wa", "ua", "f1")},
                     confusion=np.sum([j["confusion"] for j in jobs.values()], axis=0).tolist())
        if name != "in-corpus":
            entry.update(file=next(iter(jobs.values()))["file"], n=next(iter(jobs.values()))["n"],
                         ensemble=fold_ensembles(run, name, sorted(jobs), classes))
        found[name] = entry
    return found


def fold_ensembles(run, name, jobs, classes):
    """Per seed, the mean of its fold models' probabilities on the test set (targets/<name>.json of each
    job), scored; and the mean of those scores over the seeds."""
    by_seed = {}
    for seed in sorted({s for _, s in jobs}):
        saved = [json.loads((Path(run) / f"fold{f}" / f"seed{s}" / "targets" / f"{name}.json").read_text())
                 for f, s in jobs if s == seed]
        probs = np.mean([np.asarray(t["probs"]) for t in saved], axis=0)
        by_seed[str(seed)] = dict(folds=len(saved), **scores(saved[0]["labels"], probs, classes))
    return dict(by_seed=by_seed, **{m: float(np.mean([e[m] for e in by_seed.values()])) for m in ("wa", "ua", "f1")})


def markdown(targets):
    """The cross-corpus table of results.md, as lines."""
    if not targets:
        return []
    pct = lambda x: f"{100 * x:.2f}"
    score = lambda e, m: pct(e[m]["mean"]) + ("" if e[m]["std"] is None else f" +/- {pct(e[m]['std'])}") + (
        "" if not e[m]["ci95"] else f" [{pct(e[m]['ci95'][0])}, {pct(e[m]['ci95'][1])}]")
    lines = ["", "Cross-corpus (--test-on): each job's best model on test sets of other corpora. Mean +/- std over "
             "the jobs [Student-t 95 % interval]; fold ensemble: the mean of each seed's fold models' probabilities, "
             "scored, then averaged over the seeds.", "",
             "| test set | utterances | jobs | WA (%) | UA (%) | macro-F1 (%) | fold ensemble WA / UA / F1 (%) |",
             "|---|---|---|---|---|---|---|"]
    for name, e in targets.items():
        ensemble = " / ".join(pct(e["ensemble"][m]) for m in ("wa", "ua", "f1")) if "ensemble" in e else "-"
        label = "this corpus (each job's own test)" if name == "in-corpus" else name
        lines.append(f"| {label} | {e.get('n', '-')} | {e['jobs']} | {score(e, 'wa')} | {score(e, 'ua')} | "
                     f"{score(e, 'f1')} | {ensemble} |")
    return lines


def plot(targets, classes, path):
    """cross_corpus.png: the pooled confusion matrix of the jobs on each test set, the in-corpus one first."""
    from figures import draw_confusion, pyplot
    from files import atomic_write
    plt = pyplot()
    fig, axes = plt.subplots(1, len(targets), figsize=(4.2 * len(targets), 4), layout="constrained", squeeze=False)
    for ax, (name, e) in zip(axes[0], targets.items()):
        draw_confusion(ax, e["confusion"], classes, f"{name}: {e['jobs']} jobs pooled")
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
