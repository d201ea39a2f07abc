"""pyxs's own Client, written without Ballast in mind, against Ballast's server."""

from __future__ import annotations

import errno
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pyxs

from orchestrator.xenstore.runner import ServerThread


@pytest.fixture
def threaded(sock_dir: Path) -> Iterator[ServerThread]:
    """The server on its own loop, so that pyxs's blocking calls can be made here."""
    with ServerThread(sock_dir) as server:
        server.introduce(5)
        server.introduce(6)
        yield server


def within(seconds: float, fn: Callable[[], Any]) -> Any:
    """Call a blocking pyxs function, failing the test instead of hanging it."""
    result: list[Any] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            result.append(fn())
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"pyxs call did not return within {seconds} s"
    if errors:
        raise errors[0]
    return result[0]


def client(path: Path) -> pyxs.Client:
    return pyxs.Client(unix_socket_path=str(path))


def test_read_write_mkdir_rm_list(threaded: ServerThread) -> None:
    with client(threaded.privileged_socket) as c:
        c.write(b"/foo/bar", b"baz")
        assert c.read(b"/foo/bar") == b"baz"
        assert c[b"/foo/bar"] == b"baz"
        c.mkdir(b"/foo/dir")
        assert c.read(b"/foo/dir") == b""
        assert c.list(b"/foo") == [b"bar", b"dir"]
        assert c.exists(b"/foo/dir")
        assert c.read(b"/missing", b"fallback") == b"fallback"
        c.delete(b"/foo")
        assert not c.exists(b"/foo")
        with pytest.raises(pyxs.PyXSError) as info:
            c.read(b"/foo/bar")
        assert info.value.args[0] == errno.ENOENT
        assert [p for p, _v, _c in c.walk(b"/local")] == [
            b"/local", b"/local/domain", b"/local/domain/0", b"/local/domain/5",
            b"/local/domain/5/memory", b"/local/domain/5/data", b"/local/domain/5/domid",
            b"/local/domain/6", b"/local/domain/6/memory", b"/local/domain/6/data",
            b"/local/domain/6/domid",
        ]  # fmt: skip


def test_perms(threaded: ServerThread) -> None:
    with client(threaded.privileged_socket) as c:
        assert c.get_perms(b"/local/domain/5/data") == [b"n5"]
        c.write(b"/p", b"1")
        c.set_perms(b"/p", [b"n0", b"r5", b"b6"])
        assert c.get_perms(b"/p") == [b"n0", b"r5", b"b6"]
    with client(threaded.domain_socket(5)) as guest:
        assert guest.read(b"/p") == b"1"
        with pytest.raises(pyxs.PyXSError) as info:
            guest.write(b"/p", b"2")
        assert info.value.args[0] == errno.EACCES


def test_guest_socket_relative_paths(threaded: ServerThread) -> None:
    with client(threaded.domain_socket(5)) as guest:
        guest.write(b"data/meminfo_free", b"1024")
        assert guest.read(b"/local/domain/5/data/meminfo_free") == b"1024"
        assert guest.get_domain_path(5) == b"/local/domain/5"
        with pytest.raises(pyxs.PyXSError) as info:
            guest.write(b"/local/domain/6/data/x", b"1")
        assert info.value.args[0] == errno.EACCES


def test_domains(threaded: ServerThread) -> None:
    with client(threaded.privileged_socket) as c:
        assert c.is_domain_introduced(5)
        assert not c.is_domain_introduced(9)
        c.introduce_domain(9, 4321, 7)
        assert c.is_domain_introduced(9)
        assert c.read(b"/local/domain/9/domid") == b"9"
    assert threaded.domain_socket(9).exists()


def test_watch_events(threaded: ServerThread) -> None:
    with client(threaded.privileged_socket) as c, c.monitor() as m:
        m.watch(b"/w", b"token")
        events = m.wait()
        assert within(5, lambda: next(events)) == (b"/w", b"token")
        with client(threaded.privileged_socket) as other:
            other.write(b"/w/child", b"1")
        assert within(5, lambda: next(events)) == (b"/w/child", b"token")
        m.watch(b"@introduceDomain", b"intro")
        assert within(5, lambda: next(events)) == (b"@introduceDomain", b"intro")
        threaded.introduce(10)
        assert within(5, lambda: next(events)) == (b"@introduceDomain", b"intro")
        m.unwatch(b"/w", b"token")
        c.write(b"/w/after", b"1")
        c.write(b"/local/domain/10/data/x", b"1")
        threaded.introduce(11)
        # Only the watch still registered reports; the unwatched one is silent.
        assert within(5, lambda: next(events)) == (b"@introduceDomain", b"intro")


def test_transactions_commit_rollback_and_eagain(threaded: ServerThread) -> None:
    with client(threaded.privileged_socket) as c, client(threaded.privileged_socket) as rival:
        c.transaction()
        c.write(b"/t/a", b"1")
        assert rival.exists(b"/t/a") is False
        assert c.commit() is True
        assert rival.read(b"/t/a") == b"1"

        c.transaction()
        c.write(b"/t/b", b"1")
        c.rollback()
        assert not rival.exists(b"/t/b")

        c.transaction()
        seen = c.read(b"/t/a")
        rival.write(b"/t/a", b"changed meanwhile")
        c.write(b"/t/a", seen + b"+1")
        assert c.commit() is False  # EAGAIN
        assert rival.read(b"/t/a") == b"changed meanwhile"
