"""An exclusive, non-blocking lock on an output path for the whole run (`OUTPUT.lock`, fcntl.flock).

The lock file is opened without following a link and checked (`io.safefile.open_existing`): a symlink or a hard
link planted at `OUTPUT.lock` is refused, so the `pid host` line is never written into another file.

The lock file holds `pid host` of the holder, so a second run can say who holds it. The kernel releases a flock when
its holder exits, however it exits (SIGKILL included), so a stale lock file never blocks a later run. The holder
removes the file on release; a run that locked a file another run had just removed notices it (the path no longer
names the inode it locked) and locks again.
"""
from __future__ import annotations

import fcntl
import logging
import os
import socket
from pathlib import Path

from mmib_cli.errors import MMIBError, OutputLocked
from mmib_cli.io.safefile import UnsafeOutput, display_path, open_existing

logger = logging.getLogger(__name__)

__all__ = ["OutputLock", "OutputLocked", "lock_path"]


def lock_path(output: Path) -> Path:
    """The lock file of an output: `OUTPUT.lock` next to it."""
    return output.with_name(output.name + ".lock")


class OutputLock:
    """`with OutputLock(path):` holds an exclusive lock on `path.lock` or fails at once.

    Args:
        output: the output file or directory the lock protects.

    Raises:
        OutputLocked: another process holds the lock (the message names its pid and host).
        MMIBError: the lock file cannot be created (the output's folder is missing or not writable).
    """

    def __init__(self, output: Path) -> None:
        self.output = output
        self.path = lock_path(output)
        self._fd: int | None = None

    def acquire(self) -> OutputLock:
        """Take the lock (see the class docstring for what it raises); returns self.

        A signal (`Interrupted`) at any point leaves no lock file behind that this run created or held.
        """
        while self._fd is None:
            try:  # never through a link planted at OUTPUT.lock (see io.safefile)
                fd = open_existing(self.path, flags=os.O_RDWR, create=True)
            except UnsafeOutput:
                raise
            except MMIBError as exc:
                raise MMIBError(f"cannot write output {display_path(self.output)}: cannot create "
                                f"{display_path(self.path.name)} in {display_path(self.path.parent)}: "
                                f"{str(exc).rpartition(': ')[2]}") from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                locked = _same_file(fd, self.path)  # else the previous holder removed it: lock the new one
            except BlockingIOError:
                holder = os.read(fd, 200).decode("utf-8", "replace").strip() or "unknown"
                os.close(fd)
                raise OutputLocked(f"output {self.output} is in use by another mmib run (pid and host: {holder}; "
                                   f"lock {self.path}); wait for it to finish") from None
            except BaseException:
                _discard(fd, self.path)
                raise
            if locked:
                self._fd = fd
            else:
                os.close(fd)
        try:
            os.ftruncate(self._fd, 0)
            os.write(self._fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        except BaseException:
            self.release()
            raise
        return self

    def release(self) -> None:
        """Remove the lock file and release the lock (idempotent)."""
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        except OSError as exc:  # pragma: no cover - the lock still goes when the descriptor closes
            logger.debug("cannot remove %s: %s", self.path, exc)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _discard(fd: int, path: Path) -> None:
    """Close a lock file descriptor that never became the lock, removing the file if no other run holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if _same_file(fd, path):
            path.unlink(missing_ok=True)
    except OSError:
        pass  # another run holds it (or it is gone): its file stays
    finally:
        os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)
