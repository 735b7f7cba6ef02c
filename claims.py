"""Leases on the jobs of a run: any number of processes, on any machines that see the run folder,
share its jobs. Each claims a job by creating its lock atomically (RUN/foldK/seedS/lock,
{"host", "pid", "since"}) and moves on to the next job when the lock exists. A lock is a lease:
its process renews it (sets its modification time to now) every tenth of --lease-minutes, and a
lock not renewed for --lease-minutes is dead, whichever host holds it. The lock is also held with
flock(2) while the job trains, so a lock whose process died is told apart from a live one on the
same host at once. A dead lock is taken over with --resume (docs/runs.md, "Locks are leases").
"""
import fcntl
import itertools
import json
import os
import sys
import threading
import time
from pathlib import Path

from files import HOST, writing
from runtime import broadcast, world
from settings import UserError

RENEWALS = 10  # a claim renews its lock ten times per lease


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _now(folder):
    """The file system's time now: the modification time of a file touched in `folder`. A lock's age is
    measured against it, not against this machine's clock, so that machines whose clocks differ agree
    (an NFS server stamps both files with its own clock)."""
    probe = Path(folder) / f".now.{HOST}-{os.getpid()}"
    probe.touch()
    try:
        return os.stat(probe).st_mtime
    finally:
        probe.unlink(missing_ok=True)


def _fresh_stat(path):
    """os.stat of path, or None when it is gone. Opening the file makes an NFS client fetch its
    attributes afresh (close-to-open consistency) instead of answering from its cache."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        return os.fstat(fd)
    finally:
        os.close(fd)


def _look(lock):
    """(os.stat_result, holder, flock free) of the lock as it is now, or None when there is none.
    holder is what the lock file says ({"host", "pid", "since"}); {} when its content is damaged (not
    JSON, cut short): an unknown holder, whose lock its age alone judges."""
    try:
        fd = os.open(lock, os.O_RDWR)
    except FileNotFoundError:
        return None
    try:
        try:
            holder = json.loads(os.pread(fd, 1 << 16, 0))
        except ValueError:
            holder = {}
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # fails while its process (or a forked worker) lives
            free = True
        except BlockingIOError:
            free = False
        return os.fstat(fd), holder if isinstance(holder, dict) else {}, free
    finally:
        os.close(fd)


def _ago(seconds):
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.0f} h"


class Claim:
    """This process's hold on one job: the lock file, held with flock(2), and renewed (its modification
    time set to now) every `period` seconds by a daemon thread, which neither a long validation nor a
    long step delays, until release()."""

    def __init__(self, lock, fd, period):
        self.lock, self.fd, self.stopped = lock, fd, threading.Event()
        self.renewer = threading.Thread(target=self._renew, args=(period,), name=f"renews {lock}", daemon=True)
        self.renewer.start()

    def _renew(self, period):
        while not self.stopped.wait(period):
            try:
                os.utime(self.fd)
            except OSError:  # a file system that does not answer now: the next renewal tries again
                pass

    def release(self):
        self.stopped.set()
        self.renewer.join()
        try:
            if os.stat(self.lock).st_ino == os.fstat(self.fd).st_ino:  # not taken over after a lapse of this lease
                self.lock.unlink()
        except FileNotFoundError:
            pass
        os.close(self.fd)


def claim(job_dir, resume, lease=600.0, wait=False):
    """Try to take the job in job_dir. Returns (Claim, None) or (None, (kind, sentence)): kind is
    "finished", "held" (by a live process) or "interrupted" (its holder is dead: waits for --resume).
    A lock is dead when it was not renewed for `lease` seconds, whichever host holds it, or when it is
    this host's and no process holds its flock. wait: a live lock that its age alone judges (another
    host's) is watched until it is renewed (held) or lapses (then --resume takes it over)."""
    job_dir = Path(job_dir)
    lock, tmp = job_dir / "lock", job_dir / f"lock.{HOST}-{os.getpid()}.tmp"
    me = json.dumps(dict(host=HOST, pid=os.getpid(), since=time.strftime("%Y-%m-%d %H:%M:%S")))
    fd = None
    try:
        with writing(tmp):
            fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
            os.write(fd, me.encode())
            fcntl.flock(fd, fcntl.LOCK_EX)
            why = _claim(job_dir, lock, tmp, fd, resume, lease, wait)
    except BaseException:
        if fd is not None:
            os.close(fd)
        raise
    finally:
        tmp.unlink(missing_ok=True)
    if why:
        os.close(fd)
        return None, why
    held = Claim(lock, fd, lease / RENEWALS)
    if (job_dir / "metrics.json").exists():  # finished while we were claiming it
        held.release()
        return None, ("finished", "finished")
    if (job_dir / "state.pt").exists() and not resume:
        held.release()
        return None, ("interrupted", "interrupted: --resume continues it from its last finished epoch")
    return held, None


def _claim(job_dir, lock, tmp, fd, resume, lease, wait):
    """Make tmp (this process's lock file, open as fd) the job's lock: None when it is, else (kind, sentence)."""
    watched = None  # (inode, modification time) of the lock being waited on
    while not (job_dir / "metrics.json").exists():
        os.utime(fd)  # a lock is born renewed
        try:
            os.link(tmp, lock)  # atomic: fails when the lock exists, also over NFS
            return None
        except FileExistsError:
            seen = _look(lock)
        if seen is None:  # released meanwhile: finished, or free again
            continue
        st, holder, free = seen
        now = _now(job_dir)
        age, same = max(0.0, now - st.st_mtime), holder.get("host") == HOST
        where = (f"{holder['host']}, pid {holder.get('pid', '?')}, since {holder.get('since', '?')}"
                 if holder.get("host") else "an unknown process, its lock file damaged")
        if age <= lease and same and not free:
            return "held", f"being trained ({where}, renewed {_ago(age)} ago)"
        if age <= lease and not same:
            if wait and resume and watched in (None, (st.st_ino, st.st_mtime_ns)):
                if watched is None:
                    print(f"{job_dir}: held by {where}, renewed {_ago(age)} ago: waiting up to {_ago(lease - age)} "
                          "for it to be renewed (its process lives) or to lapse (then it is taken over)",
                          file=sys.stderr, flush=True)
                watched = st.st_ino, st.st_mtime_ns
                time.sleep(min(lease / RENEWALS, lease - age) + 0.01)
                continue
            return "held", (f"held by {where}; if that process is gone, delete {lock} and rerun with --resume, or "
                            f"rerun with --resume once it has gone {_ago(lease)} unrenewed (it was renewed "
                            f"{_ago(age)} ago)")
        if not resume:
            if age <= lease:  # this host's, and no process holds it
                pid = holder.get("pid")
                alive = "pid reused" if isinstance(pid, int) and pid > 0 and _pid_alive(pid) else "gone"
                return "interrupted", (f"interrupted, its process ({where}) is {alive}: "
                                       "--resume continues it from its last finished epoch")
            return "interrupted", (f"interrupted, its lock (held by {where}) was last renewed {_ago(age)} ago, more "
                                   f"than the lease of {_ago(lease)}: --resume continues it from its last finished "
                                   "epoch")
        if _take_over(lock, st, tmp, now, lease):
            return None
        return "held", "taken over by another process meanwhile"
    return "finished", "finished"


def _take_over(lock, dead, tmp, now, lease):
    """Replace the dead lock (`dead`: its os.stat) by tmp. Of the processes that found it dead at once,
    exactly one wins: the one whose os.link (atomic, also over NFS) creates a name unique to that
    dead lock, lock.dead-INODE-MTIME; then, if the lock is still that dead one, os.rename puts tmp in
    its place (atomic: the job is never without a lock, so no new claim slips in). The others find
    the name taken, or the lock replaced. Renaming the lock itself away first could move a live lock
    that replaced the dead one since it was judged; a link moves nothing. A winner killed between
    the two leaves its name behind, never renewed: older than a lease, the next one (.2, .3, ...)
    serves."""
    for n in itertools.count(1):
        mark = lock.with_name(f"lock.dead-{dead.st_ino}-{dead.st_mtime_ns}" + (f".{n}" if n > 1 else ""))
        try:
            os.link(tmp, mark)
        except FileExistsError:
            other = _fresh_stat(mark)
            if other is not None and now - other.st_mtime <= lease:
                return False  # another process is taking it over
            continue
        try:
            still = _fresh_stat(lock)
            if still is None or (still.st_ino, still.st_mtime_ns) != (dead.st_ino, dead.st_mtime_ns):
                return False  # taken over, released or renewed since it was judged
            os.rename(tmp, lock)
            return True
        finally:
            mark.unlink(missing_ok=True)


class Claims:
    """The jobs this process takes, in turn: `for job in Claims(out, jobs, resume, lease_minutes)` yields
    each job it could claim, held until the body of the loop is done with it, and skips the ones finished
    or held by another process (under torchrun rank 0 claims, and every rank gets the same jobs). A process
    with one job to do (--job, as every --list-jobs line) and --resume waits for a live lock of another
    host to be renewed or to lapse (claim). Afterwards, tell_skipped() says why each job left alone
    was left."""

    def __init__(self, out, jobs, resume, lease_minutes):
        self.out, self.jobs, self.resume = Path(out), jobs, resume
        self.lease, self.wait = 60 * lease_minutes, resume and len(jobs) == 1
        self.skipped = []  # (job folder, kind, sentence): "held" by others or "interrupted" (waits for --resume)

    def __iter__(self):
        for job in self.jobs:
            folder = self.out / job.name
            held, why = claim(folder, self.resume, self.lease, self.wait) if world()[0] == 0 else (None, None)
            if not broadcast(held is not None):
                if world()[0] == 0 and why[0] != "finished":
                    self.skipped.append((folder, *why))
                continue
            try:
                yield job
            finally:
                if held:
                    held.release()

    def tell_skipped(self):
        """Say why each job left alone was left; interrupted ones end the call with exit status 2."""
        for folder, _, why in self.skipped:
            print(f"{folder.relative_to(self.out)}: {why}", file=sys.stderr)
        waiting = [kind for _, kind, _ in self.skipped if kind == "interrupted"]
        if waiting:
            raise UserError(f"{len(waiting)} interrupted job(s) left alone: rerun with --resume and --out {self.out}")
