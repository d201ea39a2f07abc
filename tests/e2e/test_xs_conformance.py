"""Ballast's xenstore server answers the e2e probes as the real daemons did.

``e2e/xs-oxenstored.json`` holds what the real ``oxenstored`` of Xen 4.17
answered to ``e2e/xs_conformance.py`` (``e2e/xs-xenstored.json``: C
``xenstored`` of the same release), recorded by ``./scripts/e2e-xen`` in
a real dom0 and from inside a real PV guest. Here the same probes run against
Ballast's own server on this machine, in a few seconds, one test per probe,
so a difference found on real Xen stays visible until it is fixed.

Each known difference (``e2e/xs_known.py``, shared with the harness's
check 7) is an ``xfail(strict=True)`` with the reason it exists: fixing the
server turns it into an unexpected pass, which fails until the entry is
removed there. Differences that come from the guest's kernel
(the real guest talks through the Linux xenbus device, Ballast's guests
through a socket) are listed by the probe script itself
(``xs_conformance.TRANSPORT``).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e import xs_conformance as xc
from e2e.xs_known import C_KNOWN_DIFFERENCES, KNOWN_DIFFERENCES
from orchestrator.xenstore.runner import ServerThread

REFERENCE_FILE = Path(__file__).resolve().parents[2] / "e2e" / "xs-oxenstored.json"
REFERENCE: dict[str, str] = json.loads(REFERENCE_FILE.read_text())

C_REFERENCE_FILE = REFERENCE_FILE.with_name("xs-xenstored.json")
C_REFERENCE: dict[str, str] = json.loads(C_REFERENCE_FILE.read_text())


def _cases(reference: dict[str, str], known: dict[str, str]) -> Iterator[object]:
    for key in sorted(reference):
        if key.endswith("elapsed_s"):
            continue
        reason = xc.TRANSPORT.get(key) or known.get(key)
        marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
        yield pytest.param(key, marks=marks, id=key)


@pytest.fixture(scope="module")
def ballast_answers(xenstore_utils: str) -> Iterator[dict[str, str]]:
    """Every probe's answer from a fresh Ballast server (one run for all tests)."""
    sock_dir = Path(tempfile.mkdtemp(prefix="xs-e2e-", dir="/tmp"))
    try:
        with ServerThread(sock_dir):
            yield xc.probe_ballast(str(sock_dir), quiet_s=0.25)
    finally:
        shutil.rmtree(sock_dir, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.xenstore_utils
@pytest.mark.parametrize("key", list(_cases(REFERENCE, KNOWN_DIFFERENCES)))
def test_answers_like_real_oxenstored(key: str, ballast_answers: dict[str, str]) -> None:
    ours = {key: ballast_answers[key]} if key in ballast_answers else {}
    diffs = xc.compare({key: REFERENCE[key]}, ours)
    assert not diffs, diffs[0].line()


@pytest.mark.slow
@pytest.mark.xenstore_utils
@pytest.mark.parametrize("key", list(_cases(C_REFERENCE, C_KNOWN_DIFFERENCES)))
def test_answers_like_real_c_xenstored(key: str, ballast_answers: dict[str, str]) -> None:
    ours = {key: ballast_answers[key]} if key in ballast_answers else {}
    diffs = xc.compare({key: C_REFERENCE[key]}, ours)
    assert not diffs, diffs[0].line()


@pytest.mark.slow
@pytest.mark.xenstore_utils
def test_no_probe_answered_only_by_ballast(ballast_answers: dict[str, str]) -> None:
    extra = sorted(k for k in set(ballast_answers) - set(REFERENCE)
                   if not k.endswith("elapsed_s"))
    assert extra == [], f"probes the real daemon did not answer: {extra}"
