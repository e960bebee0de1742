"""Bundle versions are semantic versions (semver.org 2.0), ordered as such.

Ordering matters to operators: a host that runs 1.10.0 must not be "upgraded" to 1.9.0, and
1.0.0-rc.1 comes before 1.0.0. Whether a string is a version, and whether a name is a bundle
name, are verification rules, defined once in the shared code (runtime_stub/verify.py); the
`semver` package gives the precedence order.
"""

from __future__ import annotations

import semver

from runtime_stub.verify import check_bundle_name  # noqa: F401 - re-exported
from runtime_stub.verify import check_version as _check_version


def check_version(text: str) -> semver.Version:
    _check_version(text)  # the one rule (and its message); semver then orders what passed it
    return semver.Version.parse(text)


def version_key(text: str) -> semver.Version:
    """Sort key for versions: ``sorted(vs, key=version_key)`` gives semver precedence."""
    return check_version(text)
