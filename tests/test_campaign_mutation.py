"""Hostile-input campaign, family 1: mutation (issue 13).

Inputs are made from a valid, really signed bundle (a TensorRT-RTX engine for sm_86 and a cpu
engine, golden data, the runtime files) by Hypothesis, at two levels (tests/_mutations.py): the
tar structure around the signed bytes, and the signed documents themselves, re-signed with the
trusted key so that every check after the signature is reached. Every input goes through the
library, the stand-alone verifier's pipeline, extraction and inspect in this process, and a
sample through the four command lines as subprocesses; the oracle is `_campaign.Campaign.check`
(its docstring says exactly what is asserted). Truncation is exhaustive: every 512-byte boundary.

In CI the runs are bounded and derandomized (the same inputs every time; about a minute in
all). ``python fuzz/run.py mutation --minutes N`` runs the same tests with fresh random inputs
for N minutes and writes the figures docs/security.md quotes (fuzz/results/mutation.json).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from _campaign import Campaign, build_base
from _mutations import draw_envelope, draw_manifest, draw_payload, draw_statement, draw_structural, draw_sums
from _tarkit import BLOCK, Bundle, reseal

LONG = os.environ.get("CAMPAIGN_PROFILE") == "long"
ROUND = int(os.environ.get("CAMPAIGN_ROUND", "200"))  # long run: examples per call, repeated until the time is up


def budget(ci_examples: int) -> settings:
    """Derandomized and bounded in CI; random and larger in the long run. No shrinking: the
    oracle saves every failing input as it is, and a shrink would re-run it hundreds of times."""
    return settings(
        max_examples=ROUND if LONG else ci_examples,
        derandomize=not LONG,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )


@pytest.fixture(scope="module")
def campaign(tmp_path_factory, keys, tiny_model) -> Campaign:  # noqa: ANN001
    d = tmp_path_factory.mktemp("campaign")
    path = build_base(d / "dist", keys["release"]["key"], tiny_model)
    work = d / "work"
    work.mkdir()
    c = Campaign(path, keys["release"]["key"], keys["release"]["pub"], work)
    yield c
    figures = os.environ.get("CAMPAIGN_FIGURES")
    if figures:
        Path(figures).write_text(json.dumps(c.figures(), indent=2) + "\n")


# -- controls: the oracle's acceptance side works ---------------------------------------------------

def test_the_starting_bundle_and_its_unedited_reseal_pass_the_oracle(campaign) -> None:  # noqa: ANN001
    assert campaign.check("control", campaign.raw, "the starting bundle", cli=True) == 0
    again = reseal(Bundle.read(campaign.raw), campaign.key)
    assert again.to_tar() == campaign.raw  # re-signing is byte-exact: edits alone make a difference
    assert campaign.check("control", again.to_tar(), "resealed, unedited", files=again.files) == 0


def test_the_oracle_catches_an_accepted_change(campaign) -> None:  # noqa: ANN001
    """A re-signed bundle whose manifest lies about nothing the verifier checks is accepted, and
    the oracle agrees; one that the spec oracle would flag must not be accepted."""
    from _campaign import spec_violations

    files = dict(campaign.bundle.files)
    m = json.loads(files["manifest.json"])
    m["model"]["producer"] = "someone else"
    files["manifest.json"] = (json.dumps(m, sort_keys=True, indent=2) + "\n").encode()
    b = reseal(Bundle(campaign.root, files, campaign.bundle.modes), campaign.key)
    assert campaign.check("control", b.to_tar(), "producer edited", files=b.files) == 0
    m["files"][0]["size"] += 1
    wrong = dict(b.files, **{"manifest.json": json.dumps(m).encode()})
    assert spec_violations(campaign.root, wrong)  # the independent oracle sees the lie


# -- structural ------------------------------------------------------------------------------------------

def test_truncation_at_every_block_boundary(campaign) -> None:  # noqa: ANN001
    """Every 512-byte prefix of the bundle goes through the library (the long run), or in CI
    every prefix within two blocks of a record boundary (where a header, a PAX record or the end
    marker is cut) and every 4th one inside member data, where each cut is the same case to the
    reader: a member's data ends early. Refused as archive (10) until the end marker is whole;
    from there on (only record padding lost) the bundle verifies. Every 8th prefix, and every
    prefix near the end marker, also goes through the stand-alone pipeline, extraction and
    inspect (the long run sends all of them)."""
    raw, end = campaign.raw, campaign.tar.end_offset()
    near_end = range(end - 4 * BLOCK, end + 4 * BLOCK)
    near_a_boundary = {b + d * BLOCK for b in [*campaign.tar.header_offsets(), end] for d in (-2, -1, 0, 1, 2)}
    tried = 0
    for n in range(0, len(raw) + 1, BLOCK):
        full = LONG or n % (8 * BLOCK) == 0 or n in near_end
        if full:
            code = campaign.check("truncation", raw[:n], f"first {n} bytes", cli=n in (BLOCK, end + 2 * BLOCK))
        elif n in near_a_boundary or n % (4 * BLOCK) == 0:
            code = campaign.check_library_only("truncation", raw[:n], f"first {n} bytes")
        else:
            continue
        tried += 1
        assert code == (0 if n >= end + 2 * BLOCK else 10), (n, code)
    assert campaign.family("truncation").tried == tried
    assert tried == len(raw) // BLOCK + 1 or not LONG


@budget(ci_examples=250)
@given(data=st.data())
def test_structural_mutations(campaign, data) -> None:  # noqa: ANN001
    raw, desc = draw_structural(data, campaign)
    campaign.check("structural", raw, desc)


# -- semantic: edited, then re-signed with the trusted key ------------------------------------------------

@budget(ci_examples=120)
@given(data=st.data())
def test_manifest_edits_resigned(campaign, data) -> None:  # noqa: ANN001
    raw, desc, files = draw_manifest(data, campaign)
    campaign.check("manifest", raw, desc, files=files)


@budget(ci_examples=80)  # 60 stopped reaching 'binding' when bundles gained their provenance member (other draws)
@given(data=st.data())
def test_statement_edits_signed(campaign, data) -> None:  # noqa: ANN001
    raw, desc, files = draw_statement(data, campaign)
    campaign.check("statement", raw, desc, files=files)


@budget(ci_examples=60)
@given(data=st.data())
def test_signature_file_edits(campaign, data) -> None:  # noqa: ANN001
    raw, desc, files = draw_envelope(data, campaign)
    campaign.check("signature-file", raw, desc, files=files)


@budget(ci_examples=40)
@given(data=st.data())
def test_sha256sums_edits_resigned(campaign, data) -> None:  # noqa: ANN001
    raw, desc, files = draw_sums(data, campaign)
    campaign.check("sha256sums", raw, desc, files=files)


@budget(ci_examples=50)
@given(data=st.data())
def test_payload_edits_resigned(campaign, data) -> None:  # noqa: ANN001
    raw, desc, files = draw_payload(data, campaign)
    campaign.check("payload", raw, desc, files=files)


# -- the campaign reached every outcome it should -----------------------------------------------------

REACHED = {
    "structural": {"accepted", "archive", "digest", "members", "unsafe", "signature", "limits"},
    "manifest": {"accepted", "binding"},
    "statement": {"accepted", "signature", "binding"},
    "signature-file": {"accepted", "signature"},
    "sha256sums": {"accepted", "binding"},
    "payload": {"accepted", "binding"},
}


def test_every_family_reached_its_outcomes(campaign) -> None:  # noqa: ANN001
    """The strategies are only as good as the checks they reach: each family must have produced
    acceptances (the oracle's acceptance side ran) and the refusal classes it aims at, and the
    command lines must have been run on a sample of each."""
    ran = [f for f in REACHED if campaign.family(f).tried]
    if len(ran) < len(REACHED):
        pytest.skip("run the whole file: the families did not all run")
    for fam, want in REACHED.items():
        fs = campaign.family(fam)
        missing = want - set(fs.by_class)
        assert not missing, f"{fam}: never reached {sorted(missing)} in {fs.tried} inputs ({dict(fs.by_class)})"
        assert fs.cli_inputs >= 1, fam
