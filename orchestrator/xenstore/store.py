"""The xenstore tree with its permission model, transactions and quotas, without I/O.

The server turns each request into one call here and each returned
:class:`Change` into watch events. The rules follow C xenstored:

* a missing node answers ``ENOENT`` only if the caller holds the requested
  right on the nearest existing ancestor, ``EACCES`` otherwise, so nothing
  leaks about nodes a domain may not see; creating a node needs that right to
  be WRITE;
* a new node inherits its parent's permissions, except that a node created by
  an unprivileged domain is owned by it;
* a transaction reads a snapshot taken when it started; its commit fails with
  ``EAGAIN`` if any node it read or wrote was changed by someone else since;
* unprivileged domains are held to per-domain quotas; dom0 is exempt.

Nodes are never mutated once stored (a change stores a new ``Node``), so a
transaction's snapshot is simply the old objects kept aside.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from orchestrator.xenstore import paths
from orchestrator.xenstore.perms import Access, Perm, access_for
from orchestrator.xenstore.wire import PAYLOAD_MAX, DirectoryChunk


class Refused(Exception):
    """A request the daemon answers with an ERROR message carrying ``errno_name``."""

    def __init__(self, errno_name: str) -> None:
        self.errno_name = errno_name
        super().__init__(errno_name)


@dataclass(frozen=True, slots=True)
class Caller:
    """Who sends a request: a domain, maybe privileged (dom0), maybe a device model."""

    domid: int
    privileged: bool = False
    target: int | None = None


DOM0 = Caller(0, privileged=True)


@dataclass(frozen=True, slots=True, kw_only=True)
class Quotas:
    """Per-domain limits for unprivileged domains (C xenstored defaults)."""

    nodes_per_domain: int = 1000
    """Nodes a domain may own (quota_nb_entry_per_domain)."""
    watches_per_domain: int = 128
    """Watches a domain may hold (quota_nb_watch_per_domain)."""
    transactions_per_connection: int = 10
    """Open transactions per connection (quota_max_transaction). Both C xenstored
    and oxenstored of Xen 4.17 refuse only when more than this many are already
    open, so a guest opens 11 (seen on both in ./scripts/e2e-xen)."""
    value_bytes: int = 2048
    """Largest value a domain may write, bytes (quota_max_entry_size)."""
    nodes_per_transaction: int = 1024
    """Nodes one transaction may touch (quota_trans_nodes)."""


class Node:
    """One stored node; replaced, never mutated, once it is in the tree."""

    __slots__ = ("_listing", "children", "gen", "perms", "value")

    def __init__(
        self, value: bytes, perms: tuple[Perm, ...], children: dict[str, None], gen: int
    ) -> None:
        self.value = value
        self.perms = perms
        # An ordered set of child names, in creation order as xenstored lists them.
        # Shared between versions of a node, so it is copied, never changed in place.
        self.children = children
        self.gen = gen
        self._listing: bytes | None = None

    @property
    def listing(self) -> bytes:
        """The children as a DIRECTORY payload (``a\\0b\\0``), computed once."""
        if self._listing is None:
            self._listing = b"".join(n.encode("ascii") + b"\0" for n in self.children)
        return self._listing


@dataclass(frozen=True, slots=True)
class Change:
    """A node that changed, for watch firing.

    ``exact`` marks a node removed below the root of an RM: only watches set on
    that very node fire for it. ``perms`` are the permission lists that decide
    who may learn of the change (before and after, for SET_PERMS).
    """

    path: str
    exact: bool
    perms: tuple[tuple[Perm, ...], ...]


@dataclass(eq=False)
class Transaction:
    """An open transaction: its private changes over a snapshot of the tree."""

    tx_id: int
    caller: Caller
    overlay: dict[str, Node | None] = field(default_factory=dict)
    preimage: dict[str, Node | None] = field(default_factory=dict)
    accessed: set[str] = field(default_factory=set)
    changes: list[Change] = field(default_factory=list)
    owned_delta: Counter[int] = field(default_factory=Counter)
    doomed: bool = False
    """Set when its snapshot grew too large: the commit will fail with EAGAIN."""


class _View:
    """The tree as one request sees it: the live tree or a transaction's snapshot."""

    __slots__ = ("changes", "store")

    def __init__(self, store: Store) -> None:
        self.store = store
        self.changes: list[Change] = []

    def get(self, path: str) -> Node | None:
        return self.store._nodes.get(path)

    def put(self, path: str, node: Node) -> None:
        self.store._capture(path)
        self.store._nodes[path] = node

    def remove(self, path: str) -> None:
        self.store._capture(path)
        del self.store._nodes[path]

    def owned(self, domid: int) -> int:
        return self.store._owned[domid]

    def own(self, domid: int, delta: int) -> None:
        self.store._owned[domid] += delta


class _TxView(_View):
    __slots__ = ("tx",)

    def __init__(self, store: Store, tx: Transaction) -> None:
        super().__init__(store)
        self.tx = tx
        self.changes = tx.changes

    def get(self, path: str) -> Node | None:
        tx = self.tx
        if path not in tx.accessed:
            tx.accessed.add(path)
            if len(tx.accessed) > self.store.quotas.nodes_per_transaction and not (
                tx.caller.privileged
            ):
                raise Refused("ENOSPC")
        if path in tx.overlay:
            return tx.overlay[path]
        if path in tx.preimage:
            return tx.preimage[path]
        return self.store._nodes.get(path)

    def put(self, path: str, node: Node) -> None:
        self.tx.accessed.add(path)
        self.tx.overlay[path] = node

    def remove(self, path: str) -> None:
        self.tx.accessed.add(path)
        self.tx.overlay[path] = None

    def owned(self, domid: int) -> int:
        return self.store._owned[domid] + self.tx.owned_delta[domid]

    def own(self, domid: int, delta: int) -> None:
        self.tx.owned_delta[domid] += delta


class Store:
    """The whole tree. Every method takes the caller and, optionally, a transaction."""

    def __init__(
        self, *, quotas: Quotas | None = None, snapshot_max_nodes: int = 10_000
    ) -> None:
        self.quotas = quotas or Quotas()
        # A transaction keeps the old version of every node changed while it is
        # open; one left open for good would otherwise grow without bound and slow
        # every write. Past this many, it gives up its snapshot and is doomed.
        self.snapshot_max_nodes = snapshot_max_nodes
        self._gen = 0
        root_perms = (Perm(Access.NONE, 0),)
        self._nodes: dict[str, Node] = {"/": Node(b"", root_perms, {}, 0)}
        self._owned: Counter[int] = Counter({0: 1})
        self._open: set[Transaction] = set()

    # --- bookkeeping -------------------------------------------------------------

    def _next_gen(self) -> int:
        self._gen += 1
        return self._gen

    def _capture(self, path: str) -> None:
        """Keep the current version of ``path`` for every open transaction's snapshot."""
        if self._open:
            old = self._nodes.get(path)
            doomed = []
            for tx in self._open:
                if path not in tx.preimage:
                    tx.preimage[path] = old
                    if len(tx.preimage) > self.snapshot_max_nodes:
                        doomed.append(tx)
            for tx in doomed:
                tx.doomed = True
                tx.preimage.clear()
                self._open.discard(tx)

    def _view(self, tx: Transaction | None) -> _View:
        return _View(self) if tx is None else _TxView(self, tx)

    def owned_nodes(self, domid: int) -> int:
        """Nodes owned by ``domid`` in the live tree (what its node quota counts)."""
        return self._owned[domid]

    def __len__(self) -> int:
        return len(self._nodes)

    def __contains__(self, path: object) -> bool:
        return path in self._nodes

    # --- access checks -----------------------------------------------------------

    @staticmethod
    def _canon(caller: Caller, path: str) -> str:
        full = paths.canonicalize(path, caller.domid)
        if not paths.is_valid_absolute(full):
            raise Refused("EINVAL")
        return full

    @staticmethod
    def _allowed(caller: Caller, perms: tuple[Perm, ...], need: Access) -> bool:
        if caller.privileged:
            return True
        got = access_for(perms, caller.domid, target=caller.target)
        return (got & need) == need

    def _errno_for_missing(self, view: _View, caller: Caller, path: str, need: Access) -> str:
        """ENOENT if ``caller`` holds ``need`` on the nearest existing ancestor, else EACCES."""
        current = path
        while current != "/":
            current = paths.parent(current)
            node = view.get(current)
            if node is not None:
                return "ENOENT" if self._allowed(caller, node.perms, need) else "EACCES"
        return "ENOENT"  # pragma: no cover - the root always exists

    def _lookup(self, view: _View, caller: Caller, path: str, need: Access) -> Node:
        node = view.get(path)
        if node is None:
            raise Refused(self._errno_for_missing(view, caller, path, need))
        if not self._allowed(caller, node.perms, need):
            raise Refused("EACCES")
        return node

    def can_read(self, caller: Caller, perms: tuple[Perm, ...]) -> bool:
        """Whether ``caller`` may read a node with ``perms`` (used to filter watch events)."""
        return self._allowed(caller, perms, Access.READ)

    # --- operations --------------------------------------------------------------

    def read(self, caller: Caller, path: str, tx: Transaction | None = None) -> bytes:
        """READ: the value of a node."""
        view = self._view(tx)
        return self._lookup(view, caller, self._canon(caller, path), Access.READ).value

    def get_perms(
        self, caller: Caller, path: str, tx: Transaction | None = None
    ) -> tuple[Perm, ...]:
        """GET_PERMS: the permission list of a node."""
        view = self._view(tx)
        return self._lookup(view, caller, self._canon(caller, path), Access.READ).perms

    def directory(self, caller: Caller, path: str, tx: Transaction | None = None) -> bytes:
        """DIRECTORY: the children of a node as a wire payload."""
        view = self._view(tx)
        return self._lookup(view, caller, self._canon(caller, path), Access.READ).listing

    def directory_part(
        self, caller: Caller, path: str, offset: int, tx: Transaction | None = None
    ) -> DirectoryChunk:
        """DIRECTORY_PART: children from byte ``offset`` of the list, as many as fit."""
        view = self._view(tx)
        node = self._lookup(view, caller, self._canon(caller, path), Access.READ)
        blob = node.listing
        if offset >= len(blob):
            return DirectoryChunk(node.gen, (), True)
        # Room left after "<gen>\0" and the final "\0" that marks the end (xenstored).
        room = PAYLOAD_MAX - (len(str(node.gen)) + 1) - 1
        end = offset
        while end < len(blob):
            nxt = blob.index(b"\0", end) + 1
            if nxt - offset > room:
                break
            end = nxt
        names = tuple(blob[offset : end - 1].decode("latin-1").split("\0")) if end > offset else ()
        return DirectoryChunk(node.gen, names, end >= len(blob))

    def write(
        self, caller: Caller, path: str, value: bytes, tx: Transaction | None = None
    ) -> list[Change]:
        """WRITE: set a node's value, creating it and its missing parents."""
        view = self._view(tx)
        full = self._canon(caller, path)
        node = view.get(full)
        if node is None:
            errno_name = self._errno_for_missing(view, caller, full, Access.WRITE)
            if errno_name != "ENOENT":
                raise Refused(errno_name)
            self._check_value(caller, value)
            self._create(view, caller, full, value)
        else:
            if not self._allowed(caller, node.perms, Access.WRITE):
                raise Refused("EACCES")
            self._check_value(caller, value)
            view.put(full, Node(value, node.perms, node.children, self._next_gen()))
            view.changes.append(Change(full, False, (node.perms,)))
        return view.changes if tx is None else []

    def mkdir(self, caller: Caller, path: str, tx: Transaction | None = None) -> list[Change]:
        """MKDIR: create a node with an empty value unless it exists."""
        view = self._view(tx)
        full = self._canon(caller, path)
        node = view.get(full)
        if node is not None:
            if not self._allowed(caller, node.perms, Access.WRITE):
                raise Refused("EACCES")
            return []
        errno_name = self._errno_for_missing(view, caller, full, Access.WRITE)
        if errno_name != "ENOENT":
            raise Refused(errno_name)
        self._create(view, caller, full, b"")
        return view.changes if tx is None else []

    def rm(self, caller: Caller, path: str, tx: Transaction | None = None) -> list[Change]:
        """RM: remove a node and everything below it (a missing node is fine
        if its parent exists)."""
        view = self._view(tx)
        full = self._canon(caller, path)
        if full == "/":
            raise Refused("EINVAL")
        node = view.get(full)
        if node is None:
            errno_name = self._errno_for_missing(view, caller, full, Access.WRITE)
            if errno_name != "ENOENT":
                raise Refused(errno_name)
            if view.get(paths.parent(full)) is None:
                raise Refused("ENOENT")
            return []
        if not self._allowed(caller, node.perms, Access.WRITE):
            raise Refused("EACCES")
        parent_path = paths.parent(full)
        parent = view.get(parent_path)
        assert parent is not None
        children = dict(parent.children)
        del children[paths.basename(full)]
        view.put(parent_path, Node(parent.value, parent.perms, children, self._next_gen()))
        view.changes.append(Change(full, False, (node.perms,)))
        self._remove_tree(view, full, node)
        return view.changes if tx is None else []

    def _remove_tree(self, view: _View, path: str, node: Node) -> None:
        stack = [(path, node)]
        while stack:
            current, cur_node = stack.pop()
            for name in cur_node.children:
                sub = paths.child(current, name)
                sub_node = view.get(sub)
                if sub_node is not None:
                    stack.append((sub, sub_node))
                    view.changes.append(Change(sub, True, (sub_node.perms,)))
            view.remove(current)
            view.own(cur_node.perms[0].domid, -1)

    def set_perms(
        self, caller: Caller, path: str, perms: tuple[Perm, ...], tx: Transaction | None = None
    ) -> list[Change]:
        """SET_PERMS: replace a node's permissions (owner or dom0 only; only dom0
        may give a node away)."""
        if not perms:
            raise Refused("EINVAL")
        view = self._view(tx)
        full = self._canon(caller, path)
        node = self._lookup(view, caller, full, Access.WRITE)
        if not caller.privileged:
            got = access_for(node.perms, caller.domid, target=caller.target)
            if not got & Access.OWNER:
                raise Refused("EACCES")
            if perms[0].domid != node.perms[0].domid:
                raise Refused("EPERM")
        old_owner, new_owner = node.perms[0].domid, perms[0].domid
        if old_owner != new_owner:
            view.own(old_owner, -1)
            view.own(new_owner, +1)
        view.put(full, Node(node.value, perms, node.children, self._next_gen()))
        view.changes.append(Change(full, False, (node.perms, perms)))
        return view.changes if tx is None else []

    def _check_value(self, caller: Caller, value: bytes) -> None:
        if not caller.privileged and len(value) > self.quotas.value_bytes:
            raise Refused("ENOSPC")

    def _create(self, view: _View, caller: Caller, path: str, value: bytes) -> None:
        missing = [path]
        current = paths.parent(path)
        while view.get(current) is None:
            missing.append(current)
            current = paths.parent(current)
        over = view.owned(caller.domid) + len(missing) > self.quotas.nodes_per_domain
        if over and not caller.privileged:
            raise Refused("ENOSPC")
        perms: tuple[Perm, ...] = ()
        for new_path in reversed(missing):
            parent_path = paths.parent(new_path)
            parent = view.get(parent_path)
            assert parent is not None
            perms = parent.perms
            if not caller.privileged and perms[0].domid != caller.domid:
                perms = (Perm(perms[0].access, caller.domid), *perms[1:])
            children = dict(parent.children)
            children[paths.basename(new_path)] = None
            view.put(parent_path, Node(parent.value, parent.perms, children, self._next_gen()))
            new_value = value if new_path == path else b""
            view.put(new_path, Node(new_value, perms, {}, self._next_gen()))
            view.own(perms[0].domid, +1)
        view.changes.append(Change(path, False, (perms,)))

    # --- transactions ------------------------------------------------------------

    def begin(self, caller: Caller, tx_id: int) -> Transaction:
        """Open a transaction on a snapshot of the tree as it is now."""
        tx = Transaction(tx_id, caller)
        self._open.add(tx)
        return tx

    def abort(self, tx: Transaction) -> None:
        """Forget a transaction."""
        self._open.discard(tx)

    def commit(self, tx: Transaction) -> list[Change]:
        """Apply a transaction, or raise ``Refused("EAGAIN")`` if it conflicts."""
        self._open.discard(tx)
        if tx.doomed or not tx.accessed.isdisjoint(tx.preimage):
            raise Refused("EAGAIN")
        for path, node in tx.overlay.items():
            self._capture(path)
            if node is None:
                self._nodes.pop(path, None)
            else:
                node.gen = self._next_gen()  # a transaction's own node: not shared yet
                self._nodes[path] = node
        for domid, delta in tx.owned_delta.items():
            self._owned[domid] += delta
        return tx.changes

    # --- direct access for the server and tools ----------------------------------

    def node(self, path: str) -> Node | None:
        """The live node at an absolute path, bypassing permissions."""
        return self._nodes.get(path)
