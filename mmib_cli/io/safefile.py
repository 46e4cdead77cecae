"""The one output-safety path for every file mmib creates: sidecars never follow links, outputs never overwrite inputs.

Every file mmib writes next to an output (`OUTPUT.lock`, `OUTPUT.partial`, `OUTPUT.run.json.tmp`, `OUTPUT.run.lines`,
`report.html.partial`, a Ray shard, a checkpoint's temporary files) is opened here:

- `open_new` creates it with `O_CREAT | O_EXCL | O_NOFOLLOW`: a name that already exists (a planted symlink, a hard
  link to another file, a leftover) is never opened; a leftover of ours is unlinked first (`unlink` removes a link,
  never what it points to) and the file is created again, and losing that race to another process is an error;
- `open_existing` opens a sidecar that must already exist (a `.partial` being resumed, a lock file) with
  `O_NOFOLLOW`, then checks with `fstat` that what was opened is a regular file with one link;
- `write_atomic` writes a whole file through such a new temporary file and renames it into place (`rename` replaces
  the name; it never writes through a link that sits there).

The output a user names (`-o OUT`) may itself be a symlink: `output_target` follows it to its target (documented:
the target is replaced, the link stays); the sidecars are then placed next to the target and never followed.

`refuse_same_file` is the one check that a command does not write over a file it reads (same path, `./path`, a
hard link, a symlink: compared by device and inode), and `check_output_name` finds an output name the filesystem
cannot hold (with its longest sidecar suffix) before any slow work.
"""
from __future__ import annotations

import errno
import os
import stat
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Union

from mmib_cli.errors import MMIBError, UsageError

__all__ = ["UnsafeOutput", "check_output_name", "display_path", "open_existing", "open_new", "output_target",
           "read_sidecar", "refuse_same_file", "stdio_file", "write_atomic"]

PathLike = Union[str, os.PathLike]
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


class UnsafeOutput(MMIBError):
    """A file mmib would write next to its output is a symlink, a hard link or not a regular file (exit 1)."""


def display_path(path: PathLike) -> str:
    """A path for a message or a page: bytes that are not UTF-8 shown as `\\xff` escapes (never an encoding error)."""
    text = os.fspath(path)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a directory"
    return "not a regular file"


def _check_fd(fd: int, path: PathLike) -> os.stat_result:
    """fstat `fd` (just opened for `path`): a regular file with exactly one link, else close it and raise."""
    info = os.fstat(fd)
    problem = None
    if not stat.S_ISREG(info.st_mode):
        problem = _kind(info.st_mode)
    elif info.st_nlink > 1:  # 0: removed since (a lock another run just released), not a second name
        problem = f"a file with {info.st_nlink} hard links"
    if problem:
        os.close(fd)
        raise UnsafeOutput(f"refusing to write {display_path(path)}: it is {problem}, not a file this run made; "
                           "remove it (someone may have planted it to make mmib overwrite another file)")
    return info


def _refusal(path: PathLike, exc: OSError) -> MMIBError:
    if exc.errno in (errno.ELOOP, errno.EMLINK):
        return UnsafeOutput(f"refusing to write {display_path(path)}: it is a symbolic link; remove it (a link "
                            "next to an output would make mmib overwrite the file it points to)")
    return MMIBError(f"cannot write {display_path(path)}: {exc.strerror or exc}")


def open_new(path: PathLike, *, flags: int = os.O_WRONLY, mode: int = 0o644, replace: bool = True) -> int:
    """Create `path` as a new file and return its descriptor; never opens an existing name.

    Args:
        path: the file to create.
        flags: access flags added to `O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC` (default `O_WRONLY`).
        mode: permission bits (less the umask).
        replace: an existing entry at `path` (a leftover, or a planted link) is unlinked first; else it is an error.

    Raises:
        UnsafeOutput: `path` is a directory, or was created again by someone else between unlink and create.
        MMIBError: the file cannot be created (missing folder, permission denied).
    """
    all_flags = flags | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC
    for attempt in (1, 2):
        try:
            fd = os.open(path, all_flags, mode)
        except FileExistsError as exc:
            if not replace or attempt == 2:
                raise UnsafeOutput(f"refusing to write {display_path(path)}: it exists and was not made by this run "
                                   "(another process created it); remove it and run again") from exc
            try:
                if stat.S_ISDIR(os.lstat(path).st_mode):
                    raise UnsafeOutput(f"refusing to write {display_path(path)}: it is a directory")
                os.unlink(path)  # removes a link itself, never its target
            except FileNotFoundError:
                pass
            except OSError as err:
                raise _refusal(path, err) from err
            continue
        except OSError as exc:
            raise _refusal(path, exc) from exc
        _check_fd(fd, path)
        return fd
    raise AssertionError("unreachable")  # pragma: no cover


def open_existing(path: PathLike, *, flags: int = os.O_RDWR, create: bool = False, mode: int = 0o644) -> int:
    """Open an existing sidecar without following a link and check it (regular file, one link).

    Args:
        path: the file.
        flags: access flags added to `O_NOFOLLOW | O_CLOEXEC`.
        create: create the file when missing (`O_CREAT` without `O_EXCL`: a lock file).

    Raises:
        FileNotFoundError: `path` does not exist and `create` is false.
        UnsafeOutput: it is a symbolic link, a hard link, a directory or not a regular file.
        MMIBError: another OS error.
    """
    try:
        fd = os.open(path, flags | _NOFOLLOW | _CLOEXEC | (os.O_CREAT if create else 0), mode)
    except FileNotFoundError as exc:
        if not create:
            raise
        raise _refusal(path, exc) from exc
    except OSError as exc:
        raise _refusal(path, exc) from exc
    _check_fd(fd, path)
    return fd


def read_sidecar(path: PathLike) -> bytes:
    """The bytes of a sidecar (`OUTPUT.run.json`), read without following a link.

    Raises:
        FileNotFoundError: it does not exist. UnsafeOutput, MMIBError: see `open_existing`.
    """
    fd = open_existing(path, flags=os.O_RDONLY)
    with open(fd, "rb") as handle:
        return handle.read()


def write_atomic(path: PathLike, data: bytes | Callable[[IO[bytes]], None], *, temporary: PathLike | None = None,
                 mode: int = 0o644, fsync: bool = True) -> None:
    """Write a whole file through a new temporary file (`open_new`) renamed over `path`.

    Args:
        path: the final name (a link there is replaced by the file, its target left alone).
        data: the bytes, or a function writing them to a binary file object.
        temporary: the temporary name (default `PATH.tmp`), in the same folder.
        mode: permission bits of the result (less the umask).
        fsync: push the data to disk before the rename.

    Raises:
        UnsafeOutput, MMIBError: see `open_new`; OSError: writing failed (the temporary file is removed).
    """
    path = Path(path)
    temporary = Path(temporary) if temporary is not None else path.with_name(path.name + ".tmp")
    fd = open_new(temporary, mode=mode)
    try:
        with open(fd, "wb") as handle:
            if callable(data):
                data(handle)
            else:
                handle.write(data)
            handle.flush()
            if fsync:
                os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise


def output_target(output: PathLike) -> Path:
    """The file `-o OUTPUT` names: a symlink is followed to its target (which is replaced, the link kept)."""
    return Path(os.path.realpath(output))


NAME_MAX = 255


def check_output_name(output: PathLike, suffixes: Iterable[str] = ()) -> None:
    """Refuse, before any slow work, an output name the filesystem cannot hold with its sidecar suffixes.

    Raises:
        UsageError: the name (plus its longest suffix) is over the folder's name length limit.
    """
    path = Path(output)
    folder = path.parent if str(path.parent) else Path(".")
    try:
        limit = os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = NAME_MAX
    longest = max((len(os.fsencode(path.name + suffix)) for suffix in ("", *suffixes)), default=0)
    if longest > limit:
        raise UsageError(f"output name {display_path(path.name)[:60]}... is too long: with its sidecar files it "
                         f"needs {longest} bytes, over this filesystem's limit of {limit}; give a shorter -o")


def stdio_file(stream: str) -> os.stat_result | None:
    """fstat of stdin/stdout when it is a regular file (a redirection `< file`, `> file`), else None."""
    handle = getattr(sys, stream, None)
    try:
        info = os.fstat(handle.fileno())  # type: ignore[union-attr]
    except (AttributeError, OSError, ValueError):
        return None
    return info if stat.S_ISREG(info.st_mode) else None


def _identity(path: PathLike) -> tuple[int, int] | None:
    try:
        info = os.stat(path)
    except (OSError, ValueError):
        return None
    return info.st_dev, info.st_ino


def refuse_same_file(inputs: Iterable[PathLike], outputs: Iterable[PathLike], *, what: str = "-o") -> None:
    """The one check that a command does not write over what it reads.

    Two names are the same file when they have the same device and inode (the same path, `./path`, a hard link, a
    symlink). `-` stands for stdin (an input) or stdout (an output) when they are redirected to a regular file.
    URIs (`s3://...`) are not compared.

    Args:
        inputs: the files the command reads.
        outputs: the files it writes or replaces (an output and the sidecars it writes).
        what: the option naming the output, for the message.

    Raises:
        UsageError: an output is one of the inputs.
    """
    def identity(path: PathLike, stream: str) -> tuple[int, int] | None:
        if os.fspath(path) == "-":
            info = stdio_file(stream)
            return None if info is None else (info.st_dev, info.st_ino)
        if "://" in os.fspath(path):
            return None
        return _identity(path)

    read = {}
    for path in inputs:
        key = identity(path, "stdin")
        if key is not None:
            read.setdefault(key, path)
    for path in outputs:
        key = identity(path, "stdout")
        if key is not None and key in read:
            shown = "stdout" if os.fspath(path) == "-" else display_path(path)
            source = "stdin" if os.fspath(read[key]) == "-" else display_path(read[key])
            raise UsageError(f"{what} {shown} is the input file {source} (the same file, through a path, a link or "
                             "a redirection): give another output")
