"""Shared fixtures of the tests: the synthetic replica, a small corpus, and running a script as a user would.

The tests run on a CPU without downloads, against a tiny random HuBERT and the synthetic replica:
`python -m pytest -q`.

A test is worth its time only if it can fail. To check a new one: plant the bug it is about in
the code (the sign of a difference flipped, lambda and 1 - lambda swapped, the padding let into a
mean, one member of an ensemble instead of all), run the test and watch it fail, then remove the
bug and watch it pass. A test that passes on the planted bug is rewritten until it fails on it."""
import fractions
import os
import shutil
import subprocess
import sys
from pathlib import Path

# pytest.ini runs the tests in one process per core (pytest-xdist): each process, and each script a
# test runs, computes on one thread, so the processes do not fight for the cores. The numbers of
# the tiny models do not depend on it: the demo's fold 5, pinned in test_smoke.py, is that of the README's
# table, which was run on two threads.
os.environ["OMP_NUM_THREADS"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from iemocap import CLASSES, Utterance, read_iemocap
from corpus import OTHER_CORPUS
from synthetic import make_other_corpus, make_synthetic_iemocap

HERE = Path(__file__).parent
TINY = ["--demo", "--epochs", "1", "--max-len", "8000"]  # a job in a few seconds; windows of 0.5 s


@pytest.fixture(scope="session")
def replica(tmp_path_factory):
    """The demo's corpus, and its cross-corpus test set beside it, as --demo writes them."""
    root = make_synthetic_iemocap(tmp_path_factory.mktemp("iemocap") / "IEMOCAP_full_release")
    make_other_corpus((root / OTHER_CORPUS).parent)
    return root


@pytest.fixture(scope="session")
def written(replica):
    """The generator's own record of what it wrote: {id: (code, speaker, samples)}."""
    lines = (replica / "synthetic_manifest.tsv").read_text().splitlines()[1:]
    return {uid: (code, speaker, int(n)) for uid, code, speaker, n in
            (line.split("\t") for line in lines)}


@pytest.fixture(scope="session")
def utterances(replica):
    return read_iemocap(replica)


def four_class(written):
    """{id: (label, speaker)} of the written utterances the paper keeps, exc counted as hap."""
    label = {"exc": "hap", "hap": "hap", "ang": "ang", "sad": "sad", "neu": "neu"}
    return {uid: (label[code], speaker) for uid, (code, speaker, _) in written.items()
            if code in label}


def expected_counts(written):
    kept = four_class(written)
    return {"total": len(kept),
            "sessions": {s: sum(uid[4] == str(s) for uid in kept) for s in range(1, 6)},
            "classes": {c: sum(label == c for label, _ in kept.values()) for c in CLASSES}}


def linked_copy(replica, tmp_path):
    """A copy of the replica made of hard links: cheap, and safe to delete files from."""
    return Path(shutil.copytree(replica, tmp_path / "copy", copy_function=os.link))


def cli(script, *args, timeout=600):
    """Run a script of the suite as a user would; returns the CompletedProcess."""
    return subprocess.run([sys.executable, str(HERE / script), *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=timeout)


def one_line_error(done, *words):
    """Exit 2, exactly one line on stderr, starting with "error:" and naming each word; no traceback."""
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    for word in words:
        assert word in lines[0], lines[0]


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("small") / "corpus"
    make_synthetic_iemocap(root, utterances_per_speaker=8)
    make_other_corpus((root / OTHER_CORPUS).parent, per_class=8)  # its cross-corpus test set: 32 utterances
    return root


def board(tb):
    """A job's TensorBoard event files (its tb/ folder) read back by TensorBoard's own reader, every point kept."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(tb), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    events.Reload()
    return events


def curves(tb):
    """{tag: [(step, value), ...]} of the scalars in a job's event files."""
    events = board(tb)
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def one_utterance(wav, uid="Ses01F_impro01_F000"):
    return Utterance(uid, 1, "Ses01F", "neu", 0.0, 1.0, str(wav), "Ses01F_impro01", True)


def write_av(path, x, rate, codec=None, bit_rate=None, video=None):
    """A container written with PyAV, its format from the extension: x (samples, channels) float in
    [-1, 1] as its first audio stream, encoded by `codec` ("aac", "libopus", "pcm_s16le"; None: no
    audio stream), and a 32x32 video stream of encoder `video` ("mpeg4", "libvpx") as long, if given."""
    import av  # here: only these tests write containers

    n, channels = x.shape
    layout = {1: "mono", 2: "stereo"}[channels]
    with av.open(str(path), "w") as out:
        if video:
            pictures = out.add_stream(video, rate=25)
            pictures.width, pictures.height, pictures.pix_fmt = 32, 32, "yuv420p"
        if codec:
            sound = out.add_stream(codec, rate=rate)
            sound.layout = layout
            if bit_rate:
                sound.bit_rate = bit_rate
            fmt = sound.format  # the encoder's: fltp (aac), flt (libopus), s16 (pcm_s16le)
            a = x.T if fmt.is_planar else x.reshape(1, -1)  # planar (channels, n); packed (1, n * channels)
            a = np.round(a * 32767).astype(np.int16) if fmt.packed.name == "s16" else a.astype(np.float32)
            for i in range(0, n, 1024):
                part = a[:, i:i + 1024] if fmt.is_planar else a[:, i * channels:(i + 1024) * channels]
                frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(part), format=fmt.name, layout=layout)
                frame.sample_rate, frame.pts, frame.time_base = rate, i, fractions.Fraction(1, rate)
                out.mux(sound.encode(frame))
            out.mux(sound.encode(None))
        if video:
            for k in range(max(1, 25 * n // rate)):
                picture = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")
                picture.pts = k
                out.mux(pictures.encode(picture))
            out.mux(pictures.encode(None))
    return path
