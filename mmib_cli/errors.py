"""Error hierarchy and exit codes shared by the library and the command line."""
from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit codes of every `mmib` command (documented in the README)."""

    OK = 0
    FATAL = 1
    USAGE = 2
    PARTIAL = 3
    INTERRUPTED = 130  # SIGINT
    BROKEN_PIPE = 141  # stdout's reader went away (SIGPIPE)
    TERMINATED = 143  # SIGTERM


class MMIBError(Exception):
    """Base class of every error mmib raises on purpose; carries the exit code the CLI uses."""

    exit_code: ExitCode = ExitCode.FATAL


class UsageError(MMIBError, ValueError):
    """A command-line value is wrong (exit 2): the CLI reports it as a click usage error with the help hint.

    Only values the user typed raise this; any other `ValueError` is a bug or a data problem, never a usage error.
    """

    exit_code = ExitCode.USAGE


class CheckpointNotFound(MMIBError):
    """A `--model` value is neither a directory, a registry name nor a reachable hub repo."""


class ChecksumMismatch(MMIBError):
    """A file's sha256 differs from the one the registry or config promises."""


class OfflineUnavailable(MMIBError):
    """Offline mode is on and the requested files are not in the local cache."""


class HubAccessDenied(MMIBError):
    """The hub refused the request (401/403): a token is missing or lacks access."""


class InvalidCheckpoint(MMIBError):
    """A checkpoint directory is incomplete or inconsistent with its config."""


class EncoderUnavailable(MMIBError):
    """A base encoder (text or image) cannot be located or fails verification."""


class InvalidInput(MMIBError):
    """One input record cannot be annotated (turned into an error record, not raised to the CLI)."""


class InputUnreadable(MMIBError):
    """The input cannot be read to its end (a truncated or corrupt compressed stream, an I/O error)."""


class OutputExists(MMIBError):
    """The output file exists and neither --force nor --resume was given."""

    exit_code = ExitCode.USAGE


class ResumeMismatch(OutputExists):
    """`--resume` on an output made from another input, model or options (see `OUTPUT.run.json`)."""


class OutputLocked(MMIBError):
    """Another run holds the lock of this output (`OUTPUT.lock`)."""


class OutputWriteError(MMIBError):
    """Writing the output failed (full disk, I/O error); complete lines are kept for `--resume`."""


class OutputClosed(MMIBError):
    """The reader of stdout went away (`mmib annotate ... -o - | head -1`): the run stops quietly."""

    exit_code = ExitCode.BROKEN_PIPE


class DataFormatError(MMIBError):
    """A training or evaluation data file does not follow its format."""


class BrokenInstall(MMIBError):
    """The installed packages do not import or run together (a torch/torchvision mismatch, say): the message names
    the cause and the command that fixes it (`mmib_cli.stack`)."""
