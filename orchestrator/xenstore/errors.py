"""Errors raised by Ballast's xenstore edge.

Every failure of a xenstore request becomes a :class:`XenstoreError`, a
``TransientError`` that carries the operation, the path and the errno name
as xenstored sent it (``"ENOENT"``, ``"EACCES"``...), so a caller can skip a
VM for one cycle and log a line an operator understands. Bad arguments found
before anything is sent (invalid path, value or permission) are a
:class:`InvalidRequestError`. Malformed bytes on the wire are a
:class:`ProtocolError`, which the server answers with ``EINVAL``.
"""

from __future__ import annotations

import errno as _errno
import os

from orchestrator.errors import BallastError, TransientError, UsageError


class XenstoreError(TransientError):
    """A xenstore request failed; retry later or skip this VM this cycle."""

    def __init__(self, errno_name: str, *, op: str = "", path: str = "", detail: str = "") -> None:
        self.errno_name = errno_name
        self.op = op
        self.path = path
        self.detail = detail
        where = f"{op} {path}".strip() or "xenstore"
        text = f"{where}: {errno_name}"
        code = getattr(_errno, errno_name, None)
        if isinstance(code, int):
            text += f" ({os.strerror(code)})"
        if detail:
            text += f": {detail}"
        super().__init__(text)

    @property
    def errno(self) -> int:
        """The numeric errno on this host (``EINVAL`` when the name is unknown)."""
        code = getattr(_errno, self.errno_name, _errno.EINVAL)
        return code if isinstance(code, int) else _errno.EINVAL


class NoEntryError(XenstoreError):
    """The node does not exist (``ENOENT``)."""


class AccessDeniedError(XenstoreError):
    """The permissions of the node forbid the request (``EACCES``, ``EPERM``)."""


class ConflictError(XenstoreError):
    """A transaction lost against a concurrent change (``EAGAIN``)."""


class XenstoreTimeoutError(XenstoreError):
    """xenstored did not answer in time; the connection is dropped and rebuilt."""


class XenstoreConnectionError(XenstoreError):
    """The connection to xenstored is broken or could not be opened."""


class InvalidRequestError(UsageError, ValueError):
    """A path, value or permission that must not be sent to xenstored."""


class ProtocolError(BallastError):
    """Bytes that do not form a valid xenstore message.

    ``errno_name`` is what a xenstored answers to such a request.
    """

    def __init__(self, message: str, *, errno_name: str = "EINVAL") -> None:
        self.errno_name = errno_name
        super().__init__(message)


class OversizedPacketError(ProtocolError):
    """A header announced a payload above ``XENSTORE_PAYLOAD_MAX``.

    xenstored closes the connection of a client that sends one.
    """


def error_for(errno_name: str, *, op: str = "", path: str = "", detail: str = "") -> XenstoreError:
    """The most specific :class:`XenstoreError` for an errno name from the wire."""
    cls: type[XenstoreError] = {
        "ENOENT": NoEntryError,
        "EACCES": AccessDeniedError,
        "EPERM": AccessDeniedError,
        "EAGAIN": ConflictError,
    }.get(errno_name, XenstoreError)
    return cls(errno_name, op=op, path=path, detail=detail)
