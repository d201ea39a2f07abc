"""xenstore path rules: allowed characters, absolute and relative forms, limits.

The rules are the C xenstored's: a node name is made of ASCII letters, digits
and ``-/_@``; an absolute path starts with ``/``, never ends with ``/``
(except the root) and never holds ``//``; a relative path is resolved under
the caller's ``/local/domain/<domid>``. Watches may also name a special path
beginning with ``@`` (``@introduceDomain``, ``@releaseDomain``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from orchestrator.xenstore.errors import InvalidRequestError

# XENSTORE_ABS_PATH_MAX and XENSTORE_REL_PATH_MAX, xs_wire.h. C xenstored
# measures the relative limit below "/local/domain/<domid>/" for absolute paths.
ABS_PATH_MAX = 3072
REL_PATH_MAX = 2048

# Special watch paths fired by INTRODUCE and RELEASE (xenstored).
INTRODUCE_DOMAIN = "@introduceDomain"
RELEASE_DOMAIN = "@releaseDomain"

LOCAL_DOMAIN = "/local/domain"

_CHARS_RE = re.compile(r"[A-Za-z0-9\-/_@]+\Z")
_LOCAL_PREFIX_RE = re.compile(r"/local/domain/(\d{1,5})/")


def domain_path(domid: int) -> str:
    """The home of a domain, ``/local/domain/<domid>`` (what GET_DOMAIN_PATH returns)."""
    return f"{LOCAL_DOMAIN}/{domid}"


def _local_offset(path: str) -> int:
    match = _LOCAL_PREFIX_RE.match(path)
    return match.end() if match else 0


def is_valid_absolute(path: str) -> bool:
    """True when ``path`` is a node name C xenstored accepts."""
    if not path.startswith("/"):
        return False
    if len(path) > 1 and path.endswith("/"):
        return False
    if "//" in path or len(path) > ABS_PATH_MAX:
        return False
    if len(path) - _local_offset(path) > REL_PATH_MAX:
        return False
    return _CHARS_RE.match(path) is not None


def is_valid_relative(path: str) -> bool:
    """True when ``path`` is a valid relative node name (before resolution)."""
    if not path or path.startswith(("/", "@")) or path.endswith("/"):
        return False
    if "//" in path or len(path) > REL_PATH_MAX:
        return False
    return _CHARS_RE.match(path) is not None


def is_special(path: str) -> bool:
    """True for the ``@...`` watch paths."""
    return path.startswith("@")


def is_valid_special(path: str) -> bool:
    """True for an ``@`` watch path C xenstored accepts (any text up to the limit)."""
    return path.startswith("@") and 1 < len(path) <= REL_PATH_MAX and "\0" not in path


def validate_path(path: str, *, allow_special: bool = False) -> str:
    """Return ``path`` unchanged if it is a valid absolute or relative path.

    Raises :class:`InvalidRequestError` naming the rule it breaks.
    """
    if allow_special and is_special(path):
        if is_valid_special(path):
            return path
        raise InvalidRequestError(f"invalid special xenstore path {path!r}")
    if path.startswith("/"):
        if is_valid_absolute(path):
            return path
    elif is_valid_relative(path):
        return path
    raise InvalidRequestError(f"invalid xenstore path {path!r}: {_why_invalid(path)}")


def _why_invalid(path: str) -> str:
    if not path:
        return "empty"
    if path.startswith("@"):
        return "special '@' paths are only valid for watches"
    if len(path) > 1 and path.endswith("/"):
        return "trailing '/'"
    if "//" in path:
        return "'//' in path"
    if len(path) > REL_PATH_MAX:
        return f"longer than {REL_PATH_MAX} bytes below the domain's home"
    return "only ASCII letters, digits and '-/_@' are allowed"


def canonicalize(path: str, domid: int) -> str:
    """Resolve a relative path under ``/local/domain/<domid>``; absolute and ``@`` stay."""
    if path.startswith(("/", "@")):
        return path
    return f"{LOCAL_DOMAIN}/{domid}/{path}"


def relative_to(path: str, base: str) -> str:
    """``path`` with ``base`` and the following ``/`` removed (as xenstored reports
    events to a watch registered with a relative path)."""
    if path == base:
        return ""
    if path.startswith(base) and path[len(base)] == "/":
        return path[len(base) + 1 :]
    return path


def parent(path: str) -> str:
    """The parent of an absolute path (the root is its own parent)."""
    cut = path.rfind("/")
    return "/" if cut <= 0 else path[:cut]


def basename(path: str) -> str:
    """The last component of an absolute path (``""`` for the root)."""
    return path[path.rfind("/") + 1 :]


def child(path: str, name: str) -> str:
    """Join an absolute path and one child name."""
    return f"/{name}" if path == "/" else f"{path}/{name}"


def ancestors_and_self(path: str) -> Iterator[str]:
    """``/``, ``/a``, ``/a/b`` ... up to and including ``path``."""
    yield "/"
    if path == "/":
        return
    cut = path.find("/", 1)
    while cut != -1:
        yield path[:cut]
        cut = path.find("/", cut + 1)
    yield path


def is_descendant_or_self(path: str, ancestor: str) -> bool:
    """True when ``path`` is ``ancestor`` or lies below it."""
    if ancestor == "/":
        return path.startswith("/")
    return path == ancestor or (path.startswith(ancestor) and path[len(ancestor)] == "/")
