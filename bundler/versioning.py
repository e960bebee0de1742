"""Bundle versions are semantic versions (semver.org 2.0), ordered as such.

Ordering matters to operators: a host that runs 1.10.0 must not be "upgraded" to 1.9.0, and
1.0.0-rc.1 comes before 1.0.0. The `semver` package implements the precedence rules exactly.
"""

from __future__ import annotations

import re

import semver

from .errors import InputError


def check_version(text: str) -> semver.Version:
    try:
        return semver.Version.parse(text)
    except (ValueError, TypeError):
        raise InputError(f"version {text!r} is not a semantic version (MAJOR.MINOR.PATCH, e.g. 1.4.0 or 2.0.0-rc.1)") from None


def version_key(text: str) -> semver.Version:
    """Sort key for versions: ``sorted(vs, key=version_key)`` gives semver precedence."""
    return check_version(text)


def check_bundle_name(name: str) -> None:
    """Bundle names become directory and file names on every host: keep them boring."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._]*(-[A-Za-z0-9._]+)*", name) or len(name) > 100:
        raise InputError(
            f"bundle name {name!r}: use letters, digits, '.', '_' and inner '-' (at most 100 characters)"
        )
