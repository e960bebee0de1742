"""Error classes and the exit codes they map to.

Every failure a user can cause ends in one `BundleError` subclass. Each class carries its own exit
code so that scripts (and the stdlib verifier, which mirrors these numbers) can tell a tampered
bundle from a bad key from a typo, without parsing messages. The numbers are part of the public
interface and are documented in docs/exit-codes.md; never renumber them.
"""

from __future__ import annotations

import re
from enum import IntEnum
from typing import Optional


class ExitCode(IntEnum):
    OK = 0
    INTERNAL = 1  # a bug: reported in one line, never a traceback
    USAGE = 2  # bad command-line usage (typer/click uses 2 as well)
    INPUT = 3  # bad input file or argument: not ONNX, bad shape spec, unknown target...
    KEY = 4  # key problems: unreadable, wrong passphrase, loose permissions
    BUILD = 5  # the backend refused a target or failed to build
    OUTPUT = 6  # cannot write the output: it exists, or the disk said no
    # Verification classes: one per kind of tampering or damage.
    ARCHIVE = 10  # not a tar, bad header checksum, truncated, data after the end
    SIGNATURE = 11  # no signature, unparsable, untrusted key, bad signature
    DIGEST = 12  # a member's size or SHA-256 differs from the signed list
    MEMBERS = 13  # a member extra, missing or duplicated
    UNSAFE = 14  # link, device, FIFO, absolute path, '..', setuid, odd PAX keys, case clash
    LIMITS = 15  # member count or size over the reader's limits
    BINDING = 16  # signed metadata disagrees with the bundle: name/version/dir, engine headers
    HOST = 17  # only with --require-host: no engine in the bundle can run on this host


class BundleError(Exception):
    """A failure with a user-facing one-line message and a documented exit code."""

    code: ExitCode = ExitCode.INTERNAL

    def __init__(self, message: str, *, member: Optional[str] = None) -> None:
        super().__init__(message)
        self.message = message
        self.member = member

    @property
    def failure_class(self) -> str:
        return self.code.name.lower()

    def __str__(self) -> str:
        return self.message


class UsageError(BundleError):
    code = ExitCode.USAGE


class InputError(BundleError):
    code = ExitCode.INPUT


class KeyFileError(BundleError):
    code = ExitCode.KEY


class BuildError(BundleError):
    code = ExitCode.BUILD


class OutputError(BundleError):
    code = ExitCode.OUTPUT


class VerificationError(BundleError):
    """Base of every failure found while checking a bundle."""


class ArchiveError(VerificationError):
    code = ExitCode.ARCHIVE


class SignatureError(VerificationError):
    code = ExitCode.SIGNATURE


class DigestError(VerificationError):
    code = ExitCode.DIGEST


class MembersError(VerificationError):
    code = ExitCode.MEMBERS


class UnsafeMemberError(VerificationError):
    code = ExitCode.UNSAFE


class LimitsError(VerificationError):
    code = ExitCode.LIMITS


class BindingError(VerificationError):
    code = ExitCode.BINDING


class HostError(VerificationError):
    code = ExitCode.HOST


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
                BindingError, HostError, InputError, KeyFileError, BuildError, OutputError, UsageError):
        if int(cls.code) == int(code):
            return cls(message, member=member)
    return BundleError(message, member=member)


KEY_ID_RE = re.compile(r"[0-9a-f]{64}\Z")


def printable(text: object) -> str:
    """The one display rule for a string that may come from a bundle (or quote one).

    Printable ASCII passes; a backslash is doubled; everything else (C0 and C1 control
    characters, escape sequences, DEL, bidi overrides, lone surrogates, any non-ASCII) is written
    as a Python escape (``\\x1b``, ``\\u202e``). This is the standard library's ``unicode_escape``
    codec, identical on every Python from 3.8 on, so the CLI, ``runtime/verify.py`` and
    ``runtime/loader.py`` show the same bytes the same way, and no terminal ever receives a byte
    that a bundle chose. Rich markup is a separate concern: callers render the result as plain
    text (``rich.text.Text``, ``markup=False``), never as markup.
    """
    return str(text).encode("unicode_escape").decode("ascii")


def shown_key_id(hint: Optional[str]) -> str:
    """A signature file's key hint for display: a real key id (64 lowercase hex) or a label.

    The hint is read before anything is authenticated; one that is not a key id is never echoed.
    """
    if hint is None:
        return "(no key hint)"
    return hint if KEY_ID_RE.match(hint) else "(invalid key hint)"
