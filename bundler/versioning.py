"""Bundle versions are semantic versions (semver.org 2.0), ordered as such.

Ordering matters to operators: a host that runs 1.10.0 must not be "upgraded" to 1.9.0, and
1.0.0-rc.1 comes before 1.0.0. Whether a string is a version, whether a name is a bundle name,
and which of two versions is higher are verification rules (the host state refuses a rollback by
them), so all three are defined once, in the shared code (runtime_stub/verify.py, standard
library only) and re-exported here: the builder and every verifier order versions alike.
"""

from __future__ import annotations

from runtime_stub.verify import (  # noqa: F401 - re-exported: the library's names for them
    check_bundle_name,
    check_version,
    compare_versions,
    version_key,
)

__all__ = ["check_bundle_name", "check_version", "compare_versions", "version_key"]
