"""A self-contained folder of the selected models (predict.py --export DIR): config.json,
model.safetensors (every member under "fold<K>.seed<S>."), README.md (a model card from the run's
config.json and metrics) and, with --onnx, the ensemble as one ONNX graph checked with onnxruntime.
`predict.py --model DIR` predicts from the folder alone (ensemble.load_export). Every step holds one
member in memory at a time, whatever the ensemble's size."""
import gc
import inspect
import json
import os
import re
import struct
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

import runs
from files import atomic_write, write_json
from model import model_from_spec
from settings import MIN_SAMPLES, RUN_ONLY, UserError, flag, known
from summary import PAPER, pct

ONNX_INSTALL = "pip install -r requirements-onnx.txt (onnx and onnxruntime)"
ONNX_TOLERANCE = 1e-4  # largest |onnxruntime - torch| of a class probability accepted after --onnx
ONNX_OPSET = 17
# onnxruntime loads every weight of a graph it runs: the whole ensemble's graph is run only when its weights
# take no more than this; each member's own graph is run whatever its size
WHOLE_GRAPH_CHECK_BYTES = 4 * 2 ** 30
# Bytes per element of safetensors' dtypes. Its format: an 8-byte little-endian header length, the JSON
# header of names, dtypes, shapes and byte offsets, then the tensors' bytes in that order.
ITEM_BYTES = {"F64": 8, "F32": 4, "BF16": 2, "F16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
FLOATS = {"F64", "F32", "BF16", "F16"}


def export(members, setup, run, folder, dtype, onnx=False):
    """config.json, model.safetensors (every member's weights under "fold{K}.seed{S}.": one file to
    copy and one read to load) and README.md, a model card from the run's config.json and metrics;
    with onnx, model.onnx and model.onnx.data too (export_onnx)."""
    specs = [m.spec for m in members]
    if any(s != specs[0] for s in specs):
        raise UserError("the selected models differ in architecture: export one with --fold/--seed")
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--export {folder}: is a file, not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    spec = specs[0]
    config = dict(classes=setup.classes, sample_rate=setup.sample_rate, window=setup.max_len, hop=setup.max_len // 2,
                  padding=setup.padding, pooling=spec["pooling"], layers=spec["layers"],
                  backbone=spec["backbone_config"]["model_type"],
                  members=[dict(fold=m.fold, seed=m.seed, wa=m.wa, ua=m.ua, n_test=m.n_test) for m in members],
                  dtype=dtype, model=spec)  # one spec: the members of a run share their architecture
    if onnx:
        config["onnx"] = export_onnx(members, setup, folder, dtype)
    atomic_write(folder / "model.safetensors", lambda tmp: write_weights(tmp, members, dtype))
    write_json(config, folder / "config.json")
    card = model_card(members, setup, spec, Path(run), folder, dtype, config.get("onnx"))
    atomic_write(folder / "README.md", lambda tmp: tmp.write_text(card))
    size = (folder / "model.safetensors").stat().st_size / 2 ** 20
    print(f"exported {len(members)} model(s) ({', '.join(m.name for m in members)}) to {folder}: "
          f"model.safetensors {size:.1f} MiB ({dtype}), config.json, README.md"
          + (", model.onnx, model.onnx.data" if onnx else ""), file=sys.stderr)


def stored(weights, dtype):
    """A member's weights as the export stores them: floats in dtype ("fp32" or "bf16"), contiguous."""
    cast = torch.bfloat16 if dtype == "bf16" else torch.float32
    return {k: (v.to(cast) if v.is_floating_point() else v).contiguous() for k, v in weights.items()}


def write_weights(path, members, dtype):
    """model.safetensors of every member, under "fold{K}.seed{S}.", written one member at a time: the
    header first, from the members' own headers (names and shapes, no tensor read), then each member's
    tensors read, cast and appended. safetensors itself writes only from tensors all in memory. The file
    is readable by all (safetensors writes 0600): an export is made to be shared."""
    header, offset = {}, 0
    for m in members:
        for name, (source, shape) in m.shapes().items():
            kind = ("BF16" if dtype == "bf16" else "F32") if source in FLOATS else source
            size = int(np.prod(shape, dtype=np.int64)) * ITEM_BYTES[kind]
            header[f"fold{m.fold}.seed{m.seed}.{name}"] = dict(dtype=kind, shape=list(shape),
                                                               data_offsets=[offset, offset + size])
            offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the tensors start 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        for m in members:
            weights = stored(m.weights(), dtype)
            for name in m.shapes():
                f.write(weights.pop(name).view(-1).view(torch.uint8).numpy())  # little-endian, as safetensors
    os.chmod(path, 0o644)


# ---------------------------------------------------------------------------- ONNX


class Probabilities(torch.nn.Module):
    """waveforms (B, L) [, attention_mask (B, L)] -> (B, classes), a member's softmax probabilities: the
    graph exported per member."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, waveforms, attention_mask=None):
        return torch.softmax(self.net(waveforms, attention_mask)[1].float(), -1)


def export_onnx(members, setup, folder, dtype):
    """model.onnx (the graph) and model.onnx.data (the weights: an ensemble of HuBERT-Large passes the 2 GB
    limit of one protobuf file) in folder: the ensemble as one graph, each member's probabilities and their
    Mean, with a dynamic batch and length, taking windows prepared as predict.py prepares them. Each member
    is exported alone by torch's TorchScript exporter (seconds, where the dynamo exporter takes minutes), run
    by onnxruntime, its weights appended to model.onnx.data and freed before the next; then onnxruntime runs
    the whole graph, where its weights take at most WHOLE_GRAPH_CHECK_BYTES. Each run is on windows of two
    lengths: a difference from torch above ONNX_TOLERANCE is an error. Returns the config's "onnx" entry."""
    import onnx
    names = ["waveforms"] + (["attention_mask"] if setup.padding == "dynamic" else [])
    checks = [onnx_example(setup, 2, setup.max_len, 1), onnx_example(setup, 3, max(setup.max_len * 3 // 4 + 1, MIN_SAMPLES), 2)]
    expected, parts, diffs = [0.0 for _ in checks], [], []
    tmp = Path(tempfile.mkdtemp(prefix=".onnx-", dir=folder))
    try:
        with open(tmp / "model.onnx.data", "wb") as data:
            for k, m in enumerate(members):
                graph, probs = member_graph(m, setup, dtype, names, checks, tmp / "member.onnx")
                diffs.append(check_onnx(tmp / "member.onnx", names, checks, probs, m.name))
                expected = [e + p / len(members) for e, p in zip(expected, probs)]
                externalise(prefixed(graph, f"m{k}.", keep=names), data)
                parts.append(onnx.GraphProto())  # a copy of its own: the loaded graph's memory (its weights too)
                parts[-1].CopyFrom(graph)  # goes only with the whole message it was read into
                graph = None
                gc.collect()  # the member's torch model: transformers' modules sit in reference cycles
        model = onnx.helper.make_model(ensemble_graph(parts, names), opset_imports=graph_opsets(tmp / "member.onnx"),
                                       producer_name="predict.py --export --onnx")
        onnx.save_model(model, str(tmp / "model.onnx"))
        onnx.checker.check_model(str(tmp / "model.onnx"))  # the graph's structure; its weights stay on disk
        whole = (tmp / "model.onnx.data").stat().st_size <= WHOLE_GRAPH_CHECK_BYTES
        if whole:
            diffs.append(check_onnx(tmp / "model.onnx", names, checks, expected, "the ensemble"))
        for name in ("model.onnx.data", "model.onnx"):  # the graph last: its presence says both are whole
            os.chmod(tmp / name, 0o644)
            os.replace(tmp / name, folder / name)
    finally:
        for p in sorted(tmp.rglob("*"), reverse=True):
            p.rmdir() if p.is_dir() else p.unlink()
        tmp.rmdir()
    import onnxruntime
    size = sum((folder / n).stat().st_size for n in ("model.onnx", "model.onnx.data")) / 2 ** 20
    shapes = " and ".join(" x ".join(map(str, args[0].shape)) for args in checks)
    print(f"model.onnx + model.onnx.data ({size:.1f} MiB, opset {ONNX_OPSET}): onnxruntime {onnxruntime.__version__} "
          f"gives torch's probabilities to {max(diffs):.1e} (batches of {shapes} samples; "
          + ("each member and the whole graph)" if whole else "each member's graph alone: the whole one's weights are "
             f"over {WHOLE_GRAPH_CHECK_BYTES / 2 ** 30:.0f} GiB)"), file=sys.stderr)
    return dict(file="model.onnx", data="model.onnx.data", opset=ONNX_OPSET, inputs=names, output="probabilities",
                max_difference=max(diffs), whole_graph_checked=whole)


def onnx_example(setup, batch, length, seed):
    """Windows to trace and check with: peak-normalised noise; under dynamic padding the last item shorter."""
    x = torch.randn(batch, length, generator=torch.Generator().manual_seed(seed))
    x /= x.abs().amax(1, keepdim=True)
    if setup.padding == "fixed":
        return (x,)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[-1, length * 2 // 3:] = 0
    return x * mask, mask


def member_graph(member, setup, dtype, names, checks, path):
    """(the ONNX graph of one member's probabilities, its torch probabilities on each of `checks`). The model
    holds the weights as stored (dtype), so that the graph computes what --model computes in fp32."""
    import onnx
    # torch before 2.5 cannot export transformers' SDPA attention when given its scale (pytorch issue 125158):
    # there the same attention, computed step by step, is exported
    attention = "sdpa" if tuple(int(v) for v in re.findall(r"\d+", torch.__version__)[:2]) >= (2, 5) else "eager"
    net = model_from_spec(member.spec, attn_implementation=attention)
    net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in stored(member.weights(), dtype).items()})
    wrapped = Probabilities(net).eval()  # the wrapper too: the exporter restores its training flag recursively
    with torch.inference_mode():
        probs = [wrapped(*args).numpy() for args in checks]
    kw = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}  # torch < 2.5: none
    with warnings.catch_warnings():  # the exporter's deprecation notice; the tracer's notes on constant checks;
        # negative indices in the mask's advanced indexing (transformers' feature-vector mask): a window has at
        # least 400 samples, so at least one frame, and no index is negative
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="Exporting aten::index operator of advanced indexing")
        torch.onnx.export(wrapped, onnx_example(setup, 2, setup.max_len, 0), str(path), input_names=names,
                          output_names=["probabilities"], opset_version=ONNX_OPSET,
                          dynamic_axes={**{n: {0: "batch", 1: "length"} for n in names}, "probabilities": {0: "batch"}},
                          **kw)
    assert not any(mod.training for mod in wrapped.modules()), "the exporter left a module in training mode"
    return onnx.load(str(path)).graph, probs


def prefixed(graph, prefix, keep):
    """The graph with every name (nodes, edges, initializers, value infos, its output) prefixed, but the
    inputs in `keep`, which the members share."""
    def name(n):
        return n if n in keep or not n else prefix + n
    for node in graph.node:
        if any(a.HasField("g") or len(a.graphs) for a in node.attribute):
            raise UserError(f"--onnx: the exported graph holds a subgraph ({node.op_type}), which is not supported")
        node.name = name(node.name)
        node.input[:] = [name(n) for n in node.input]
        node.output[:] = [name(n) for n in node.output]
    for entry in [*graph.initializer, *graph.value_info, *graph.output]:
        entry.name = name(entry.name)
    return graph


def externalise(graph, data):
    """Move the graph's initializers of 1 KiB or more into the open file `data` (model.onnx.data), at its
    end, so that the graph in memory keeps only their place."""
    from onnx import TensorProto, numpy_helper
    for tensor in graph.initializer:
        if not tensor.HasField("raw_data"):
            tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor), tensor.name))
        if len(tensor.raw_data) < 1024:
            continue
        offset = data.tell()
        data.write(tensor.raw_data)
        tensor.ClearField("raw_data")
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (("location", "model.onnx.data"), ("offset", str(offset)), ("length", str(data.tell() - offset))):
            tensor.external_data.add(key=key, value=value)


def ensemble_graph(parts, names):
    """One graph of the members' graphs side by side, on the same inputs, and the Mean of their outputs."""
    import onnx
    first = parts[0]
    mean = onnx.helper.make_node("Mean", [g.output[0].name for g in parts], ["probabilities"], name="ensemble_mean")
    output = onnx.ValueInfoProto()
    output.CopyFrom(first.output[0])
    output.name = "probabilities"
    return onnx.helper.make_graph([n for g in parts for n in g.node] + [mean], "ensemble",
                                  [i for i in first.input if i.name in names], [output],
                                  initializer=[t for g in parts for t in g.initializer],
                                  value_info=[v for g in parts for v in g.value_info])


def graph_opsets(path):
    import onnx
    return onnx.load(str(path), load_external_data=False).opset_import


def check_onnx(path, names, checks, expected, what):
    """onnxruntime on the graph at path against torch's probabilities (`expected`, per check): the largest
    difference, or an error naming `what` above ONNX_TOLERANCE."""
    import onnxruntime
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    diff = max(float(np.abs(session.run(None, {n: a.numpy() for n, a in zip(names, args)})[0] - p).max())
               for args, p in zip(checks, expected))
    if not diff <= ONNX_TOLERANCE:
        shapes = " and ".join(" x ".join(map(str, args[0].shape)) for args in checks)
        raise UserError(f"--onnx: onnxruntime {onnxruntime.__version__} differs from torch by {diff:.1e} "
                        f"(> {ONNX_TOLERANCE:.0e}) for {what} on windows of {shapes}: no model.onnx was written")
    return diff


# ---------------------------------------------------------------------------- the model card


def model_card(members, setup, spec, run, folder, dtype, onnx=None):
    """README.md of an export: what it is, how to call it, what it computes, the members' test
    scores (metrics.json), the corpus and the settings of the run (config.json)."""
    saved = runs.read_config(run / "config.json") if (run / "config.json").exists() else {}
    settings, corpus, env = known(saved.get("config", {})), saved.get("corpus", {}), saved.get("environment", {})
    commit = f" (git commit {env['git_commit'][:10]})" if env.get("git_commit") else ""
    lines = [f"# Speech emotion recognition: {', '.join(setup.classes)}", "",
             f"{len(members)} model(s) trained by `reproduce.py` of this repository, a reproduction of Kang, Zhang and "
             "Jiang, *Learning Robust Self-Attention Features for Speech Emotion Recognition with Label-Adaptive Mixup* "
             f"(ICASSP 2023). Exported by `predict.py --export` from the run `{run.name}`{commit}.", ""]
    if settings.get("demo"):
        lines += ["**A demo model**: trained on the synthetic IEMOCAP-shaped corpus with a tiny random HuBERT. It "
                  "shows that the pipeline works; it knows nothing of real emotional speech.", ""]
    lines += card_use(members, setup, spec, folder, dtype, onnx)
    lines += card_scores(members, corpus, settings)
    lines += ["", "## Data", "",
              f"Corpus: {corpus.get('name', 'unknown')}, classes {', '.join(corpus.get('classes', setup.classes))}.", ""]
    if settings:
        shown = {k: v for k, v in settings.items() if k not in RUN_ONLY and v not in ("", None)}
        lines += ["## Training settings", "", "`reproduce.py` flags of the run (its `config.json`):", "",
                  "| setting | value |", "|---|---|"] + [f"| `{flag(k)}` | {v} |" for k, v in shown.items()]
        if env:
            versions = ", ".join(f"{k} {env[k]}" for k in ("torch", "transformers") if k in env)
            lines += ["", f"Trained with {versions}" + (f" on {env['device_name']}" if env.get("device_name") else "")
                      + "."]
    return "\n".join(lines) + "\n"


def card_use(members, setup, spec, folder, dtype, onnx):
    """The model card's "Use", "What it computes" and "ONNX" sections, as lines."""
    rate, window, backbone = setup.sample_rate, setup.max_len, spec["backbone_config"]
    padding = ("padded to the window with its mean, no attention mask" if setup.padding == "fixed" else
               "zero-padded in length-sorted batches, with the attention mask")
    columns = ", ".join(f"p_{c}" for c in setup.classes)
    lines = ["## Use", "", "```bash",
             f"python predict.py --model {folder.name} audio.wav more/ list.txt  # CSV: path, emotion, {columns}, "
             "seconds, error",
             f"python predict.py --model {folder.name} --segments talk.wav       # one row per window",
             "```", "",
             "## What it computes", "",
             f"- Classes, in the order of the output columns: {', '.join(setup.classes)}.",
             f"- Input: any audio file, or the first audio stream of a video (mp4, avi, webm, ...), made mono and "
             f"resampled to {rate} Hz, cut to windows of "
             f"{window} samples ({window / rate:.2f} s, the crop the models trained on) every {window // 2} samples. "
             f"Each window is divided by its own peak and {padding}, as in training. A file's probabilities are "
             "the unweighted mean of its windows'.",
             f"- Model: a {backbone['model_type']} encoder (hidden size {backbone['hidden_size']}) cut to its first "
             f"{spec['layers']} layers, pooling `{spec['pooling']}`, a 64-d projection f0 and {len(setup.classes)} "
             "logits (Fig. 1 of the paper).",
             f"- Ensemble: the mean of the softmax probabilities of {', '.join(m.name for m in members)}.",
             f"- Weights: `model.safetensors` in {dtype}, each model under the prefix `fold<K>.seed<S>.`"
             + ("; loaded back as fp32, so probabilities differ from the run's by bf16 rounding." if dtype == "bf16"
                else "."), ""]
    if onnx:
        inputs = " and ".join(f"`{n}` (batch, samples)" for n in onnx["inputs"])
        lines += ["## ONNX", "",
                  f"`model.onnx` with `model.onnx.data` (keep them together) is the whole ensemble as one graph (opset "
                  f"{onnx['opset']}): {inputs} in, `probabilities` (batch, {len(setup.classes)}) out, the mean of the "
                  "models' softmax probabilities, for windows prepared as above (float32"
                  + (", padded to the window with its mean" if setup.padding == "fixed" else
                     ", zero-padded to the batch's longest, the mask int64, 1 on samples") + "). onnxruntime gave "
                  f"PyTorch's probabilities to {onnx['max_difference']:.1e} when it was exported. Running it with "
                  "onnxruntime alone: docs/predict.md of the repository.", ""]
    return lines


def card_scores(members, corpus, settings):
    """The model card's table of the members' test scores, as lines."""
    lines = ["## Test results of the models", "",
             "Each model was tested on its own fold's held-out test set (leave-one-session-out, Sec. 3.1 of the "
             "paper). An ensemble of several folds has seen every session in training: it has no held-out score "
             "on this corpus.", "",
             "| fold | seed | WA (%) | UA (%) | test utterances |", "|---|---|---|---|---|"]
    lines += [f"| {m.fold} | {m.seed} | {pct(m.wa)} | {pct(m.ua)} | {'-' if m.n_test is None else m.n_test} |"
              for m in members]
    if len(members) > 1:
        wa, ua = np.mean([m.wa for m in members]), np.mean([m.ua for m in members])
        lines.append(f"| **mean** | | **{pct(wa)}** | **{pct(ua)}** | |")
    if corpus.get("paper") and not settings.get("demo"):
        lines.append(f"| paper (Table 3) | | {pct(PAPER['wa'])} | {pct(PAPER['ua'])} | |")
    return lines
