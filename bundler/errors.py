"""Error classes and the exit codes they map to.

Every failure a user can cause ends in one `BundleError` subclass. Each class carries its own exit
code so that scripts can tell a tampered bundle from a bad key from a typo, without parsing
messages. The numbers are part of the public interface and are documented in docs/exit-codes.md;
never renumber them.

The codes, the classes a verification can raise, and the display rule for bundle strings are
defined once, in the shared verification code (`runtime_stub/verify.py`, which every bundle also
carries): this module re-exports them, so an error raised while verifying is the very class the
CLI catches. Only what verification never raises (build and output errors, interrupts) is
defined here.
"""

from __future__ import annotations

from typing import Optional

from runtime_stub.verify import (  # noqa: F401 - re-exported: the library's names for them
    KEY_ID_RE,
    ArchiveError,
    BindingError,
    BundleError,
    DigestError,
    ExitCode,
    HostError,
    InputError,
    KeyFileError,
    LedgerError,
    LimitsError,
    MembersError,
    PartsError,
    RollbackError,
    SignatureError,
    UnsafeMemberError,
    UsageError,
    VerificationError,
    printable,
    shown_key_id,
)


class BuildError(BundleError):
    code = ExitCode.BUILD


class OutputError(BundleError):
    code = ExitCode.OUTPUT


class FarmError(BundleError):
    """The Ray build farm cannot do what was asked: Ray is not installed, the cluster cannot be
    reached, no node offers what a build needs, or the cluster lost a build beyond its retries
    (docs/farm.md). A build that fails on its own merits is a `BuildError`, farm or not."""

    code = ExitCode.FARM


class ExportError(BundleError):
    """`bundle export`: the bundle is authentic but cannot become the model asked for (for
    Triton: only TensorRT-RTX engines, a pre-release version, a data type Triton lacks, plans that
    cannot share one configuration; docs/triton.md). Nothing is written."""

    code = ExitCode.EXPORT


class AccuracyError(BundleError):
    """A precision variant measured outside the tolerance its own selftest will apply: the build
    refuses to ship what `loader.py selftest` would fail (--accept-accuracy-loss overrides)."""

    code = ExitCode.ACCURACY


class MediaError(BundleError):
    """`bundle copy`: the destination cannot hold the file (a FAT file system's 4 GiB - 1 limit,
    or too little free space). Refused before anything is written; the message gives the
    `bundle split` that makes parts that fit."""

    code = ExitCode.MEDIA


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM, raised where the program is so every ``finally`` and ``except
    KeyboardInterrupt`` cleanup runs (staging and temporary directories, worker processes).

    A subclass of KeyboardInterrupt so that code written for Ctrl-C handles a CI cancel or
    `timeout` (SIGTERM) the same way. The exit code is 128 + the signal number (130, 143).
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def error_for_code(code: int, message: str, member: Optional[str] = None) -> BundleError:
    """Rebuild the error of a given exit code (e.g. from a report), to re-raise it unchanged."""
    for cls in (ArchiveError, SignatureError, DigestError, MembersError, UnsafeMemberError, LimitsError,
                BindingError, HostError, RollbackError, PartsError, MediaError, InputError, KeyFileError, BuildError, OutputError, AccuracyError, UsageError,
                ExportError):
        if int(cls.code) == int(code):
            return cls(message, member=member)
    return BundleError(message, member=member)
