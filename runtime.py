"""Where a process runs: its device, its autocast precision and its rank among the processes of a
torchrun; and the record of the software and hardware a run used. torch is imported by the
functions that need it, so that the scripts' --help answers without it."""
import datetime
import os
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path

from settings import UserError


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


def autocast(precision, device):
    """The autocast context of a precision: bf16 or fp16 autocast, or none for fp32."""
    import torch
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)
