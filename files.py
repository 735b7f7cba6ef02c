"""Files written so that a killed process, a full disk or a neighbour never leaves half of one,
and read back so that a damaged one is named in one line."""
import contextlib
import errno
import json
import os
import socket
from pathlib import Path

from settings import DamagedFile, DiskFull

HOST = socket.gethostname()



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
    """flock(2) on the file `path` for the block: the processes that rebuild one report take turns.
    fcntl is POSIX's, imported here: the modules that only read files import on any platform."""
    import fcntl
    with open(path, "a") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        yield
