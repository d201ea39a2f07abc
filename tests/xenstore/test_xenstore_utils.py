"""Debian's xenstore-utils (libxenstore 4.17) against Ballast's server, via XENSTORED_PATH."""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path

import pytest

from orchestrator.xenstore.perms import parse_perms
from orchestrator.xenstore.rawclient import RawClient
from orchestrator.xenstore.server import XenstoreServer
from orchestrator.xenstore.wire import Op

pytestmark = pytest.mark.xenstore_utils


async def tool(
    tools: str, socket: Path, name: str, *args: str, stdin: bytes | None = None
) -> tuple[int, str, str]:
    """Run one xenstore-* tool against ``socket``; returns (exit code, stdout, stderr)."""
    env = dict(os.environ, XENSTORED_PATH=str(socket))
    process = await asyncio.create_subprocess_exec(
        os.path.join(tools, name), *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(stdin), 10)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_write_read_exists_list_rm(
    xenstore_utils: str, server: XenstoreServer, dom0: RawClient
) -> None:
    sock = server.privileged_socket
    assert (await tool(xenstore_utils, sock, "xenstore-write", "/u/a", "1", "/u/b", "two"))[0] == 0
    assert await dom0.read("/u/b") == b"two"
    assert (await tool(xenstore_utils, sock, "xenstore-read", "/u/a", "/u/b"))[1] == "1\ntwo\n"
    assert (await tool(xenstore_utils, sock, "xenstore-exists", "/u/a"))[0] == 0
    assert (await tool(xenstore_utils, sock, "xenstore-exists", "/u/zz"))[0] == 1
    assert (await tool(xenstore_utils, sock, "xenstore-list", "/u"))[1] == "a\nb\n"
    assert (await tool(xenstore_utils, sock, "xenstore-rm", "/u/a"))[0] == 0
    assert (await tool(xenstore_utils, sock, "xenstore-list", "/u"))[1] == "b\n"
    code, _out, err = await tool(xenstore_utils, sock, "xenstore-read", "/u/a")
    assert code == 1 and "couldn't read path /u/a" in err


async def test_ls_prints_the_tree_with_perms(
    xenstore_utils: str, server: XenstoreServer, dom0: RawClient
) -> None:
    await dom0.write("/local/domain/5/memory/target", b"524288")
    code, out, _ = await tool(xenstore_utils, server.privileged_socket, "xenstore-ls", "-p",
                              "/local/domain/5")  # fmt: skip
    assert code == 0
    # Each line is 'name = "value"', dot leaders, then the permissions.
    lines = [re.sub(r'(")[ .]+(\()', r"\1  \2", line) for line in out.splitlines()]
    assert lines == [
        'memory = ""  (n0,r5)',
        ' target = "524288"  (n0,r5)',
        'data = ""  (n5)',
        'domid = "5"  (n0,r5)',
    ]


async def test_chmod(xenstore_utils: str, server: XenstoreServer, dom0: RawClient) -> None:
    await dom0.write("/c/x/y", b"1")
    sock = server.privileged_socket
    assert (await tool(xenstore_utils, sock, "xenstore-chmod", "/c", "n0", "r5"))[0] == 0
    assert await dom0.get_perms("/c") == parse_perms(["n0", "r5"])
    assert await dom0.get_perms("/c/x") == parse_perms(["n0"])
    assert (await tool(xenstore_utils, sock, "xenstore-chmod", "-r", "/c", "b6"))[0] == 0
    assert await dom0.get_perms("/c/x/y") == parse_perms(["b6"])


async def test_watch(xenstore_utils: str, server: XenstoreServer, dom0: RawClient) -> None:
    env = dict(os.environ, XENSTORED_PATH=str(server.privileged_socket))
    watcher = await asyncio.create_subprocess_exec(
        os.path.join(xenstore_utils, "xenstore-watch"), "-n", "3", "/w", env=env,
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    for _ in range(500):
        if len(server.watches):
            break
        await asyncio.sleep(0.01)
    await dom0.write("/w/x", b"1")
    await dom0.write("/elsewhere", b"1")
    await dom0.rm("/w")
    out, _ = await asyncio.wait_for(watcher.communicate(), 10)
    assert watcher.returncode == 0
    assert out.decode().splitlines() == ["/w", "/w/x", "/w"]


async def test_guest_socket(
    xenstore_utils: str, server: XenstoreServer, dom0: RawClient
) -> None:
    sock = server.domain_socket(5)
    await dom0.write("/local/domain/5/memory/target", b"1048576")
    await dom0.write("/local/domain/6/data/x", b"6's")
    assert (await tool(xenstore_utils, sock, "xenstore-write", "data/report", "{}"))[0] == 0
    assert await dom0.read("/local/domain/5/data/report") == b"{}"
    assert (await tool(xenstore_utils, sock, "xenstore-read", "memory/target"))[1] == "1048576\n"
    assert (await tool(xenstore_utils, sock, "xenstore-ls", "data"))[1] == 'report = "{}"\n'
    for path in ("/local/domain/6/data/x", "/local/domain/6/data/new", "memory/target", "/x"):
        code, _out, err = await tool(xenstore_utils, sock, "xenstore-write", path, "evil")
        assert code == 1, path
        assert "could not write path" in err
    assert await dom0.read("/local/domain/6/data/x") == b"6's"
    assert (await tool(xenstore_utils, sock, "xenstore-rm", "memory/target"))[0] == 1
    assert (await tool(xenstore_utils, sock, "xenstore-list", "/local/domain"))[0] == 1
    assert (await tool(xenstore_utils, sock, "xenstore-exists", "/local/domain/6/data/x"))[0] == 1


async def test_directory_over_4096_bytes_uses_directory_part(
    xenstore_utils: str, server: XenstoreServer, dom0: RawClient
) -> None:
    names = [f"entry-with-a-longish-name-{i:04d}" for i in range(250)]  # ~7.7 KiB listing
    tx_id = await dom0.transaction_start()
    await asyncio.gather(*(dom0.write(f"/big/{n}", n.encode(), tx_id=tx_id) for n in names))
    await dom0.transaction_end(tx_id)
    before = server.requests[Op.DIRECTORY_PART]
    code, out, _ = await tool(xenstore_utils, server.privileged_socket, "xenstore-list", "/big")
    assert code == 0
    assert out.splitlines() == names
    assert server.requests[Op.DIRECTORY_PART] >= before + 2  # more than one part
    code, out, _ = await tool(xenstore_utils, server.privileged_socket, "xenstore-ls", "/big")
    assert out.splitlines() == [f'{n} = "{n}"' for n in names]
