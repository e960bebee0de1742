"""Cases that kill surviving mutants of the shared verifier: area 'json' (see docs/testing.md,
"Mutation testing"). Same shape as tests/_edge_cases.py, whose builders these reuse: each case is
a bundle built from the good test bundle with one expected exit code (and its message in
tests/data/verifier-messages.json). Registered as edge/json-NAME by tests/test_verifier_cases.py.
"""

from __future__ import annotations

from typing import Dict, Set, Tuple

EDGES: Dict[str, Tuple[object, int]] = {}
BOTH_KEYS: Set[str] = set()  # names of cases verified against both test keys
