#!/usr/bin/env python3
"""The "one-core hashing" baseline: the digests `bundle verify` needs, computed on one thread.

Reads a bundle once in 4 MiB chunks and feeds every byte to the whole-file SHA-256 and every
member's bytes to that member's SHA-256, one after the other on this thread: what verify did
before its hashing moved to worker threads, without any of verify's other work. Prints the
archive digest and one line per member. Standard library only.
"""

from __future__ import annotations

import hashlib
import sys
import tarfile

CHUNK = 4 << 20


def main(path: str) -> None:
    with tarfile.open(path) as tf:  # headers only: where each member's data lies
        spans = [(m.offset_data, m.offset_data + m.size, m.name) for m in tf.getmembers() if m.isfile() and m.size]
    whole = hashlib.sha256()
    digests = {name: hashlib.sha256() for _, _, name in spans}
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    pos = 0
    i = 0
    with open(path, "rb", buffering=0) as f:
        while True:
            n = f.readinto(view)
            if not n:
                break
            chunk = view[:n]
            whole.update(chunk)
            end = pos + n
            while i < len(spans) and spans[i][0] < end:
                start, stop, name = spans[i]
                lo, hi = max(start, pos), min(stop, end)
                if lo < hi:
                    digests[name].update(chunk[lo - pos : hi - pos])
                if stop <= end:
                    i += 1
                else:
                    break
            pos = end
    print(whole.hexdigest(), path)
    for name, h in digests.items():
        print(h.hexdigest(), name)


if __name__ == "__main__":
    main(sys.argv[1])
