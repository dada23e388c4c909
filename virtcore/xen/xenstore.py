"""XenStore (Xen 存储): the small shared key/value tree that Dom0's xenstored keeps.

The real rules [XWIKI-FRONTEND; XIG ch. 8; XEN-XENBUS]:

- a hierarchical store of strings (``/local/domain/<domid>/...``) served by ``xenstored`` in
  Dom0; each node has an owner and permissions (``n`` none, ``r`` read, ``w`` write, ``b``
  both) per domain; Dom0 may do anything; a domain may read/write its own subtree.
- drivers use it to *publish* what a peer needs: a frontend writes ``ring-ref`` (the grant
  reference of its ring page), ``event-channel`` (its unbound port) and ``state``
  (``XenbusState*``: 1 Initialising … 4 Connected … 6 Closed) under
  ``/local/domain/<fe>/device/<type>/<id>``; the backend's node
  ``/local/domain/<be>/backend/<type>/<fe>/<id>`` points back; *watches* tell each side when
  the other changed something.

Simplified: calls are direct (no xenstore ring and event channel, no transactions); a watch
fires synchronously after the write; errors are the errno names xenstored returns (``EACCES``,
``ENOENT``) as negative ints.

>>> from virtcore.xen import Xen
>>> xs = Xen(frames=64).xenstore
>>> xs.write(0, "/local/domain/1/name", "web")
0
>>> xs.read(0, "/local/domain/1/name"), xs.read(2, "/local/domain/1/name")
('web', -13)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from virtcore.xen.constants import EACCES, EINVAL, ENOENT

if TYPE_CHECKING:
    from virtcore.xen.hypervisor import Xen

__all__ = ["XenStore"]


class XenStore:
    """Dom0's xenstored: path → value, with an owner and readers/writers per node."""

    def __init__(self, xen: Xen) -> None:
        self.xen = xen
        self.nodes: dict[str, str] = {}
        self.owner: dict[str, int] = {}
        self.readers: dict[str, set[int]] = {}
        self.watches: list[tuple[int, str, Callable[[str], None]]] = []

    @staticmethod
    def _domain_of(path: str) -> int | None:
        parts = path.split("/")
        if len(parts) > 3 and parts[1] == "local" and parts[2] == "domain" and parts[3].isdigit():
            return int(parts[3])
        return None

    def _may(self, domid: int, path: str, write: bool) -> bool:
        if domid == 0:
            return True
        node_owner = self.owner.get(path, self._domain_of(path))
        if node_owner == domid:
            return True
        if write:
            return False
        p = path
        while p:  # read permission set on a directory covers what is below it
            if domid in self.readers.get(p, ()):
                return True
            p = p.rsplit("/", 1)[0]
        return False

    def write(self, domid: int, path: str, value: str) -> int:
        """``xs_write``: 0, or ``-EACCES`` / ``-EINVAL``."""
        if not isinstance(path, str) or not path.startswith("/") or not isinstance(value, str):
            return -EINVAL
        if not self._may(domid, path, True):
            return -EACCES
        self.nodes[path] = value
        self.owner.setdefault(path, self._domain_of(path) if domid == 0 else domid)  # type: ignore
        self.xen.trace.add("xenstore", domid, f"write {path} = {value!r}")
        for _w, prefix, fn in list(self.watches):
            if path.startswith(prefix):
                fn(path)
        return 0

    def read(self, domid: int, path: str) -> str | int:
        """``xs_read``: the value, or ``-ENOENT`` / ``-EACCES``."""
        if path not in self.nodes:
            return -ENOENT
        if not self._may(domid, path, False):
            return -EACCES
        return self.nodes[path]

    def set_readers(self, domid: int, path: str, readers: set[int]) -> int:
        """``xs_set_permissions`` (read permission for other domains); owner or Dom0 only."""
        if not isinstance(path, str) or not self._may(domid, path, True):
            return -EACCES
        self.readers[path] = set(readers)
        return 0

    def watch(self, domid: int, prefix: str, fn: Callable[[str], None]) -> None:
        """``xs_watch``: call ``fn(path)`` after each write under ``prefix``."""
        self.watches.append((domid, prefix, fn))

    def ls(self, prefix: str) -> list[str]:
        """Paths under ``prefix`` (host-side view, for display)."""
        return sorted(p for p in self.nodes if p.startswith(prefix))

    def remove_domain(self, domid: int) -> None:
        """The domain died: drop ``/local/domain/<domid>`` and its watches."""
        prefix = f"/local/domain/{domid}/"
        for p in [p for p in self.nodes if p.startswith(prefix)]:
            self.nodes.pop(p)
            self.owner.pop(p, None)
            self.readers.pop(p, None)
        self.watches = [w for w in self.watches if w[0] != domid]

    def snapshot(self) -> tuple[object, ...]:
        return tuple(sorted(self.nodes.items()))

    def __repr__(self) -> str:
        return f"XenStore({len(self.nodes)} nodes, {len(self.watches)} watches)"
