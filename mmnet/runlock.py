"""One writer per training run's folder: a lock on ``<output_dir>/run.lock`` held while training
writes there.

The lock is an ``fcntl.flock`` on the file, which the kernel releases when its holder ends in any
way, ``kill -9`` included (its data-loader workers, forked with a copy of the descriptor, close
their copies when they start). The file's content, the holder's PID and host, only names the holder
to whoever is refused: a file left by a process that died names nobody who holds it, and the
next run takes the lock and writes its own name over it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Iterator

from mmnet.errors import MMNetError

LOCK_FILE = "run.lock"


class RunFolderError(MMNetError):
    """A run's folder that another process is training into, or that cannot be written."""


# Lock descriptors this process holds: forked data-loader workers share them and close their
# copies (release_inherited), or the lock would outlive a main process killed before them.
_HELD: set[int] = set()
# flock errors of a filesystem without locks (some NFS, Lustre and FUSE mounts).
_NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


@contextlib.contextmanager
def run_lock(directory: Path, *, enabled: bool = True) -> Iterator[None]:
    """Holds the lock on ``directory`` (created if need be) for the ``with`` block; raises
    RunFolderError naming the holder when another process has it. ``enabled`` False (the other
    processes of a torchrun job, which leave writing to the main one) takes nothing. On a
    filesystem without locks the run goes on unlocked, and says so."""
    if not enabled:
        yield
        return
    path = directory / LOCK_FILE
    try:
        directory.mkdir(parents=True, exist_ok=True)
        descriptor = _acquire(path)
    except OSError as err:
        if err.errno in _NO_LOCKS:
            print(f"mmnet: {directory} is on a filesystem without file locks ({err.strerror}); nothing keeps a second run out of it", flush=True)
            yield
            return
        raise RunFolderError(f"{path}: cannot be created ({err.strerror or err}); train.output_dir must be a folder this user can write") from err
    _HELD.add(descriptor)
    try:
        _sign(path, descriptor)
        yield
    finally:
        # Removed while still held (and only if it is still this lock's file): a process waiting on
        # the old file then finds it gone (see _acquire).
        with contextlib.suppress(OSError):
            if os.stat(path).st_ino == os.fstat(descriptor).st_ino:
                path.unlink()
        _HELD.discard(descriptor)
        fcntl.flock(descriptor, fcntl.LOCK_UN)
        os.close(descriptor)


def release_inherited() -> None:
    """In a forked child (a data-loader worker): closes the copies of this process's lock
    descriptors, leaving the lock to the parent alone."""
    for descriptor in list(_HELD):
        with contextlib.suppress(OSError):
            os.close(descriptor)
    _HELD.clear()


def _sign(path: Path, descriptor: int) -> None:
    """Writes this process's name into the lock file, after saying whose name it replaces."""
    try:
        left = os.pread(descriptor, 4096, 0).decode("utf-8", "replace").strip()
        if left:
            print(f"mmnet: {path} was left by {_holder(left)}, which ended without releasing it; taking it over", flush=True)
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, (json.dumps(holder) + "\n").encode(), 0)
    except OSError as err:
        raise RunFolderError(f"{path}: cannot be written ({err.strerror or err})") from err


def _acquire(path: Path) -> int:
    """An open descriptor of ``path`` holding its lock."""
    while True:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 4096, 0).decode("utf-8", "replace").strip()
            os.close(descriptor)
            raise RunFolderError(
                f"{path.parent} is in use by another training run: {_holder(holder)} holds {path}; "
                "wait for it to end, or choose another train.output_dir"
            ) from None
        # The holder that was releasing may have removed the file between open and flock: then this
        # descriptor locks a file nobody else will find, and the lock is taken again on a new one.
        try:
            if os.stat(path).st_ino == os.fstat(descriptor).st_ino:
                return descriptor
        except FileNotFoundError:
            pass
        os.close(descriptor)


def _holder(content: str) -> str:
    """The holder a lock file names, in words."""
    try:
        holder = json.loads(content)
        return f"process {holder['pid']} on {holder['host']} (since {holder['since']})"
    except (json.JSONDecodeError, TypeError, KeyError):
        return f"a process ({content[:200]!r})" if content else "a process that has not yet written its name"
