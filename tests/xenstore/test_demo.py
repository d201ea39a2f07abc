"""The interim demo runs, shows the live tree and stops by itself."""

from __future__ import annotations

import asyncio
import time

import pytest

from orchestrator.xenstore import demo


async def test_demo_shows_the_tree_and_stops_by_itself(capsys: pytest.CaptureFixture[str]) -> None:
    started = time.monotonic()
    await asyncio.wait_for(demo.run(1.5), 15)
    assert time.monotonic() - started < 10
    out = capsys.readouterr().out
    assert "xenstore-ls /local/domain" in out
    for name in ("web", "db", "batch"):
        assert f' name = "{name}"' in out
    assert '  static-max = "2097152"' in out
    assert out.rstrip().endswith("demo finished: daemon stopped, sockets removed")
