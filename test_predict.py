"""predict.py: the fold models of a run, or an export of them, on any audio file. One tiny run
(fold 1, two seeds) is trained once for the module; the command lines run as a user would."""
import contextlib
import dataclasses
import functools
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import weakref
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader

import audio
import corpus
import data
import ensemble
import iemocap
import export
import predict
import runtime
import train
from conftest import HERE, TINY, cli, write_av
from model import model_from_spec
from windows import Recordings, window_starts


def json_rows(text):
    return [json.loads(line) for line in text.splitlines()]


def probs(row, classes):
    return np.array([row[f"p_{c}"] for c in classes])


@pytest.fixture(scope="module")
def run(small_corpus, tmp_path_factory):
    """Fold 1 trained with seeds 0 and 1: an ensemble of two, and a fold with two seeds. A tiny model
    trained for one epoch is nearly uniform (probabilities 0.23-0.27), where two different files could pass
    for one another; so each model's logits are then centred over the fold's test utterances and scaled by
    30 (its f1 layer rewritten), and its test rerun by the training pipeline's own evaluation
    (train.evaluate), whose scores and confusion replace those of metrics.json. Measured on the 16 test
    utterances: the ensemble's top class gets 0.44 on average (0.28 at least) where a uniform guess gets
    0.25; every class is some utterance's top class; two different utterances differ by 0.04 to 0.6
    (median 0.27) in some class's probability."""
    out = tmp_path_factory.mktemp("predict") / "run"
    done = cli("reproduce.py", *TINY, "--demo-corpus", small_corpus, "--fold", "1", "--seeds", "2", "--workers", "0",
               "--out", out)
    assert done.returncode == 0, done.stderr[-2000:]
    rt = runtime.Runtime(torch.device("cpu"), "fp32")
    utterances = {u.id: u for u in iemocap.read_iemocap(small_corpus)}
    for job in ("fold1/seed0", "fold1/seed1"):
        info = json.loads((out / job / "model.json").read_text())
        test = [utterances[i] for i in corpus.read_split(out / job / "split")["test"]]
        dataset = data.UtteranceDataset(test, tuple(info["classes"]), info["max_len"], cache=audio.decode(test))
        loader = DataLoader(dataset, batch_size=16,
                            collate_fn=functools.partial(data.collate_eval, padding=info["padding"], max_len=info["max_len"]))
        model = model_from_spec(info["model"]).eval()
        weights = load_file(out / job / "best.safetensors")
        model.load_state_dict({k: v for k, v in weights.items() if not k.startswith("center_loss.")})
        with torch.inference_mode():
            mean = torch.cat([model(x)[1] for x, _, _ in loader]).mean(0)
        weights["f1.weight"], weights["f1.bias"] = 30 * weights["f1.weight"], 30 * (weights["f1.bias"] - mean)
        save_file(weights, out / job / "best.safetensors")
        model.load_state_dict({k: v for k, v in weights.items() if not k.startswith("center_loss.")})
        metrics = json.loads((out / job / "metrics.json").read_text())
        metrics.update({k: v for k, v in train.evaluate(model, loader, rt, "test").items() if k in ("wa", "ua", "confusion")})
        (out / job / "metrics.json").write_text(json.dumps(metrics))
        # the test's probabilities, utterance by utterance, from the training pipeline's dataset reading each file
        # as predict.py does (the test itself read the int16 copy audio.decode keeps: 1e-3 apart at this sharpness)
        files = DataLoader(data.UtteranceDataset(test, tuple(info["classes"]), info["max_len"]), batch_size=16,
                           collate_fn=loader.collate_fn)
        with torch.inference_mode():
            np.save(out / job / "test_probs.npy", torch.cat([model(x)[1].softmax(-1) for x, _, _ in files]).numpy())
    return out


@pytest.fixture(scope="module")
def classes(run):
    return json.loads((run / "fold1" / "seed0" / "model.json").read_text())["classes"]


@pytest.fixture(scope="module")
def test_wavs(run, small_corpus):
    """fold1/seed0's test utterances: (wav path, label)."""
    by_id = {u.id: u for u in iemocap.read_iemocap(small_corpus)}
    return [(by_id[i].wav, by_id[i].label) for i in corpus.read_split(run / "fold1" / "seed0" / "split")["test"]]


@pytest.fixture(scope="module")
def inputs(test_wavs, tmp_path_factory):
    """a.wav and b.wav (16 kHz int16 mono), a44k.wav (a as 44.1 kHz float stereo), broken.wav (not audio),
    and list.txt naming a44k.wav and b.wav by relative paths."""
    folder = tmp_path_factory.mktemp("inputs")
    shutil.copy(test_wavs[0][0], folder / "a.wav")
    shutil.copy(test_wavs[1][0], folder / "b.wav")
    x, rate = sf.read(folder / "a.wav", dtype="float32")
    y = soxr.resample(x, rate, 44_100)
    sf.write(folder / "a44k.wav", np.stack([y, 0.5 * y], axis=1), 44_100, subtype="FLOAT")
    (folder / "broken.wav").write_bytes(b"RIFF\x00\x00this is not a wav file at all")
    (folder / "list.txt").write_text("# the copy, then b\na44k.wav\n\nb.wav\n")
    return folder


@pytest.fixture(scope="module")
def mixed(run, inputs):
    """The default ensemble on a.wav, the list (a44k.wav, b.wav) and broken.wav, as JSON lines."""
    done = cli("predict.py", "--run", run, "--json", inputs / "a.wav", inputs / "list.txt", inputs / "broken.wav")
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def test_windows_start_every_half_window_until_one_reaches_the_end():
    assert window_starts(8000, 8000) == [0]
    assert window_starts(8001, 8000) == [0, 4000]
    assert window_starts(20000, 8000) == [0, 4000, 8000, 12000]  # the last one ends at 20000
    assert window_starts(20000, 8000, crop=True) == [0]
    assert window_starts(100, 8000) == [0]


def test_a_folder_gives_its_audio_files_recursively_in_sorted_order(tmp_path):
    for name in ("b.wav", "a/z.flac", "a/c.WAV", "notes.txt", "a/d.ogg.part"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    assert predict.expand([str(tmp_path)]) == [str(tmp_path / n) for n in ("a/c.WAV", "a/z.flac", "b.wav")]


def test_a_folder_gives_the_audio_of_videos_and_compressed_files_too(tmp_path):
    names = ["a.mp4", "b.M4A", "c.webm", "d.mkv", "e.avi", "f.mov", "g.mp3", "h.opus", "i.aac", "j.png"]
    for name in names:
        (tmp_path / name).write_bytes(b"")
    assert predict.expand([str(tmp_path)]) == [str(tmp_path / n) for n in names[:-1]]


@pytest.mark.parametrize("padding", ["fixed", "dynamic"])
def test_a_window_gets_the_same_probabilities_alone_and_in_a_sorted_batch(run, test_wavs, padding):
    members, setup = ensemble.load_run(run)
    setup = dataclasses.replace(setup, padding=padding)  # dynamic: zero-padded to the batch's longest, with the mask
    paths = [wav for wav, _ in test_wavs[:4]]
    together = ensemble.predict(members, setup, paths, 8000, batch_size=8, workers=0, progress=False)
    alone = [ensemble.predict(members, setup, [p], 8000, batch_size=1, workers=0, progress=False)[0] for p in paths]
    for a, b in zip(together, alone, strict=True):
        assert a.path == b.path and a.starts == b.starts and len(a.starts) > 1
        assert np.abs(a.probs - b.probs).max() < 1e-5


def test_rows_keep_the_input_order_and_a_list_names_paths_relative_to_its_folder(mixed, inputs):
    paths = [r["path"] for r in json_rows(mixed.stdout)]
    assert paths == [str(inputs / n) for n in ("a.wav", "a44k.wav", "b.wav", "broken.wav")]


def test_ensemble_probabilities_sum_to_one_per_file(mixed, classes):
    assert "2 model(s), softmax probabilities averaged: fold1/seed0, fold1/seed1" in mixed.stderr
    readable = [r for r in json_rows(mixed.stdout) if not r["error"]]
    assert len(readable) == 3
    for r in readable:
        p = probs(r, classes)
        assert abs(p.sum() - 1) < 1e-5 and (p >= 0).all()
        assert r["emotion"] == classes[int(p.argmax())]


def test_a_44k_stereo_float_copy_gets_the_emotion_of_the_original(mixed, classes):
    rows = {r["path"].rsplit("/", 1)[1]: r for r in json_rows(mixed.stdout)}
    original, copy = rows["a.wav"], rows["a44k.wav"]
    assert copy["emotion"] == original["emotion"]
    assert abs(copy["seconds"] - original["seconds"]) < 1e-3
    assert np.abs(probs(copy, classes) - probs(original, classes)).max() < 0.01


def test_an_unreadable_file_gets_an_error_row_and_the_others_are_predicted(mixed, inputs, classes):
    broken = json_rows(mixed.stdout)[-1]
    assert broken["path"] == str(inputs / "broken.wav") and "broken.wav" in broken["error"]
    assert broken["emotion"] is None and all(broken[f"p_{c}"] is None for c in classes)
    assert f"warning: cannot read {inputs / 'broken.wav'}" in mixed.stderr
    assert "3 files (1 unreadable)" in mixed.stderr and "audio-s/s" in mixed.stderr.splitlines()[-1]


def test_an_mp4_is_predicted_as_its_wav_and_a_video_without_audio_gets_an_error_row(run, inputs, mixed, classes,
                                                                                     tmp_path, capsys):
    x, rate = sf.read(inputs / "a.wav", dtype="float32", always_2d=True)
    write_av(tmp_path / "a.mp4", x, rate, "aac", 64_000, video="mpeg4")
    write_av(tmp_path / "silent.mp4", x, rate, video="mpeg4")
    code = predict.main(["--run", str(run), "--workers", "0", "--json", str(tmp_path / "a.mp4"), str(tmp_path / "silent.mp4")])
    assert code == 0
    out, err = capsys.readouterr()
    mp4, silent = json_rows(out)
    wav = json_rows(mixed.stdout)[0]
    assert mp4["emotion"] == wav["emotion"] and not mp4["error"]
    assert 0 <= mp4["seconds"] - wav["seconds"] <= 1024 / 16_000  # AAC ends on a whole frame
    assert np.abs(probs(mp4, classes) - probs(wav, classes)).max() < 0.05
    assert silent["emotion"] is None and f"{tmp_path / 'silent.mp4'} holds no audio stream" in silent["error"]
    assert "1 files (1 unreadable)" in err


def test_a_wav_and_a_webm_cut_short_get_error_rows_that_say_what_is_missing(run, inputs, mixed, classes, tmp_path,
                                                                          capsys):
    x, rate = sf.read(inputs / "a.wav", dtype="float32", always_2d=True)
    x = np.concatenate([x] * 3)  # long enough that half of it is more than a codec's frames
    sf.write(tmp_path / "long.wav", x, rate, subtype="PCM_16")
    write_av(tmp_path / "long.webm", np.repeat(x, 2, axis=1), rate, "libopus", 64_000)
    for name in ("long.wav", "long.webm"):
        data = (tmp_path / name).read_bytes()
        (tmp_path / f"cut{Path(name).suffix}").write_bytes(data[:len(data) // 2])  # the header still says 3 x a.wav
    code = predict.main(["--run", str(run), "--workers", "0", "--json", str(inputs / "a.wav"), str(tmp_path / "cut.wav"),
                         str(tmp_path / "cut.webm")])
    assert code == 0
    out, err = capsys.readouterr()
    whole, *cut = json_rows(out)
    assert whole["emotion"] == json_rows(mixed.stdout)[0]["emotion"] and not whole["error"]
    for row, name in zip(cut, ("cut.wav", "cut.webm")):
        assert row["emotion"] is None and all(row[f"p_{c}"] is None for c in classes)
        assert row["error"].startswith(f"{tmp_path / name} is cut short: its header says ") and "s missing" in row["error"]
    assert "1 files (2 unreadable)" in err


def test_csv_has_a_column_per_class_of_the_run_and_an_empty_or_filled_error_column(run, inputs, classes, capsys):
    code = predict.main(["--run", str(run), "--workers", "0", str(inputs / "b.wav"), str(inputs / "broken.wav")])
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == ",".join(["path", "emotion", *(f"p_{c}" for c in classes), "seconds", "error"])
    assert lines[1].startswith(f"{inputs / 'b.wav'},") and lines[1].endswith(",")
    assert lines[2].startswith(f"{inputs / 'broken.wav'},,,") and "cannot read" in lines[2]


def test_one_fold_on_its_first_windows_gives_back_the_confusion_of_its_own_test(run, test_wavs, classes, tmp_path):
    listed = tmp_path / "test.txt"
    listed.write_text("".join(f"{wav}\n" for wav, _ in test_wavs))
    out = tmp_path / "fold1.jsonl"
    done = cli("predict.py", "--run", run, "--fold", "1", "--seed", "0", "--crop", "--json", "--out", out, listed,
               "--precision", "fp32")  # the fold's test ran in fp32 (a CPU run's precision)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout == ""  # the table went to --out
    rows = json_rows(out.read_text())
    assert [r["path"] for r in rows] == [wav for wav, _ in test_wavs]
    confusion = np.zeros((len(classes), len(classes)), dtype=int)
    for r, (_, label) in zip(rows, test_wavs):
        confusion[classes.index(label), classes.index(r["emotion"])] += 1
    metrics = json.loads((run / "fold1" / "seed0" / "metrics.json").read_text())
    assert confusion.tolist() == metrics["confusion"]
    # and the probabilities themselves: the input was cut, peak-normalised and padded as the test's was
    assert np.abs(np.array([probs(r, classes) for r in rows]) - np.load(run / "fold1/seed0/test_probs.npy")).max() < 1e-5


def test_segments_give_a_row_per_window_whose_mean_is_the_file_row_and_a_plot(run, inputs, mixed, classes, tmp_path):
    png = tmp_path / "a.png"
    done = cli("predict.py", "--run", run, "--json", "--segments", "--plot", png, inputs / "a.wav")
    assert done.returncode == 0, done.stderr[-2000:]
    windows = json_rows(done.stdout)
    whole = json_rows(mixed.stdout)[0]
    assert len(windows) == len(window_starts(round(whole["seconds"] * 16_000), 8000)) > 1
    assert [w["start"] for w in windows] == [0.25 * k for k in range(len(windows))]  # hop: 4000 samples
    assert windows[-1]["end"] == pytest.approx(whole["seconds"]) and windows[0]["end"] == 0.5
    mean = np.mean([probs(w, classes) for w in windows], axis=0)
    assert np.abs(mean - probs(whole, classes)).max() < 1e-6
    assert png.read_bytes()[:4] == b"\x89PNG"


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory):
    """The run exported in fp32 and in bf16."""
    folder = tmp_path_factory.mktemp("exported")
    for dtype in ("fp32", "bf16"):
        assert predict.main(["--run", str(run), "--export", str(folder / dtype), "--dtype", dtype]) == 0
    return folder


def test_an_export_holds_the_config_the_weights_and_a_model_card(exported, classes):
    config = json.loads((exported / "fp32" / "config.json").read_text())
    assert config["classes"] == classes and config["window"] == 8000 and config["padding"] == "fixed"
    assert [(m["fold"], m["seed"]) for m in config["members"]] == [("1", 0), ("1", 1)]
    card = (exported / "fp32" / "README.md").read_text()
    assert "| fold | seed | WA (%) | UA (%)" in card and "python predict.py --model" in card
    assert sorted(p.name for p in (exported / "fp32").iterdir()) == ["README.md", "config.json", "model.safetensors"]


def test_an_fp32_export_predicts_the_probabilities_of_the_run(exported, inputs, mixed, classes):
    again = cli("predict.py", "--model", exported / "fp32", "--json", inputs / "a.wav", inputs / "list.txt",
                inputs / "broken.wav")
    assert again.returncode == 0, again.stderr
    for a, b in zip(json_rows(again.stdout), json_rows(mixed.stdout), strict=True):
        assert a["path"] == b["path"] and a["emotion"] == b["emotion"] and a["error"] == b["error"]
        if not a["error"]:
            assert np.abs(probs(a, classes) - probs(b, classes)).max() <= 1e-6


def test_a_bf16_export_is_half_the_size_and_loads_back_as_fp32(exported):
    size = lambda d: (exported / d / "model.safetensors").stat().st_size
    assert 0.45 < size("bf16") / size("fp32") < 0.55
    members, _ = ensemble.load_export(exported / "bf16")
    assert {p.dtype for model in ensemble.models(members, "cpu") for p in model.parameters()} == {torch.float32}


def test_a_run_folder_without_model_json_is_refused_in_one_line(run, tmp_path, capsys):
    old = tmp_path / "old"
    (old / "fold1").mkdir(parents=True)  # the layout before jobs: RUN/foldK/{metrics.json, best.safetensors}
    for name in ("metrics.json", "best.safetensors"):
        shutil.copy(run / "fold1" / "seed0" / name, old / "fold1" / name)
    assert predict.main(["--run", str(old), "a.wav"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "predates model.json" in err and "retrain" in err


@pytest.mark.parametrize("args, says", [
    (["--fold", "2"], "--fold 2: "),
    (["--fold", "1", "--seed", "5"], "--seed 5: "),
])
def test_a_fold_or_seed_not_in_the_run_is_one_line(run, inputs, capsys, args, says):
    assert predict.main(["--run", str(run), *args, str(inputs / "a.wav")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {says}")


def test_no_readable_file_at_all_is_one_error_line_and_exit_2(run, inputs, tmp_path, capsys):
    missing = tmp_path / "missing.wav"
    assert predict.main(["--run", str(run), "--workers", "0", str(inputs / "broken.wav"), str(missing)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert sum(line.startswith("warning: ") for line in err) == 2
    assert err[-1].startswith("error: none of the 2 input file(s) could be read")


# ==== at real size: members in turn, precision, speech segments, ONNX, shards (tiny models here) ====


@pytest.fixture(scope="module")
def six(run, tmp_path_factory):
    """A run of six members: the run's two seeds, three times over."""
    six = tmp_path_factory.mktemp("six") / "run"
    for s in range(6):
        job = six / "fold1" / f"seed{s}"
        shutil.copytree(run / "fold1" / f"seed{s % 2}", job)
        (job / "model.json").write_text(json.dumps({**json.loads((job / "model.json").read_text()), "seed": s}))
    return six


def watch_models(module, monkeypatch):
    """The number of models alive at each forward pass of a model that module.model_from_spec builds."""
    built, alive = [], []
    real_model_from_spec = module.model_from_spec

    def count_alive(model, args):
        alive.append(sum(m() is not None for m in built))

    def model_from_spec(spec, **kw):  # every model the module builds, watched, in a reference cycle as HuBERT-Large
        model = real_model_from_spec(spec, **kw)  # is (transformers' modules): freed only by the garbage collector
        model.__dict__["cycle"] = [model]
        built.append(weakref.ref(model))
        model.register_forward_pre_hook(count_alive)
        return model

    monkeypatch.setattr(module, "model_from_spec", model_from_spec)
    return alive


def test_members_run_one_at_a_time_and_average_as_the_whole_ensemble_would(six, test_wavs, monkeypatch):
    """Six members, the inputs in several chunks: at most one member's model is alive at any forward pass,
    and the probabilities are the mean of the six models' softmax."""
    members, setup = ensemble.load_run(six)
    assert len(members) == 6
    paths = [wav for wav, _ in test_wavs[:4]]
    # each of the two models alone, in one chunk: the six members' mean must be the mean of the two
    alone = [ensemble.predict([m], setup, paths, 8000, batch_size=4, workers=0, progress=False, precision="fp32")
             for m in members[:2]]
    alive = watch_models(ensemble, monkeypatch)
    monkeypatch.setattr(ensemble, "CHUNK_BYTES", 3 * 4 * 8000 * 4)  # a chunk of windows every 3 batches of 4
    got = ensemble.predict(members, setup, paths, 8000, batch_size=4, workers=0, progress=False, precision="fp32")
    assert max(alive) == 1 and len(alive) > 6 * 3  # several chunks, each member over each of their batches
    for rec, a, b in zip(got, *alone, strict=True):
        assert len(rec.probs) == len(a.probs) > 1
        assert np.abs(rec.probs - (a.probs + b.probs) / 2).max() <= 1e-6


def test_an_onnx_export_of_six_members_holds_one_at_a_time_and_their_mean(six, monkeypatch, tmp_path):
    pytest.importorskip("onnxruntime")
    members, setup = ensemble.load_run(six)
    alive = watch_models(export, monkeypatch)
    export.export(members, setup, six, tmp_path / "model", "fp32", onnx=True)
    assert max(alive) == 1 and len(alive) >= 6  # each member's probabilities, then its trace, alone
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["onnx"]["whole_graph_checked"] and config["onnx"]["max_difference"] < 1e-4
    stored = load_file(tmp_path / "model" / "model.safetensors")
    for m in members:
        saved = load_file(m.file)
        assert all(stored[f"fold1.seed{m.seed}.{k}"].equal(v) for k, v in saved.items() if not k.startswith("center_loss."))
    assert len(stored) == 6 * sum(not k.startswith("center_loss.") for k in saved)


@pytest.fixture(scope="module")
def separated(run, test_wavs):
    """precision -> the probabilities of every window of four test utterances under the run's two models
    (whose classes the `run` fixture set apart): (windows, classes)."""
    members, setup = ensemble.load_run(run)
    paths = [wav for wav, _ in test_wavs[:4]]
    return functools.cache(lambda precision: np.concatenate([r.probs for r in ensemble.predict(
        members, setup, paths, 8000, workers=0, progress=False, precision=precision)]))


@pytest.mark.parametrize("precision, tolerance", [("bf16", 0.03), ("int8", 0.05)])
def test_bf16_and_int8_stay_near_fp32_on_a_model_whose_classes_are_separated(separated, precision, tolerance):
    fp32, other = separated("fp32"), separated(precision)
    assert fp32.max(1).mean() > 0.4 and len(set(fp32.argmax(1))) == 4  # the fixture's separation
    assert not np.array_equal(other, fp32)  # it did run in that precision
    assert np.abs(other - fp32).max() <= tolerance  # measured: bf16 0.009, int8 0.020
    assert (other.argmax(1) == fp32.argmax(1)).mean() >= 0.95  # measured: 1.00 for both


# fixtures/speech_pauses.wav (fixtures/make_speech_pauses.py): three sentences, in seconds, and the file's length
SPEECH, DURATION = [(0.3, 1.432), (2.432, 3.29), (3.89, 5.051)], 5.5505625


def test_vad_rows_cover_the_sentences_and_leave_out_the_pauses(run, classes, tmp_path):
    out = tmp_path / "vad.jsonl"
    threads = torch.get_num_threads()
    assert predict.main(["--run", str(run), "--vad", "--segments", "--json", "--workers", "0", "--out", str(out),
                         str(HERE / "fixtures" / "speech_pauses.wav")]) == 0
    assert torch.get_num_threads() == threads  # importing silero_vad sets 1 thread for the whole process
    found = json_rows(out.read_text())
    segments = [(r["start"], r["end"]) for r in found]
    assert segments and all(0 <= s < e <= DURATION + 1e-6 for s, e in segments), segments
    covered = lambda a, b: sum(max(0.0, min(b, e) - max(a, s)) for s, e in segments)
    for a, b in SPEECH:  # Silero may split a sentence at a comma: coverage, not a count of segments
        assert covered(a, b) >= 0.8 * (b - a), f"sentence {a}-{b} not covered by {segments}"
    pauses = [(0.0, SPEECH[0][0]), *((p[1], q[0]) for p, q in zip(SPEECH, SPEECH[1:])), (SPEECH[-1][1], DURATION)]
    for a, b in pauses:  # 0.2 s off each end of a pause: the VAD's 30 ms padding and its frames of 32 ms
        if b - a > 0.4:
            assert covered(a + 0.2, b - 0.2) == 0, f"pause {a}-{b} classified as speech: {segments}"
    for r in found:
        assert abs(probs(r, classes).sum() - 1) < 1e-5 and r["seconds"] == pytest.approx(DURATION)


needs_onnx = pytest.mark.skipif(not all(importlib.util.find_spec(m) for m in ("onnx", "onnxruntime")),
                                reason=f"--onnx needs onnx and onnxruntime: {predict.ONNX_INSTALL}")


@needs_onnx
@pytest.mark.parametrize("padding", ["fixed", "dynamic"])
def test_an_onnx_export_gives_the_probabilities_of_pytorch(run, inputs, padding, tmp_path):
    """model.onnx run by onnxruntime alone on windows prepared as predict.py prepares them, against predict.py
    on the same windows. dynamic: the run's models fed zero-padded batches with the mask (the second input)."""
    import onnxruntime
    members, setup = ensemble.load_run(run)
    setup = dataclasses.replace(setup, padding=padding)
    export.export(members, setup, run, tmp_path, "fp32", onnx=True)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["onnx"]["inputs"] == ["waveforms", "attention_mask"][:1 + (padding == "dynamic")]
    assert config["onnx"]["max_difference"] <= 1e-4  # the export's own check, on random windows
    paths = [str(inputs / "a.wav"), str(inputs / "b.wav")]
    expected = ensemble.predict(members, setup, paths, 8000, batch_size=64, workers=0, progress=False, precision="fp32")
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    for k, rec in enumerate(expected):
        waves = [torch.from_numpy(w) for w in Recordings(paths, 8000, False)[k].waves]
        x, mask = data.pad(waves, [len(w) for w in waves], padding, 8000)
        feed = {"waveforms": x.numpy(), **({} if mask is None else {"attention_mask": mask.numpy()})}
        got = session.run(None, feed)[0]
        assert got.shape == rec.probs.shape and np.abs(got - rec.probs).max() <= 1e-4


def test_shards_concatenated_are_the_table_of_one_process(run, inputs):
    """Four files (a.wav, the list's two, broken.wav) in five shards: the first is empty, the last holds only
    the unreadable file; each writes its part, the header once per shard."""
    def table(*more):
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
            assert predict.main(["--run", str(run), "--precision", "fp32", "--workers", "0", *more,
                                 str(inputs / "a.wav"), str(inputs / "list.txt"), str(inputs / "broken.wav")]) == 0
        return out.getvalue().splitlines()
    whole = table()
    parts = [table("--shard", f"{k}/5") for k in range(1, 6)]
    assert parts[0] == whole[:1] and parts[-1][1:] == whole[-1:] and "broken.wav" in whole[-1]
    assert parts[0] + [row for part in parts for row in part[1:]] == whole


# ==== damaged model files and missing inputs: one line, nothing changed ====


def contents(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("name", ["best.safetensors", "model.json", "metrics.json"])
def test_a_damaged_file_of_a_run_is_named_in_one_line(run, inputs, tmp_path, name):
    copy = shutil.copytree(run, tmp_path / "run")
    damaged = copy / "fold1/seed1" / name
    damaged.write_bytes(damaged.read_bytes()[:damaged.stat().st_size // 2])
    before = contents(copy)
    done = cli("predict.py", "--run", copy, inputs / "a.wav")
    assert done.returncode == 2 and done.stdout == "", done.stderr
    assert done.stderr.splitlines() == [done.stderr.strip()] and done.stderr.startswith(f"error: {damaged} is damaged")
    assert "leave that job out with --fold/--seed" in done.stderr
    assert contents(copy) == before


@pytest.mark.parametrize("name", ["model.safetensors", "config.json"])
def test_a_damaged_file_of_an_export_is_named_in_one_line(exported, inputs, tmp_path, name):
    copy = shutil.copytree(exported / "fp32", tmp_path / "model")
    damaged = copy / name
    damaged.write_bytes(damaged.read_bytes()[:damaged.stat().st_size // 2])
    done = cli("predict.py", "--model", copy, inputs / "a.wav")
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(f"error: {damaged} is damaged") and "export the model again" in done.stderr


def test_an_input_that_does_not_exist_is_named(run, inputs, tmp_path, capsys):
    missing = tmp_path / "nowhere.wav"
    assert predict.main(["--run", str(run), "--workers", "0", str(missing)]) == 2
    assert capsys.readouterr().err == f"error: no such file or folder: {missing}\n"
    assert predict.main(["--run", str(run), "--workers", "0", "--json", str(missing), str(inputs / "b.wav")]) == 0
    out, err = capsys.readouterr()
    assert err.splitlines()[0] == f"warning: no such file or folder: {missing}"  # before anything is read
    assert [r["error"] for r in json_rows(out)] == [f"no such file or folder: {missing}", None]


def test_predict_iemocap_and_the_corpus_checks_run_where_fcntl_does_not_exist(run, inputs, small_corpus):
    # fcntl is POSIX's (Windows has none): only the code that shares a run among processes imports it
    code = f"""
import sys
sys.modules["fcntl"] = None  # import fcntl now raises ImportError, as on Windows
import corpus, iemocap, predict
from settings import Config
assert iemocap.main([{str(small_corpus)!r}]) == 1  # the small replica differs from the published counts
print(len(corpus.load(Config(demo=True, demo_corpus={str(small_corpus)!r})).utterances))
sys.exit(predict.main(["--run", {str(run)!r}, "--workers", "0", "--json", {str(inputs / "a.wav")!r}]))
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=HERE, capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    (row,) = json_rows(done.stdout.splitlines()[-1] + "\n")
    assert row["emotion"] and not row["error"]
