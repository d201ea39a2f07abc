"""xenstore node permissions: the ``n0``/``r5``/``w3``/``b7`` strings and their meaning.

A node carries a list of entries. The first names the owner and the access
every domain not listed gets; the others grant one domain read, write, both or
nothing. The owner, dom0 and the privileged socket get full access. These are
the rules of C xenstored (``perm_for_conn``), including its treatment of a
domain that a device model targets (SET_TARGET).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntFlag

from orchestrator.xenstore.errors import InvalidRequestError

# Domain ids are 16-bit (domid_t, xen.h).
DOMID_MAX = 0xFFFF
# DOMID_FIRST_RESERVED, xen.h: ids from here on are special (DOMID_SELF...).
DOMID_FIRST_RESERVED = 0x7FF0

_PERM_RE = re.compile(r"([nrwb])(\d{1,5})\Z")


class Access(IntFlag):
    """Rights a permission entry grants (XS_PERM_* in xenstore_lib.h)."""

    NONE = 0
    READ = 1
    WRITE = 2
    BOTH = 3
    OWNER = 4


_LETTER_TO_ACCESS = {"n": Access.NONE, "r": Access.READ, "w": Access.WRITE, "b": Access.BOTH}
_ACCESS_TO_LETTER = {v: k for k, v in _LETTER_TO_ACCESS.items()}


@dataclass(frozen=True, slots=True)
class Perm:
    """One permission entry: ``access`` granted to ``domid``."""

    access: Access
    domid: int

    def __post_init__(self) -> None:
        if not 0 <= self.domid <= DOMID_MAX:
            raise InvalidRequestError(f"domid {self.domid} out of range 0..{DOMID_MAX}")
        if self.access not in _ACCESS_TO_LETTER:
            raise InvalidRequestError(f"invalid access {self.access!r} in a permission entry")

    @classmethod
    def parse(cls, text: str) -> Perm:
        """Parse ``"r5"`` into ``Perm(Access.READ, 5)``."""
        match = _PERM_RE.match(text)
        if match is None:
            raise InvalidRequestError(
                f"invalid xenstore permission {text!r}: expected n, r, w or b followed by a domid"
            )
        return cls(_LETTER_TO_ACCESS[match.group(1)], int(match.group(2)))

    def __str__(self) -> str:
        return f"{_ACCESS_TO_LETTER[self.access]}{self.domid}"


def parse_perms(texts: Sequence[str]) -> tuple[Perm, ...]:
    """Parse a permission list; it needs at least the owner entry."""
    if not texts:
        raise InvalidRequestError("a xenstore permission list needs at least the owner entry")
    return tuple(Perm.parse(t) for t in texts)


def format_perms(perms: Sequence[Perm]) -> list[str]:
    """The wire strings of a permission list."""
    return [str(p) for p in perms]


def access_for(
    perms: Sequence[Perm], domid: int, *, privileged: bool = False, target: int | None = None
) -> Access:
    """What ``domid`` may do on a node with ``perms``.

    ``privileged`` is dom0 or the privileged socket; ``target`` is the domain a
    device-model domain was given power over with SET_TARGET.
    """
    owner = perms[0].domid
    if privileged or owner == domid or (target is not None and owner == target):
        return Access.BOTH | Access.OWNER
    for entry in perms[1:]:
        if entry.domid == domid or (target is not None and entry.domid == target):
            return entry.access
    return perms[0].access
