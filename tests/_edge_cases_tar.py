"""Cases that kill surviving mutants of the shared verifier: area 'tar' (see docs/testing.md,
"Mutation testing"). Same shape as tests/_edge_cases.py, whose builders these reuse: each case is
a bundle built from the good test bundle with one expected exit code (and its message in
tests/data/verifier-messages.json). Registered as edge/tar-NAME by tests/test_verifier_cases.py.

What they pin: engine magics that sort above 'vtrt' and runtime versions that sort around the
header's; every byte of a ustar header the reader takes (checksum written without leading zeros or
without a terminator, the mtime field's terminator that the checksum covers, the name and prefix
fields filled to the last byte, empty numeric fields, a high bit past a field's first byte); PAX
records at the edges of their grammar; non-zero padding after data and after a PAX header; the
end-of-archive allowance followed by data; the member-count limit to the member (which also takes
the file past its first 4 MiB mmap window).
"""

from __future__ import annotations

import tarfile
from pathlib import Path
from typing import Callable, Dict, List, Set, Tuple

import test_stdlib_verifier as sv
from _edge_cases import _add, _entries, _full_trt, _pax_record, _patched, _raw_pax, _shadow, _tar
from runtime_stub import verify as shared

ROOT = sv.ROOT
README = "runtime/README.txt"
Build = Callable[[Path, Path, dict], Path]
Entry = Tuple[tarfile.TarInfo, bytes]

_MAX_MEMBERS = shared.Limits().max_members
_MAX_ZEROS = shared.Limits().max_trailing_zeros


def _checksum(data: bytearray, off: int, fmt: bytes) -> None:
    """The header at ``off`` given its true checksum, written as ``fmt`` (8 bytes)."""
    data[off + 148:off + 156] = b" " * 8
    field = fmt % sum(data[off:off + 512])
    assert len(field) == 8, field
    data[off + 148:off + 156] = field


def _raw(edit: Callable[[List[Entry], dict], List[Entry]], rel: str, patch: Callable[[bytearray, int], None],
         fmt: bytes = b"%06o\0 ") -> Build:
    """The tar of ``edit``ed entries, member ``rel``'s header bytes changed by ``patch`` by hand,
    its checksum then written as ``fmt``."""
    def build(good: Path, work: Path, ctx: dict) -> Path:
        src = sv.write_tar(work / "base.tar", edit(_entries(good), ctx) if edit else _entries(good))
        data = bytearray(src.read_bytes())
        off = sv.data_offsets(src)[f"{ROOT}/{rel}"][0]
        patch(data, off)
        _checksum(data, off, fmt)
        out = work / "case.tar"
        out.write_bytes(bytes(data))
        src.unlink()
        return out
    return build


def _put(at: int, value: bytes) -> Callable[[bytearray, int], None]:
    def patch(data: bytearray, off: int) -> None:
        data[off + at:off + at + len(value)] = value
    return patch


def _with_dir(rel: str) -> Callable[[List[Entry], dict], List[Entry]]:
    def edit(es: List[Entry], ctx: dict) -> List[Entry]:
        ti = tarfile.TarInfo(f"{ROOT}/{rel}")
        ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, 1700000000
        return es + [(ti, b"")]
    return edit


def _shadow_mode(ustar_name: str, mode: bytes) -> Build:
    """README under a PAX path of its own name, its ustar name field ``ustar_name`` (100 bytes:
    the field is full) and its mode field ``mode``."""
    return _shadow(ustar_name, mode)


def _pax_padding_not_zero(good: Path, work: Path, ctx: dict) -> Path:
    """A valid PAX record before README, one byte of its block's padding not zero."""
    rec = _pax_record("mtime", "1700000000")
    src = _raw_pax(README, rec)(good, work, ctx)
    data = bytearray(src.read_bytes())
    off = sv.data_offsets(src)[f"{ROOT}/{README}"][0]  # tarfile: the PAX header's offset
    data[off + 512 + len(rec)] = 0x01
    src.write_bytes(bytes(data))
    return src


def _data_padding_not_zero(good: Path, work: Path, ctx: dict) -> Path:
    """One byte of the padding after README's data not zero."""
    src = sv.write_tar(work / "case.tar", _entries(good))
    _, d, size = sv.data_offsets(src)[f"{ROOT}/{README}"]
    assert size % 512
    return sv.flip(src, d + size)


def _zeros_then_data(good: Path, work: Path, ctx: dict) -> Path:
    """The end-of-archive marker, then one zero byte more than the allowance, then a byte of data."""
    data = good.read_bytes()
    end = max(h + 512 + ((s + 511) & ~511) for h, _, s in sv.data_offsets(good).values()) + 1024
    out = work / "case.tar"
    out.write_bytes(data[:end] + b"\0" * (_MAX_ZEROS + 1) + b"x")
    return out


_WINDOW_BLOCKS = shared.MAP_WINDOW // 512


def _dirs_first(n_dirs: int) -> Build:
    """``n_dirs`` unsigned directory members before the signature: with the signature and the
    manifest, member ``n_dirs + 2`` is the manifest, read before any directory is judged. The
    directory whose header ends just before the first 4 MiB mmap window ends carries an 8 KB PAX
    header, whose bytes are read across the two windows."""
    def build(good: Path, work: Path, ctx: dict) -> Path:
        dirs = []
        for i in range(n_dirs):
            ti = tarfile.TarInfo(f"{ROOT}/d{i}")
            ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, 1700000000
            if i == _WINDOW_BLOCKS - 2:
                ti.pax_headers = {"mtime": "1700000000." + "0" * 8000}
            dirs.append((ti, b""))
        return sv.write_tar(work / "case.tar", dirs + _entries(good))
    return build


def _pax(records: bytes) -> Build:
    return _raw_pax(README, records)


def _size_then_long_mtime(length_field: bytes) -> Build:
    """A PAX header of two records: README's true size with its length written ``length_field``
    (a format with the length in it), then an mtime record long enough that the header is over
    100 bytes (its length has 3 digits)."""
    def build(good: Path, work: Path, ctx: dict) -> Path:
        es = _entries(good)
        size = len(es[sv.find(es, README)][1])
        body = f" size={size}\n".encode()
        first = length_field % (len(body) + len(length_field % 10)) + body
        recs = first + _pax_record("mtime", "1700000000." + "0" * 120)
        return _raw_pax(README, recs)(good, work, ctx)
    return build


EDGES: Dict[str, Tuple[object, int]] = {
    # engine headers: a full-TensorRT magic that sorts above 'vtrt'; runtime versions around the header's
    "engine-full-trt-magic-above-vtrt": (_full_trt(b"ztrt", (10, 13, 0)), 0),
    "engine-backend-version-two-parts": (_full_trt(b"ftrt", (10, 13, 0), backend_version="10.13"), 16),
    "engine-backend-version-higher": (_full_trt(b"ftrt", (10, 13, 0), backend_version="10.14.0.35"), 16),
    # ustar numeric fields
    "mode-high-bit-after-first-byte": (_patched(README, 100, b"0\x8000644\x80"), 10),
    "mode-base-256": (_patched(README, 100, b"\x80\0\0\0\0\0\x01\xa4"), 10),
    "mode-field-empty": (_patched(README, 100, b"\0" * 8), 0),
    "dir-size-field-empty": (_patched("runtime", 124, b"\0" * 12, _with_dir("runtime")), 0),
    "checksum-no-leading-zeros": (_raw(None, README, lambda d, o: None, b"%-5o\0  "), 0),
    "checksum-eight-digits": (_raw(None, README, lambda d, o: None, b"%08o"), 0),
    "mtime-space-terminated": (_patched(README, 147, b" "), 0),
    # names: the control-character bounds, full name and prefix fields, bytes that are not UTF-8
    "name-exclamation-mark": (_tar(_add(f"{ROOT}/runtime/a!b")), 13),
    "name-space": (_tar(_add(f"{ROOT}/runtime/a b")), 13),
    "name-unit-separator": (_tar(_add(f"{ROOT}/runtime/a\x1fb")), 14),
    "name-non-ascii": (_tar(_add(f"{ROOT}/runtime/a\u00e9b")), 13),
    "name-field-full": (_tar(_add(f"{ROOT}/runtime/" + "n" * (100 - len(ROOT) - 9))), 13),
    "prefix-field-full": (_raw(_add(f"{ROOT}/zz"), "zz",
                               lambda d, o: (_put(0, b"file".ljust(100, b"\0"))(d, o),
                                             _put(345, f"{ROOT}/".encode().ljust(155, b"p"))(d, o),
                                             _put(500, b"z")(d, o))), 13),
    "name-not-utf8": (_raw(_add(f"{ROOT}/zz"), "zz", _put(len(ROOT) + 1, b"\xff")), 14),
    "typeflag-above-pax": (_patched(README, 156, b"y"), 14),
    # a full ustar name under a PAX path: '..' before the cut component; a NUL right after the field
    "pax-path-shadow-dotdot-inside-cut-100": (_shadow_mode("x/../" + "y" * 95, b"0000644\0"), 14),
    "pax-path-shadow-cut-100-mode-empty": (_shadow_mode("x/" + "y" * 95 + "/..", b"\0" * 8), 0),
    # PAX records at the edges of their grammar
    "pax-record-starts-with-space": (_pax(b" 9 mtime=1\n"), 10),
    "pax-record-length-one": (_pax(b"1 mtime=1\n"), 10),
    "pax-short-record-then-long": (_size_then_long_mtime(b"%d"), 0),
    "pax-record-length-leading-zero": (_size_then_long_mtime(b"0%d"), 10),
    "pax-mtime-with-equals": (_pax(_pax_record("mtime", "1=2")), 10),
    "pax-record-not-utf8": (_pax(b"11 mtime=\xff\n"), 14),
    "pax-padding-not-zero": (_pax_padding_not_zero, 10),
    # padding and the end of the archive
    "data-padding-not-zero": (_data_padding_not_zero, 10),
    "zeros-over-the-allowance-then-data": (_zeros_then_data, 10),
    # the member-count limit, to the member (a 5 MB file: also a second mmap window)
    "members-at-the-limit": (_dirs_first(_MAX_MEMBERS - 2), 13),
    "members-one-over": (_dirs_first(_MAX_MEMBERS - 1), 15),
}
BOTH_KEYS: Set[str] = set()  # names of cases verified against both test keys
