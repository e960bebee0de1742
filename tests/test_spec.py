"""Build spec files: `bundle create --spec` / `bundle build --spec` (docs/build-spec.md)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest

from conftest import make_conv_model, run_bundle
from bundler.errors import InputError
from bundler.spec import load_spec, request_from_flags

SHAPE = "x:1x3x16x16:2x3x16x16:4x3x16x16"
EPOCH = {"SOURCE_DATE_EPOCH": "1700000000"}


def write_spec(d: Path, text: str, name: str = "bundle.toml") -> Path:
    d.mkdir(parents=True, exist_ok=True)
    p = d / name
    p.write_text(text)
    return p


@pytest.fixture()
def proj(tmp_path):  # noqa: ANN001, ANN201
    """A CI-like checkout: ci/bundle.toml next to models/ (paths in the spec are relative to it)."""
    ci = tmp_path / "ci"
    (ci / "models").mkdir(parents=True)
    make_conv_model(ci / "models" / "a.onnx")
    make_conv_model(ci / "models" / "b.onnx", hw=8)
    return ci


TWO_MODELS = f"""
[defaults]
targets = ["sm_86", "rtx5090"]
backend = "tensorrt-rtx"
version = "1.0.0"
shapes = ["{SHAPE}"]

[[model]]
name = "alpha"
path = "models/a.onnx"

[[model]]
name = "beta"
path = "models/b.onnx"
version = "2.1.0"
targets = ["l4"]
shapes = ["x:1x3x8x8:2x3x8x8:4x3x8x8"]
golden = false
"""


def test_two_models_two_bundles_that_verify(proj, keys, tmp_path):  # noqa: ANN001
    spec = write_spec(proj, TWO_MODELS)
    out = tmp_path / "dist"
    # run from elsewhere: paths resolve against the spec file's directory, not the cwd
    r = run_bundle("create", "--spec", spec, "--key", keys["release"]["key"], "--out", out, cwd=tmp_path)
    assert r.code == 0, r.err
    assert sorted(p.name for p in out.iterdir()) == ["alpha-1.0.0.bundle.tar", "beta-2.1.0.bundle.tar"]
    for b in out.iterdir():
        v = run_bundle("verify", b, "--trust", keys["release"]["pub"], "--json")
        assert v.code == 0, v.err
    alpha = run_bundle("inspect", out / "alpha-1.0.0.bundle.tar", "--json").json()["manifest"]
    beta = run_bundle("inspect", out / "beta-2.1.0.bundle.tar", "--json").json()["manifest"]
    assert sorted(e["target"]["label"] for e in alpha["engines"]) == ["rtx5090", "sm86"]
    assert [e["target"]["label"] for e in beta["engines"]] == ["l4"]
    assert alpha["golden"] is not None and beta["golden"] is None
    assert beta["version"] == "2.1.0" and alpha["model"]["path"] == "model/a.onnx"


def test_build_spec_makes_one_build_directory_per_model(proj, tmp_path):  # noqa: ANN001
    spec = write_spec(proj, TWO_MODELS)
    r = run_bundle("build", "--spec", spec, "--out", tmp_path / "build")
    assert r.code == 0, r.err
    assert sorted(p.name for p in (tmp_path / "build").iterdir()) == ["alpha-1.0.0", "beta-2.1.0"]
    assert json.loads((tmp_path / "build" / "beta-2.1.0" / "build.json").read_text())["name"] == "beta"


def _comparable(manifest: dict) -> dict:
    """Drop what legitimately differs between two builds of the same request."""
    m = json.loads(json.dumps(manifest))
    m.pop("created")
    for e in m["engines"]:
        for k in ("started", "duration_s", "host", "sha256", "size"):
            e.pop(k)
    for f in m["files"]:
        # TensorRT rebuilds are not always byte-identical; the SLSA provenance records each
        # build's times and its spec file (tests/test_provenance.py checks its content)
        if f["path"].startswith("engines/") or f["path"] == "provenance/slsa-v1.intoto.json":
            f.pop("sha256")
            f.pop("size")
    return m


def test_spec_gives_the_same_manifest_as_the_flags(tmp_path, keys):  # noqa: ANN001
    models = tmp_path / "models"
    models.mkdir()
    model = make_conv_model(models / "eq.onnx")
    flags = run_bundle(
        "create", model, "--name", "eq", "--version", "1.2.3", "--target", "sm_86", "--target", "rtx5090",
        "--target", "cpu", "--shape", SHAPE, "--workspace", "256M", "--backend", "tensorrt-rtx",
        "--key", keys["release"]["key"], "--out", tmp_path / "via-flags", env=EPOCH,
    )
    assert flags.code == 0, flags.err
    spec = write_spec(tmp_path / "ci", f"""
[[model]]
name = "eq"
version = "1.2.3"
path = "../models/eq.onnx"
targets = ["sm_86", "rtx5090", "cpu"]
precisions = ["fp32"]
shapes = ["{SHAPE}"]
workspace = "256M"
backend = "tensorrt-rtx"
golden = true
""")
    via = run_bundle("create", "--spec", spec, "--key", keys["release"]["key"], "--out", tmp_path / "via-spec", env=EPOCH)
    assert via.code == 0, via.err
    manifests = []
    for d in ("via-flags", "via-spec"):
        dest = tmp_path / f"{d}-x"
        r = run_bundle("extract", tmp_path / d / "eq-1.2.3.bundle.tar", "--trust", keys["release"]["pub"], "--dest", dest)
        assert r.code == 0, r.err
        manifests.append(json.loads((dest / "manifest.json").read_text()))
    a, b = (_comparable(m) for m in manifests)
    assert len(a["engines"]) == 3
    assert a == b


def test_library_spec_and_flags_make_equal_requests(tmp_path):  # noqa: ANN001
    """Every field, including those the equality test above cannot build yet."""
    make_conv_model(tmp_path / "m.onnx")
    (tmp_path / "calib").mkdir()
    (tmp_path / "s.npz").write_bytes(b"")
    spec = write_spec(tmp_path, f"""
[defaults]
precisions = ["fp32", "fp16"]
jobs = 2

[[model]]
name = "m"
version = "0.1.0"
path = "m.onnx"
targets = ["sm_86", "l4"]
shapes = ["{SHAPE}"]
profiles = [["x:1x3x16x16:1x3x16x16:1x3x16x16"], ["x:4x3x16x16:4x3x16x16:4x3x16x16"]]
workspace = 1073741824
backend = "tensorrt-rtx"
golden = false
sample_input = "s.npz"
sample_values = {{ x = 0.5, flag = true, n = "7" }}
calibration = "calib"
timing_cache = "cache/tc.bin"
keep_fp32 = ["auto", "Conv_0"]
accept_accuracy_loss = true
""")
    (entry,) = load_spec(spec)
    want = request_from_flags(
        tmp_path / "m.onnx", "m", "0.1.0", ["sm_86", "l4"], [SHAPE], "1G", "tensorrt-rtx", False, tmp_path / "s.npz",
        precisions=["fp32", "fp16"], profiles=[["x:1x3x16x16:1x3x16x16:1x3x16x16"], ["x:4x3x16x16:4x3x16x16:4x3x16x16"]],
        calibration=tmp_path / "calib", jobs=2, timing_cache=tmp_path / "cache" / "tc.bin",
        sample_values=["x=0.5", "flag=true", "n=7"], keep_fp32=["auto", "Conv_0"], accept_accuracy_loss=True,
    )
    # the one difference: a spec's request names its spec file, for the SLSA provenance
    assert entry.request.spec == {"name": spec.name, "sha256": hashlib.sha256(spec.read_bytes()).hexdigest()}
    assert dataclasses.replace(entry.request, spec=None) == want
    assert entry.request.keep_fp32 == ["auto", "Conv_0"] and entry.request.accept_accuracy_loss is True
    assert entry.request.sample_values == {"x": 0.5, "flag": True, "n": 7}
    assert entry.bundle_name == "m-0.1.0"
    assert len(entry.request.profiles) == 2 and entry.request.workspace == 1 << 30


def test_library_errors_name_file_and_key(tmp_path):  # noqa: ANN001
    spec = write_spec(tmp_path, '[[model]]\nname = "m"\npath = "m.onnx"\nversion = "1.0.0"\ntargets = "sm_86"\n')
    with pytest.raises(InputError) as ei:
        load_spec(spec)
    assert str(spec) in ei.value.message and "key 'targets'" in ei.value.message


# -- errors: one line, the right exit code, no bundle left -------------------------------------------

GOOD_MODEL = 'name = "m"\nversion = "1.0.0"\npath = "models/a.onnx"\ntargets = ["sm_86"]\nbackend = "tensorrt-rtx"\n' \
             f'shapes = ["{SHAPE}"]\n'

BAD_SPECS = [
    ("unknown key", f"[[model]]\n{GOOD_MODEL}colour = \"red\"\n", "key 'colour': unknown key"),
    ("unknown default", f"[defaults]\nname = \"x\"\n[[model]]\n{GOOD_MODEL}", "[defaults], key 'name': unknown key"),
    ("unknown table", f"[model_defaults]\n[[model]]\n{GOOD_MODEL}", "key 'model_defaults': unknown key"),
    ("targets type", "[[model]]\n" + GOOD_MODEL.replace('["sm_86"]', '"sm_86"'), "key 'targets': expected an array of strings, got a string"),
    ("golden type", f"[[model]]\n{GOOD_MODEL}golden = \"yes\"\n", "key 'golden': expected true or false, got a string"),
    ("workspace type", f"[[model]]\n{GOOD_MODEL}workspace = 2.5\n", "key 'workspace': expected a size"),
    ("shape item type", "[[model]]\n" + GOOD_MODEL.replace(f'["{SHAPE}"]', "[1]"), "key 'shapes': item 1: expected a string, got an integer"),
    ("model not a table array", "model = \"a.onnx\"\n", "key 'model': expected an array of tables"),
    ("missing path", "[[model]]\n" + GOOD_MODEL.replace('path = "models/a.onnx"\n', ""), "key 'path': missing"),
    ("missing targets", "[[model]]\n" + GOOD_MODEL.replace('targets = ["sm_86"]\n', ""), "key 'targets': missing (here or in [defaults])"),
    ("model file missing", "[[model]]\n" + GOOD_MODEL.replace("a.onnx", "nope.onnx"), "key 'path': no such model file"),
    ("bad target", "[[model]]\n" + GOOD_MODEL.replace("sm_86", "gtx9999"), "key 'targets': unknown target 'gtx9999'"),
    ("bad shape", "[[model]]\n" + GOOD_MODEL.replace(SHAPE, "x:1xAx16"), "key 'shapes': shape 'x:1xAx16': dimensions must look like"),
    ("bad version", "[[model]]\n" + GOOD_MODEL.replace("1.0.0", "1.0"), "key 'version': version '1.0' is not a semantic version"),
    ("bad precision", f"[[model]]\n{GOOD_MODEL}precisions = [\"fp99\"]\n", "key 'precisions': unknown precision 'fp99'"),
    ("bad backend", "[[model]]\n" + GOOD_MODEL.replace('"tensorrt-rtx"', '"onnx"'), "key 'backend': unknown backend"),
    ("same bundle twice", f"[[model]]\n{GOOD_MODEL}[[model]]\n{GOOD_MODEL}", "model #2 ('m'), key 'name': model #1 makes the same bundle m-1.0.0"),
    ("no models", "[defaults]\nversion = \"1.0.0\"\n", "no [[model]] table"),
    ("not toml", "[[model]]\nname = \n", "not valid TOML"),
]


def assert_failed_cleanly(r, code: int, needle: str, out: Path) -> None:  # noqa: ANN001
    assert r.code == code, (r.code, r.out, r.err)
    assert r.err.count("\n") == 1, r.err  # one line
    assert needle in r.err, r.err
    assert not out.exists() or list(out.iterdir()) == [], list(out.iterdir())


@pytest.mark.parametrize("text, needle", [pytest.param(t, n, id=i) for i, t, n in BAD_SPECS])
def test_bad_spec(proj, keys, tmp_path, text, needle):  # noqa: ANN001
    spec = write_spec(proj, text)
    out = tmp_path / "out"
    r = run_bundle("create", "--spec", spec, "--key", keys["release"]["key"], "--out", out)
    assert_failed_cleanly(r, 3, needle, out)
    assert str(spec) in r.err  # the message names the file
    r = run_bundle("build", "--spec", spec, "--out", out)
    assert_failed_cleanly(r, 3, needle, out)


def test_missing_spec_file(tmp_path, keys):  # noqa: ANN001
    out = tmp_path / "out"
    r = run_bundle("create", "--spec", tmp_path / "nope.toml", "--key", keys["release"]["key"], "--out", out)
    assert_failed_cleanly(r, 3, "nope.toml: no such spec file", out)


@pytest.mark.parametrize(
    "extra, needle",
    [
        (("MODEL",), "--spec cannot be combined with MODEL"),
        (("--name", "x"), "--spec cannot be combined with --name"),
        (("--target", "sm_86", "--shape", SHAPE), "--spec cannot be combined with --target, --shape"),
        (("--backend", "auto"), "--backend"),  # even the default value, when given
        (("--no-golden",), "--golden/--no-golden"),
    ],
)
def test_spec_with_build_flags_is_a_usage_error(proj, keys, tmp_path, extra, needle):  # noqa: ANN001
    spec = write_spec(proj, f"[[model]]\n{GOOD_MODEL}")
    extra = tuple(str(proj / "models" / "a.onnx") if x == "MODEL" else x for x in extra)
    out = tmp_path / "out"
    r = run_bundle("create", *extra, "--spec", spec, "--key", keys["release"]["key"], "--out", out)
    assert_failed_cleanly(r, 2, needle, out)
    assert r.err.startswith("error [usage]:")


def test_without_spec_the_old_usage_errors_stay(tmp_path, keys):  # noqa: ANN001
    r = run_bundle("create", "--key", keys["release"]["key"])
    assert r.code == 2 and "Missing argument 'model'" in r.err
    r = run_bundle("create", tmp_path / "m.onnx", "--version", "1.0.0")
    assert r.code == 2 and "Missing option '--name'" in r.err
    r = run_bundle("create", tmp_path / "m.onnx", "--name", "m", "--version", "1.0.0", "--key", keys["release"]["key"])
    assert r.code == 2 and "Missing option '--target'" in r.err
    r = run_bundle("create", tmp_path / "m.onnx", "--name", "m", "--version", "1.0.0", "--target", "sm_86")
    assert r.code == 2 and "Missing option '--key'" in r.err
    r = run_bundle("build", tmp_path / "m.onnx", "--name", "m", "--version", "1.0.0", "--target", "sm_86")
    assert r.code == 2 and "Missing option '--out'" in r.err
    r = run_bundle("create", "--spec", tmp_path / "s.toml")
    assert r.code == 2 and "Missing option '--key'" in r.err
    r = run_bundle("build", "--spec", tmp_path / "s.toml")
    assert r.code == 2 and "Missing option '--out'" in r.err


def test_second_model_fails_first_bundle_stays(proj, keys, tmp_path):  # noqa: ANN001
    spec = write_spec(proj, f"""
[defaults]
version = "1.0.0"
backend = "tensorrt-rtx"
shapes = ["{SHAPE}"]

[[model]]
name = "good"
path = "models/a.onnx"
targets = ["sm_86"]

[[model]]
name = "bad"
path = "models/a.onnx"
targets = ["h100"]    # SM90: TensorRT-RTX cannot build it, found only when its turn comes
""")
    out = tmp_path / "out"
    r = run_bundle("create", "--spec", spec, "--key", keys["release"]["key"], "--out", out)
    assert r.code == 5, (r.code, r.err)
    lines = r.err.splitlines()  # progress lines of the first model's build, then one error line
    assert [x for x in lines if x.startswith("error")] == lines[-1:], r.err
    assert "model #2 (bad) failed" in r.err and "cannot be built by TensorRT-RTX" in r.err
    good = out / "good-1.0.0.bundle.tar"
    assert str(good) in r.err  # the bundle made before the failure is listed...
    assert [p.name for p in out.iterdir()] == [good.name]  # ...and kept; nothing else, no temp dirs
    assert run_bundle("verify", good, "--trust", keys["release"]["pub"]).code == 0


def test_existing_bundle_is_refused_before_any_build(proj, keys, tmp_path):  # noqa: ANN001
    spec = write_spec(proj, TWO_MODELS)
    out = tmp_path / "out"
    out.mkdir()
    (out / "beta-2.1.0.bundle.tar").write_bytes(b"old")
    r = run_bundle("create", "--spec", spec, "--key", keys["release"]["key"], "--out", out)
    assert r.code == 6 and "beta-2.1.0.bundle.tar: already exists" in r.err
    assert [p.name for p in out.iterdir()] == ["beta-2.1.0.bundle.tar"]  # alpha not built either


def test_spec_precisions_and_extra_profiles_reach_the_build(proj, tmp_path):  # noqa: ANN001
    spec = write_spec(proj, f"""
[[model]]
name = "p"
version = "1.0.0"
path = "models/a.onnx"
targets = ["sm_86"]
precisions = ["fp32", "fp16"]
backend = "tensorrt-rtx"
shapes = ["{SHAPE}"]
profiles = [["x:1x3x16x16:1x3x16x16:1x3x16x16"]]
""")
    r = run_bundle("build", "--spec", spec, "--out", tmp_path / "build")
    assert r.code == 0, r.err
    rec = json.loads((tmp_path / "build" / "p-1.0.0" / "build.json").read_text())
    assert sorted(e["build"]["precision"] for e in rec["engines"]) == ["fp16", "fp32"]
    for e in rec["engines"]:
        assert [p["x"]["opt"] for p in e["build"]["profiles"]] == [[2, 3, 16, 16], [1, 3, 16, 16]]
