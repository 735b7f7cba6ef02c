"""predict.py at the real size, on HuBERT-Large-shaped models with random weights: no download, one command.

    python realsize.py checkpoint DIR      # a random checkpoint shaped as facebook/hubert-large-ll60k (~1.2 GB, ~10 s)
    python realsize.py predict DIR         # run folders of 2 and 25 such jobs, then predict.py on them (minutes)
    python realsize.py export DIR          # predict.py --export (safetensors, then --onnx) of those runs (minutes)
    python realsize.py profile DIR         # where predict.py's time goes, piece by piece (minutes)

`predict` writes, once, in DIR: checkpoint/ (as above), best0.safetensors and best1.safetensors (two
SERModels of that checkpoint cut to 22 layers, each with its own random f0/f1 and its own noise on the
backbone's weights, as fine-tuning would leave them: no tensor is shared), run2/ and run25/ (run
folders whose jobs, fold1-5 x seed0-4, point to those two files in turn by hard links: 2.3 GB of disk
whatever the count; predict.py reads each member's file anew; their scores are 0) and
speech.wav (fixtures/speech_pauses.wav repeated to --seconds). It then runs predict.py on speech.wav
as a user would, one process per line: 2 and 25 members in fp32 and bf16 autocast (where the device has
bf16), the default precision (what `predict.py` runs with no --precision), and --int8 (a CPU), and prints
per line the audio seconds per second, the process's peak resident memory (the GPU's memory is not in it)
and the largest change of a window's probability against fp32 with the same members, then the end-to-end
speed of the default against --precision fp32. Last, one forward pass of a member on 4 windows per
precision, timed alone. `export` runs `predict.py --export` on the two run folders, with and without
--onnx, and prints the seconds and the peak resident memory of each (the exported folder is deleted after).
docs/performance.md and docs/predict.md hold the figures.
"""
import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

HERE = Path(__file__).parent
# facebook/hubert-large-ll60k's architecture (its config.json): transformers.HubertConfig fields
LARGE = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
             conv_dim=(512,) * 7, conv_kernel=(10, 3, 3, 3, 3, 2, 2), conv_stride=(5, 2, 2, 2, 2, 2, 2),
             feat_extract_norm="layer", do_stable_layer_norm=True, num_conv_pos_embeddings=128,
             num_conv_pos_embedding_groups=16, conv_bias=True)


def checkpoint(folder):
    """A HubertModel of LARGE with random weights (seeded), saved as from_pretrained reads it."""
    from transformers import HubertConfig, HubertModel
    torch.manual_seed(0)
    HubertModel(HubertConfig(**LARGE)).save_pretrained(folder)
    return Path(folder)


def run_folder(folder, weights, spec, members):
    """A run folder of `members` finished jobs (fold 1-5 for seed 0, then seed 1, ...), each with model.json,
    metrics.json (scores 0: random weights) and best.safetensors, a hard link to one of `weights` in turn."""
    from iemocap import CLASSES
    for k in range(members):
        fold, seed = str(k % 5 + 1), k // 5
        job = Path(folder) / f"fold{fold}" / f"seed{seed}"
        job.mkdir(parents=True, exist_ok=True)
        (job / "model.json").write_text(json.dumps(dict(model=spec, classes=list(CLASSES), sample_rate=16_000,
                                                        max_len=100_000, padding="fixed", fold=fold, seed=seed)))
        (job / "metrics.json").write_text(json.dumps(dict(fold=fold, seed=seed, wa=0.0, ua=0.0, n_test=0)))
        if not (job / "best.safetensors").exists():
            os.link(weights[k % len(weights)], job / "best.safetensors")


def prepare(folder, seconds):
    """checkpoint/, best0.safetensors, best1.safetensors, run2/, run25/ and speech.wav in folder, those missing."""
    from safetensors.torch import save_file

    from model import SERModel, load_backbone
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "checkpoint" / "config.json").exists():
        t0 = time.perf_counter()
        checkpoint(folder / "checkpoint")
        print(f"checkpoint/: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    weights = [folder / f"best{k}.safetensors" for k in range(2)]
    if not (folder / "spec.json").exists():
        for k, path in enumerate(weights):
            torch.manual_seed(k)  # f0, f1, the noise
            model = SERModel(load_backbone(str(folder / "checkpoint")), layers=22)
            with torch.no_grad():
                for p in model.backbone.parameters():
                    p.add_(torch.randn_like(p), alpha=1e-3)
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
        (folder / "spec.json").write_text(json.dumps(model.spec()))
    spec = json.loads((folder / "spec.json").read_text())
    for members in (2, 25):
        run_folder(folder / f"run{members}", weights, spec, members)
    x, rate = sf.read(HERE / "fixtures" / "speech_pauses.wav", dtype="float32")
    sf.write(folder / "speech.wav", np.resize(x, round(seconds * rate)), rate, subtype="PCM_16")


def predict(run, audio, flags, device):
    """predict.py in its own process: (window probabilities (windows, classes), audio-s/s, peak RSS in GiB)."""
    with tempfile.TemporaryDirectory() as tmp:
        out, err = Path(tmp) / "out.jsonl", Path(tmp) / "err.txt"
        command = [sys.executable, str(HERE / "predict.py"), "--run", str(run), "--segments", "--json", "--out",
                   str(out), *flags, *(["--device", device] if device else []), str(audio)]
        with open(err, "w") as stderr:
            process = subprocess.Popen(command, stderr=stderr)
            _, status, usage = os.wait4(process.pid, 0)  # its own rusage: the peak resident memory
            process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode:
            raise SystemExit(f"error: {' '.join(command)} failed:\n{err.read_text()[-2000:]}")
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        heard, seconds = map(float, re.findall(r"([\d.]+) s of audio in ([\d.]+) s", err.read_text())[-1])
    probs = np.array([[v for k, v in r.items() if k.startswith("p_")] for r in rows])
    return probs, heard / seconds, usage.ru_maxrss * 1024 / 2 ** 30  # ru_maxrss: kB on Linux


def measure(folder, device, members):
    """predict.py on speech.wav per ensemble and precision, one process each: a table, and the end-to-end
    ratio of the default precision to fp32."""
    folder = Path(folder)
    cuda = device.startswith("cuda") or (not device and torch.cuda.is_available())
    bf16 = torch.cuda.is_bf16_supported() if cuda else torch.ops.mkldnn._is_mkldnn_bf16_supported()
    lines = [(n, name, flags) for n in members for name, flags in
             [("fp32", ["--precision", "fp32"]), ("bf16", ["--precision", "bf16"]), ("default", []), ("int8", ["--int8"])]
             if (name != "bf16" or bf16) and (name != "int8" or not cuda)]
    seconds = sf.info(str(folder / "speech.wav")).duration
    print(f"predict.py on {seconds:.1f} s of speech (speech.wav, 6.25 s windows every 3.125 s, fixed padding), "
          f"HuBERT-Large cut to 22 layers, random weights; {'a GPU' if cuda else f'{torch.get_num_threads()} threads'}; "
          f"the default precision here: {'bf16' if bf16 else 'fp32'}")
    print("\n| members | precision | audio-s/s | peak RSS (GiB) | largest change of a probability vs fp32 | "
          "windows of the same emotion |\n|---|---|---|---|---|---|", flush=True)
    reference, speeds = {}, {}
    for n, name, flags in lines:
        probs, speeds[n, name], peak = predict(folder / f"run{n}", folder / "speech.wav", ["--batch-size", "4", *flags],
                                               device)
        reference.setdefault(n, probs)
        change = np.abs(probs - reference[n]).max()
        same = (probs.argmax(1) == reference[n].argmax(1)).mean()
        print(f"| {n} | {name} | {speeds[n, name]:.3f} | {peak:.2f} | "
              + ("(reference)" if name == "fp32" else f"{change:.1e}") + f" | {100 * same:.0f} % |", flush=True)
    print("\nend to end, the default precision against --precision fp32: "
          + ", ".join(f"{n} members {speeds[n, 'default'] / speeds[n, 'fp32']:.2f}x" for n in members))


def exports(folder, members):
    """predict.py --export of each run folder, safetensors alone and with --onnx, one process each: seconds and
    peak resident memory. Each exported folder is deleted once measured (25 members: 28 GB each)."""
    print("\n| members | export | seconds | peak RSS (GiB) | size (GB) |\n|---|---|---|---|---|", flush=True)
    for n in members:
        for name, flags in (("safetensors", []), ("safetensors + ONNX", ["--onnx"])):
            with tempfile.TemporaryDirectory(dir=folder) as tmp:
                command = [sys.executable, str(HERE / "predict.py"), "--run", str(Path(folder) / f"run{n}"),
                           "--export", str(Path(tmp) / "model"), *flags]
                t0 = time.perf_counter()
                process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
                _, status, usage = os.wait4(process.pid, 0)
                took, err = time.perf_counter() - t0, process.stderr.read()
                if os.waitstatus_to_exitcode(status):
                    raise SystemExit(f"error: {' '.join(command)} failed:\n{err[-2000:]}")
                size = sum(p.stat().st_size for p in (Path(tmp) / "model").iterdir()) / 1e9
            print(f"| {n} | {name} | {took:.0f} | {usage.ru_maxrss * 1024 / 2 ** 30:.2f} | {size:.1f} |", flush=True)


def forward_times(folder, device, repeats=3):
    """{precision: seconds} of one forward pass of a member on 4 windows of 6.25 s (the best of `repeats`):
    the model's own speed, without what predict.py pays per member (reading, building, quantizing)."""
    import ensemble
    from runtime import autocast
    members, _ = ensemble.load_run(Path(folder) / "run2")
    device, _ = ensemble.resolve(device)
    x = torch.randn(4, 100_000, generator=torch.Generator().manual_seed(0)).to(device)
    model = next(ensemble.models(members[:1], device))
    times = {}
    for precision in ("fp32", "bf16", "int8"):
        if precision == "int8" and device.type != "cpu":
            continue
        net = next(ensemble.models(members[:1], device, int8=True)) if precision == "int8" else model
        best = float("inf")
        with torch.no_grad():  # as predict.py
            for _ in range(repeats + 1):  # the first: warm-up
                t0 = time.perf_counter()
                with autocast(precision, device):
                    net(x)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                best = min(best, time.perf_counter() - t0) if _ else best
        times[precision] = best
    return times


def profile(folder, members, device):
    """Where the time of predict.py goes, piece by piece, on each ensemble of `members` in fp32 and in the
    default precision: predict.py's own functions timed in this process (decoding in this process too, no
    workers): reading and resampling the audio, cutting and preparing the windows, padding them, reading
    and building each member, its conv front end, its transformer layers and the rest of it (f0, f1), writing
    the table; what is left (the members' mean, moving tensors, Python) is "other". Returns the rows printed."""
    import audio
    import ensemble
    import predict
    import windows
    device, default = ensemble.resolve(device)
    speech = str(Path(folder) / "speech.wav")
    seconds = sf.info(speech).duration
    rows = []
    for n in members:
        for precision in dict.fromkeys(("fp32", default)):
            spent = dict.fromkeys(("reading and resampling the audio", "cutting and preparing the windows",
                                   "padding the windows", "reading and building the members",
                                   "conv front end", "transformer layers", "f0, f1", "writing the table"), 0.0)
            with timing(audio, "load_audio", spent, "reading and resampling the audio"), \
                    timing(windows.audio, "prepare", spent, "cutting and preparing the windows"), \
                    timing(ensemble, "pad", spent, "padding the windows"), \
                    timing(ensemble, "models", spent, "reading and building the members", generator=True), \
                    modules_timed(spent, device):
                members_, setup = ensemble.load_run(Path(folder) / f"run{n}")
                t0 = time.perf_counter()
                recordings = ensemble.predict(members_, setup, [speech], setup.max_len, device=device, batch_size=4,
                                              workers=0, progress=False, precision=precision)
                t1 = time.perf_counter()
                predict.table(predict.rows(recordings, setup, True), predict.columns(setup.classes, True), False)
                spent["writing the table"] += time.perf_counter() - t1
                total = time.perf_counter() - t0
            model = spent.pop("model")
            spent["f0, f1"] = model - spent["conv front end"] - spent["transformer layers"]
            spent["other"] = total - sum(spent.values())
            rows.append((n, precision, total, spent))
            print(f"\n{n} members, {precision}, {seconds:.1f} s of speech: {total:.1f} s, {seconds / total:.3f} audio-s/s")
            for piece, t in spent.items():
                print(f"  {piece:55s} {t:8.2f} s  {100 * t / total:5.1f} %")
    return rows


@contextlib.contextmanager
def timing(module, name, spent, piece, generator=False):
    """module.name timed into spent[piece] while the block runs (a generator: the time of each next())."""
    real = getattr(module, name)

    def timed(*a, **kw):
        t0 = time.perf_counter()
        try:
            return real(*a, **kw)
        finally:
            spent[piece] += time.perf_counter() - t0

    def timed_generator(*a, **kw):
        it = real(*a, **kw)
        while True:
            t0 = time.perf_counter()
            try:
                item = next(it)
            except StopIteration:
                return
            finally:
                spent[piece] += time.perf_counter() - t0
            yield item

    setattr(module, name, timed_generator if generator else timed)
    try:
        yield
    finally:
        setattr(module, name, real)


@contextlib.contextmanager
def modules_timed(spent, device):
    """Forward hooks on every SERModel built meanwhile: its whole forward pass (spent["model"]), its conv front
    end and its transformer layers (the GPU synchronised at each hook, so that each piece is its own)."""
    from model import SERModel
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    spent["model"] = 0.0
    starts = {}

    def before(key):
        def hook(module, args):
            sync()
            starts[key] = time.perf_counter()
        return hook

    def after(key):
        def hook(module, args, out):
            sync()
            spent[key] += time.perf_counter() - starts[key]
        return hook

    real_init = SERModel.__init__

    def init(self, *a, **kw):
        real_init(self, *a, **kw)
        for module, key in ((self, "model"), (self.backbone.feature_extractor, "conv front end"),
                            (self.backbone.encoder, "transformer layers")):
            module.register_forward_pre_hook(before(key))
            module.register_forward_hook(after(key))

    SERModel.__init__ = init
    try:
        yield
    finally:
        SERModel.__init__ = real_init


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["checkpoint", "predict", "export", "profile"])
    p.add_argument("folder")
    p.add_argument("--seconds", type=float, default=25.0, help="predict, profile: seconds of speech (default: 25)")
    p.add_argument("--members", type=int, nargs="+", default=[2, 25], choices=[2, 25],
                   help="predict, export, profile: the ensembles measured (default: 2 25)")
    p.add_argument("--device", default="", help="predict, profile: the device (default: cuda when present)")
    args = p.parse_args(argv)
    if args.what == "checkpoint":
        checkpoint(args.folder)
        return 0
    prepare(args.folder, args.seconds)
    if args.what == "export":
        exports(args.folder, args.members)
        return 0
    if args.what == "profile":
        profile(args.folder, args.members, args.device)
        return 0
    measure(args.folder, args.device, args.members)
    times = forward_times(args.folder, args.device)
    print("\none forward pass of a member on 4 windows of 6.25 s (best of 3): "
          + ", ".join(f"{p} {t:.2f} s ({times['fp32'] / t:.2f}x)" for p, t in times.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
