"""Which watches fire for a change, and with what path (sans-I/O).

A watch on W fires for a change of W or of any node below it; for a node
removed below the root of an RM only watches set on that very node fire
(C xenstored). A watch registered with a relative path is told relative
paths. An unprivileged domain only learns of nodes it may read, and only
privileged connections learn of ``@introduceDomain`` and ``@releaseDomain``.
Watches are indexed by path, so finding them costs one dictionary lookup per
level of the changed path, whatever the number of watches.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Iterator
from dataclasses import dataclass

from orchestrator.xenstore import paths
from orchestrator.xenstore.store import Caller, Change, Refused, Store


@dataclass(frozen=True, slots=True, eq=False)
class WatchReg:
    """One registered watch of one connection."""

    owner: Hashable
    caller: Caller
    path: str
    """The path as the client sent it (relative, absolute or ``@special``)."""
    token: str
    target: str
    """The absolute path (or ``@special``) the watch covers."""

    def event_path(self, changed: str) -> str:
        """``changed`` as this watch reports it."""
        if self.path == self.target:
            return changed
        return paths.relative_to(changed, paths.domain_path(self.caller.domid))


class WatchTable:
    """All watches of all connections."""

    def __init__(self) -> None:
        self._by_target: dict[str, list[WatchReg]] = {}
        self._by_key: dict[tuple[Hashable, str, str], WatchReg] = {}
        self._by_owner: dict[Hashable, set[tuple[Hashable, str, str]]] = {}
        self._per_domain: Counter[int] = Counter()

    def __len__(self) -> int:
        return len(self._by_key)

    def count(self, domid: int) -> int:
        """Watches held by connections of ``domid``."""
        return self._per_domain[domid]

    def add(
        self, owner: Hashable, caller: Caller, path: str, token: str, *, limit: int
    ) -> WatchReg:
        """Register a watch; ``EEXIST`` if the same path and token are already
        watched by ``owner``, ``E2BIG`` past ``limit`` watches for an unprivileged domain."""
        if paths.is_special(path):
            if not paths.is_valid_special(path):
                raise Refused("EINVAL")
            target = path
        else:
            target = paths.canonicalize(path, caller.domid)
            if not paths.is_valid_absolute(target):
                raise Refused("EINVAL")
        key = (owner, path, token)
        if key in self._by_key:
            raise Refused("EEXIST")
        if not caller.privileged and self._per_domain[caller.domid] >= limit:
            raise Refused("E2BIG")
        reg = WatchReg(owner, caller, path, token, target)
        self._by_key[key] = reg
        self._by_owner.setdefault(owner, set()).add(key)
        self._by_target.setdefault(target, []).append(reg)
        self._per_domain[caller.domid] += 1
        return reg

    def remove(self, owner: Hashable, path: str, token: str) -> None:
        """Unregister one watch; ``ENOENT`` if there is none."""
        key = (owner, path, token)
        reg = self._by_key.pop(key, None)
        if reg is None:
            raise Refused("ENOENT")
        keys = self._by_owner[owner]
        keys.discard(key)
        if not keys:
            del self._by_owner[owner]
        self._forget(reg)

    def remove_owner(self, owner: Hashable) -> int:
        """Unregister every watch of ``owner``; returns how many there were."""
        keys = self._by_owner.pop(owner, set())
        for key in keys:
            self._forget(self._by_key.pop(key))
        return len(keys)

    def _forget(self, reg: WatchReg) -> None:
        bucket = self._by_target[reg.target]
        bucket.remove(reg)
        if not bucket:
            del self._by_target[reg.target]
        self._per_domain[reg.caller.domid] -= 1

    def matches(self, change: Change, store: Store) -> Iterator[tuple[WatchReg, str]]:
        """Every watch that fires for ``change``, with the path to report."""
        if change.exact:
            candidates: list[WatchReg] = list(self._by_target.get(change.path, ()))
        else:
            candidates = []
            get = self._by_target.get
            for ancestor in paths.ancestors_and_self(change.path):
                bucket = get(ancestor)
                if bucket:
                    candidates.extend(bucket)
        for reg in candidates:
            if reg.caller.privileged or any(store.can_read(reg.caller, p) for p in change.perms):
                yield reg, reg.event_path(change.path)

    def special(self, name: str) -> Iterator[WatchReg]:
        """Privileged watches on a special ``@`` path."""
        for reg in list(self._by_target.get(name, ())):
            if reg.caller.privileged:
                yield reg
