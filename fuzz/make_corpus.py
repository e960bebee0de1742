#!/usr/bin/env python3
"""Make the seed corpora under fuzz/corpus/ from real files (run once; the output is committed).

    python fuzz/make_corpus.py [--force]

Every seed comes from the real tools: a real bundle made by `bundle create` (a TensorRT-RTX engine
for sm_86, cpu engines in fp32 and fp16, a converted fp16 graph, golden data), a key pair made by
`bundle keys generate`, a rotation statement made by `bundle keys rotate`, the repository's
keys/trust.example.json. Seeds:

- ``tar_reader/``: small bundles that VERIFY, so that mutations start past the signature: the real
  bundle with every payload file cut down (an engine to its 64-byte header, whose recorded size is
  fixed to match; logs, golden data and runtime files to a few bytes; the manifest updated), then
  re-signed with a fresh key whose public half is fuzz/keys/fuzz.pub and whose private half is
  thrown away. Variants: a PAX path header, directory members, no record padding, a second
  signature by an untrusted key. A whole real bundle (half a megabyte) would make every
  execution slow and every mutation land in engine bytes.
- ``signature/``: the real signature file and its decoded statement, one with an expiry.
- ``manifest/``: the real manifest (four engines, a variant, golden data) and the cut-down one.
- ``trust_policy/``: the real .pub, the example policy, a real rotation statement.
- ``npz/``: the real golden inputs and outputs, a .npy, a compressed .npz, an .npz of several dtypes.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

CORPUS = REPO / "fuzz" / "corpus"
KEYS = REPO / "fuzz" / "keys"


def cli(*args: object, env: dict = None) -> str:
    e = dict(os.environ, SOURCE_DATE_EPOCH="1700000000", **(env or {}))
    e.pop("BUNDLE_KEY_PASSPHRASE", None)
    r = subprocess.run([sys.executable, "-m", "bundler.cli", *map(str, args)], capture_output=True, text=True, env=e)
    if r.returncode:
        raise SystemExit(f"bundle {args[0]} failed: {r.stderr}")
    return r.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--force", action="store_true", help="replace existing seeds")
    args = ap.parse_args()
    if CORPUS.exists() and any(CORPUS.iterdir()) and not args.force:
        raise SystemExit(f"{CORPUS} exists; pass --force to make the seeds again")

    import numpy as np
    from cryptography.hazmat.primitives.asymmetric import ec

    from _tarkit import Bundle, RawTar, pax_data, pax_record, reseal, signature_file, special_record, statement_for
    from bundler.signing import public_pem
    from conftest import make_conv_model

    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        cli("keys", "generate", "release", "--dir", tmp, "--no-passphrase")
        cli("keys", "generate", "successor", "--dir", tmp, "--no-passphrase")
        model = make_conv_model(tmp / "tiny.onnx")
        cli("create", model, "--name", "fz", "--version", "1.0.0", "--target", "sm_86", "--target", "cpu",
            "--precision", "fp32", "--precision", "fp16", "--shape", "x:1x3x16x16:2x3x16x16:4x3x16x16",
            "--key", tmp / "release.key", "--out", tmp / "dist", "--backend", "tensorrt-rtx", "--expires", "2099-01-01")
        bundle = Bundle.read((tmp / "dist" / "fz-1.0.0.bundle.tar").read_bytes())
        cli("keys", "rotate", tmp / "release.key", "--new", tmp / "successor.pub", "--out", tmp / "rotation.json")

        for d in ("tar_reader", "signature", "manifest", "trust_policy", "npz"):
            shutil.rmtree(CORPUS / d, ignore_errors=True)
            (CORPUS / d).mkdir(parents=True)

        # signature/
        sig_path = bundle.signature_paths[0]
        sig = bundle.files[sig_path]
        (CORPUS / "signature" / "real.sig").write_bytes(sig)
        statement = base64_payload(sig)
        (CORPUS / "signature" / "real-statement-with-expiry.json").write_bytes(statement)
        plain = json.loads(statement)
        del plain["predicate"]["expires"]
        (CORPUS / "signature" / "statement.json").write_bytes(json.dumps(plain, indent=2).encode())

        # manifest/
        (CORPUS / "manifest" / "real-manifest.json").write_bytes(bundle.files["manifest.json"])

        # trust_policy/
        shutil.copyfile(tmp / "release.pub", CORPUS / "trust_policy" / "release.pub")
        shutil.copyfile(REPO / "keys" / "trust.example.json", CORPUS / "trust_policy" / "trust.example.json")
        shutil.copyfile(tmp / "rotation.json", CORPUS / "trust_policy" / "rotation.json")

        # npz/
        for rel in ("golden/inputs.npz", "golden/outputs.npz"):
            (CORPUS / "npz" / ("real-" + rel.split("/")[1])).write_bytes(bundle.files[rel])
        buf = io.BytesIO()
        np.save(buf, np.arange(12, dtype=np.float32).reshape(3, 4), allow_pickle=False)
        (CORPUS / "npz" / "array.npy").write_bytes(buf.getvalue())
        buf = io.BytesIO()
        np.savez_compressed(buf, a=np.zeros((4, 4), np.float16), b=np.ones(3, np.int64))
        (CORPUS / "npz" / "compressed.npz").write_bytes(buf.getvalue())
        buf = io.BytesIO()
        np.savez(buf, b=np.array([True, False]), s=np.array(["ab", "c"]), u=np.arange(3, dtype=np.uint8),
                 f=np.array(1.5), e=np.zeros((0, 2), np.float64))
        (CORPUS / "npz" / "dtypes.npz").write_bytes(buf.getvalue())

        # tar_reader/: the real bundle, cut down and re-signed with a fresh key
        small = shrink(bundle)
        fuzz_key = ec.generate_private_key(ec.SECP256R1())
        KEYS.mkdir(parents=True, exist_ok=True)
        (KEYS / "fuzz.pub").write_bytes(public_pem(fuzz_key.public_key()))
        sealed = reseal(small, fuzz_key)
        sealed.files = {(f"signatures/{hashlib.sha256(public_pem(fuzz_key.public_key())).hexdigest()}.sig" if p.startswith("signatures/") else p): d
                        for p, d in sealed.files.items()}
        (CORPUS / "manifest" / "small-manifest.json").write_bytes(sealed.files["manifest.json"])
        raw = sealed.to_tar()
        seeds = {"small-bundle.tar": raw}
        tar = RawTar.parse(raw)
        i = tar.member_indices()[2]
        tar.records.insert(i, pax_record(pax_data([(b"path", tar.records[i].name.encode())])))
        seeds["pax-path.tar"] = tar.to_bytes()
        tar = RawTar.parse(raw)
        tar.records[0:0] = [special_record(sealed.root, b"5", mode=0o755), special_record(sealed.root + "/signatures", b"5", mode=0o755)]
        seeds["directories.tar"] = tar.to_bytes()
        seeds["no-record-padding.tar"] = RawTar.parse(raw).to_bytes()[:RawTar.parse(raw).end_offset() + 1024]
        other = ec.generate_private_key(ec.SECP256R1())
        two = Bundle(sealed.root, dict(sealed.files), dict(sealed.modes))
        digests = {p: hashlib.sha256(d).hexdigest() for p, d in two.payload().items()}
        files = {p: d for p, d in two.files.items() if p.startswith("signatures/")}
        files["signatures/zz-untrusted.sig"] = signature_file(statement_for(sealed.root, digests), other)
        files.update(two.payload())
        two.files = files
        seeds["countersigned-untrusted.tar"] = two.to_tar()
        from runtime_stub import verify as V

        trust = V.load_trust([KEYS / "fuzz.pub"])
        for name, data in seeds.items():
            (CORPUS / "tar_reader" / name).write_bytes(data)
            rep = V.verify_bundle(CORPUS / "tar_reader" / name, trust)
            if not rep.ok:
                raise SystemExit(f"seed {name} does not verify: {rep.error}")
        del fuzz_key, other  # the private halves are never written anywhere
    total = sum(p.stat().st_size for p in CORPUS.rglob("*") if p.is_file())
    print(f"seeds written under {CORPUS} ({total} bytes); trusted key {KEYS / 'fuzz.pub'}")


def base64_payload(sig: bytes) -> bytes:
    import base64

    return base64.b64decode(json.loads(sig)["dsseEnvelope"]["payload"])


def shrink(bundle):  # noqa: ANN001, ANN201
    """The bundle with every payload file cut down and the manifest updated to match."""
    from _tarkit import Bundle

    files = dict(bundle.files)
    m = json.loads(files["manifest.json"])
    engines = {e["path"]: e for e in m["engines"]}
    graphs = {m["model"]["path"]} | {v["graph"] for v in m["variants"]}
    for p in list(files):
        if p.startswith("signatures/") or p in ("manifest.json", "SHA256SUMS") or p in graphs:
            continue
        e = engines.get(p)
        if e is not None and e["header"] is not None:
            head = bytearray(files[p][:64])
            head[16:24] = (64).to_bytes(8, "little")
            files[p] = bytes(head)
        elif e is not None:
            continue  # a cpu engine is a copy of a signed graph: keep it
        else:
            files[p] = p.encode() + b"\n"
    sha = {p: hashlib.sha256(d).hexdigest() for p, d in files.items()}
    for f in m["files"]:
        f["sha256"], f["size"] = sha[f["path"]], len(files[f["path"]])
    for e in m["engines"]:
        e["sha256"], e["size"] = sha[e["path"]], len(files[e["path"]])
    files["manifest.json"] = (json.dumps(m, sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode()
    return Bundle(bundle.root, files, dict(bundle.modes))


if __name__ == "__main__":
    main()
