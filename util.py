"""What no concept of the paper needs, in one place: where a process runs (its device, precision
and rank under torchrun); files written so that a killed process, a full disk or a neighbour never
leaves half of one, and read back so that a damaged one is named in one line; and the record of
the software and hardware a run used. torch is imported by the functions that need it, so that
the scripts' --help answers without it."""
import contextlib
import datetime
import errno
import fcntl
import json
import os
import platform
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from settings import DamagedFile, DiskFull, UserError

HOST = socket.gethostname()


# ---------------------------------------------------------------------------- where a process runs


@dataclass(frozen=True)
class Runtime:
    """What a process decides when it starts, not on the command line: its device, the autocast
    precision, and its rank among the `size` processes of a torchrun (0 of 1 without one)."""
    device: object  # a torch.device
    precision: str
    rank: int = 0
    size: int = 1


def start_runtime(device="", precision="auto", batch_size=1, demo=False):
    """Join torchrun's process group if this process is one of its workers, and settle the device
    (--device, or cuda when present; under torchrun this worker's own GPU) and the precision
    (--precision, or default_precision). A real run (not --demo) that finds no GPU stops:
    HuBERT-Large on a CPU takes days. --device cpu runs it anyway."""
    import torch
    import torch.distributed as dist
    if "LOCAL_RANK" in os.environ and not dist.is_initialized():
        local, size = int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"])
        if size > batch_size:
            raise UserError(f"torchrun started {size} processes, more than --batch-size {batch_size}: each process "
                            "needs at least one utterance of every batch; use fewer processes or a larger batch")
        if device in ("", "cuda") and torch.cuda.is_available():  # "cuda" names no GPU: this process's own
            device = f"cuda:{local}"
        if device.startswith("cuda"):
            torch.cuda.set_device(torch.device(device))
        backend = "nccl" if device.startswith("cuda") else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(hours=1))  # long: rank 0 alone tests and saves
    if not device:
        if not torch.cuda.is_available() and not demo:
            cuda = torch.version.cuda or "none (a CPU-only build)"
            raise UserError(f"no GPU found (torch {torch.__version__}, built for CUDA {cuda}, "
                            f"torch.cuda.is_available() is False): a run on the CPU takes days; "
                            "pass --device cpu to run it there anyway")
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    rank, size = world()
    return Runtime(device, default_precision(device) if precision == "auto" else precision, rank, size)


def default_precision(device):
    """bf16 autocast on a GPU that has it, else fp32."""
    import torch
    return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"


def world():
    """(rank, world size): (0, 1) outside torchrun."""
    import torch.distributed as dist
    return (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)


def broadcast(obj):
    """rank 0's obj on every rank."""
    if world()[1] == 1:
        return obj
    import torch.distributed as dist
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier():
    if world()[1] > 1:
        import torch.distributed as dist
        dist.barrier()


def device_name(device):
    """The GPU's name, or the CPU's model and core count."""
    import torch
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        cpu = next(l for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("model name"))
        cpu = cpu.split(":", 1)[1].strip()
    except (OSError, StopIteration):
        cpu = platform.processor() or platform.machine()
    return f"{cpu} ({os.cpu_count()} cores)"


def environment(device):
    """The code (git commit), the packages and the hardware of a run, for its config.json."""
    def git(*a):
        try:
            return subprocess.run(["git", *a], capture_output=True, text=True, cwd=Path(__file__).parent).stdout.strip()
        except OSError:
            return ""
    import numpy
    import sklearn
    import torch
    import transformers
    return dict(git_commit=git("rev-parse", "HEAD"), git_dirty=bool(git("status", "--porcelain", "--untracked-files=no")),
                python=platform.python_version(), torch=torch.__version__, transformers=transformers.__version__,
                sklearn=sklearn.__version__, numpy=numpy.__version__, world_size=world()[1],
                device_name=device_name(device))


# ---------------------------------------------------------------------------- files


def read_back(path, load, advice):
    """load(path) for a file written earlier (by the suite or by a person). If it is missing or
    cannot be loaded, one line says which file, what is wrong with it and, in `advice`, what to do.
    Nothing is deleted or rewritten here: a damaged file stays for its owner to look at."""
    try:
        return load(path)
    except FileNotFoundError:
        raise DamagedFile(f"{path} is missing; {advice}") from None
    except Exception as e:  # each reader has its own: JSON, torch's zip reader, safetensors, a field that is not there
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise DamagedFile(f"{path} is damaged ({reason[:200]}); {advice}") from None


def read_json(path, advice, keys=()):
    """A JSON object holding `keys`, through read_back."""
    def load(path):
        obj = json.loads(Path(path).read_text())
        missing = [k for k in keys if not isinstance(obj, dict) or k not in obj]
        if missing:
            raise ValueError(f"no {', '.join(missing)} in it")
        return obj
    return read_back(path, load, advice)


def no_space(e):
    """Whether an exception (or one it was raised from) says the disk or the user's quota is full."""
    while e is not None:
        if getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "os error 28" in str(e):  # safetensors' words
            return True
        e = e.__cause__ or e.__context__
    return False


@contextlib.contextmanager
def writing(path, more=""):
    """A disk or quota that fills in the block ends it as DiskFull: one line naming path (and `more`)."""
    try:
        yield
    except BaseException as e:
        if no_space(e):
            raise DiskFull(f"cannot write {path}: no space left on device{more}") from None
        raise


def atomic_write(path, write):
    """write(tmp) then rename: a run killed mid-write, or a disk that fills, leaves the old file,
    never half a new one, and no temporary file. The temporary name is this process's own, so
    processes sharing a folder never mix their writes."""
    tmp = Path(f"{path}.{HOST}-{os.getpid()}.tmp")
    try:
        with writing(path, " (the file it replaces is intact)"):
            write(tmp)
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(obj, path):
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2) + "\n"))


def save_torch(obj, path):
    """torch.save through a file object, so that a full disk surfaces as an OSError saying so."""
    import torch
    with open(path, "wb") as f:
        torch.save(obj, f)


@contextlib.contextmanager
def locked(path):
    """flock(2) on the file `path` for the block: the processes that rebuild one report take turns."""
    with open(path, "a") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        yield


def pyplot():
    """matplotlib.pyplot drawing to files (Agg), imported when first needed: it is slow to import."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def summary_writer():
    """torch.utils.tensorboard.SummaryWriter, imported when first needed: it imports tensorboard, slow.
    Without tensorboard installed, one line that says what to do."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise UserError(f"TensorBoard event files need the tensorboard package ({e}): "
                        "pip install -r requirements.txt, or pass --no-tensorboard") from None
    return SummaryWriter
