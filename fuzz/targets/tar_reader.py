"""Fuzz target: the strict tar reader, and the whole verification pipeline on the same bytes.

    python fuzz/run.py tar_reader --seconds 600      (or: python fuzz/targets/tar_reader.py CORPUS -max_total_time=600)

For every input:

- `StrictTarReader` over an in-memory stream (plain reads) and over a file (mmap windows, the
  path `bundle verify` takes) must list the same members with the same data digests, or refuse
  at the same point with the same class and message;
- `verify_bundle` on that file, trusting fuzz/keys/fuzz.pub (the seed bundles under
  fuzz/corpus/tar_reader/ are small real bundles signed with that key, so mutations get past the
  signature), must return a report whose exit code is 0 or 10-16.

Documented: `VerificationError` and its subclasses (the reader's classes). Anything else, or a
disagreement, is a crash.
"""

from __future__ import annotations

import hashlib
import io
import sys
from typing import Any, Tuple

from _common import FUZZ_KEY, MemFile, main

_state: dict = {}


def _setup() -> None:
    if not _state:
        from bundler.signing import EcdsaChecker  # the library's fast ECDSA: the pipeline is the same
        from runtime_stub import verify as V

        _state["V"] = V
        _state["trust"] = V.load_trust([FUZZ_KEY])
        _state["ecdsa"] = EcdsaChecker()
        _state["file"] = MemFile("bundle.tar")


def _reader_view(V: Any, f: Any) -> Tuple[Any, ...]:
    reader = V.StrictTarReader(f, threaded=False)
    members = []
    try:
        while True:
            m = reader.next()
            if m is None:
                return ("end", tuple(members), reader.archive_sha256)
            h = hashlib.sha256()
            reader.read_data(h.update)
            members.append((m.name, m.size, m.mode, m.is_dir, h.hexdigest()))
    except V.VerificationError as e:
        return (e.failure_class, tuple(members), e.message, e.member)
    finally:
        reader.close()


def check(data: bytes) -> bool:
    _setup()
    V = _state["V"]
    plain = _reader_view(V, io.BytesIO(data))
    path = _state["file"].write(data)
    with open(path, "rb", buffering=0) as f:
        mapped = _reader_view(V, f)
    if plain != mapped:
        raise AssertionError(f"plain and mapped reads disagree:\n  {plain[:1]} {plain[2:]}\n  {mapped[:1]} {mapped[2:]}")
    rep = V.verify_bundle(path, _state["trust"], threaded=False, ecdsa=_state["ecdsa"])
    if rep.exit_code not in (0, 10, 11, 12, 13, 14, 15, 16):
        raise AssertionError(f"exit code {rep.exit_code}")
    if rep.ok and plain[0] != "end":
        raise AssertionError("verify accepted what the reader refuses")
    return rep.ok


if __name__ == "__main__":
    main("tar_reader", check, ["runtime_stub.verify"], also_import=["bundler.signing"])
    sys.exit(0)
