"""Who a node is: the one place the SMS decides which node a peer speaks for.

* With CURVE, a node id is bound to the public key that first registered it
  (persisted, so it holds across SMS restarts) or to the key given for it in
  ``[security] node_keys``; one key may hold one node id. A peer whose key
  is not bound to the node id it names is refused and logged.
* The SMS reaches a node through the routing id of its last accepted
  message (routing ids are random per connection, never the node id), so
  knowing a node's id gives no way to receive its messages.
* On an open cluster (no CURVE) there are no keys: a node id is bound
  instead to a hash of the ``proof`` secret its Spearlet keeps in its data
  directory, and a node is the connection it registered on.

Pure state: the caller's key comes with each call (from the ZAP ``User-Id``
of the message, never from a field the peer fills in), and a new binding is
returned for the core to persist before it answers.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Iterable

from .. import errors
from .recovery import NODEKEY_PREFIX

log = logging.getLogger("spear.sms")


class NodeIdentity:
    """Bindings of node ids to credentials, and the route to each node."""

    def __init__(self, keyed: bool, records: Iterable[tuple[bytes, bytes]] = (),
                 configured: dict[str, str] | None = None) -> None:
        #: CURVE is on: nodes are known by their keys (else by their proofs and routes)
        self.keyed = keyed
        configured = dict(configured or {})
        self.key_of: dict[str, str] = {}
        for k, raw in records:
            self.key_of[k[len(NODEKEY_PREFIX):].decode()] = raw.decode()
        self.key_of.update(configured)  # the operator's word beats what was learned
        self.configured = configured
        self.node_of_key: dict[str, str] = {v: k for k, v in self.key_of.items()}
        self.route: dict[str, bytes] = {}  # node id -> routing id
        self.node_at: dict[bytes, str] = {}  # routing id -> node id
        self.refused = 0

    def refuse(self, why: str) -> errors.PermissionDenied:
        """Count and log a refused node message; the error to answer it with."""
        self.refused += 1
        log.warning("SECURITY: refused node message: %s", why)
        return errors.PermissionDenied(why)

    def _credential(self, key: str, proof: str) -> str:
        """What a node id is bound to: the caller's key, or a hash of its proof."""
        if self.keyed:
            return key
        return "proof:" + hashlib.sha256(proof.encode()).hexdigest()[:32] if proof else ""

    def _bound(self, node_id: str) -> str | None:
        """The credential ``node_id`` is bound to in this mode (keys and proofs
        are kept apart, so switching CURVE on or off needs no reset)."""
        bound = self.key_of.get(node_id)
        if bound is None or bound.startswith("proof:") == self.keyed:
            return None
        return bound

    def check(self, node_id: str, key: str, proof: str = "") -> tuple[bytes, bytes] | None:
        """May the caller (CURVE ``key``, or ``proof``) register as ``node_id``?

        Raises PERMISSION_DENIED if not. Returns the record that binds the
        node id on first sight (persist it, then :meth:`bind`), or None.
        """
        cred = self._credential(key, proof)
        bound = self._bound(node_id)
        if bound is not None and bound != cred:
            who = f"key {cred[:12]}..." if self.keyed else "a peer without the node's proof"
            raise self.refuse(f"node id {node_id!r} is bound to another "
                              f"{'key' if self.keyed else 'node'}; {who} may not register as it")
        if self.keyed:
            other = self.node_of_key.get(cred)
            if other is not None and other != node_id and self._bound(other) == cred:
                raise self.refuse(f"key {cred[:12]}... is bound to node id {other!r}; "
                                  f"it may not register as {node_id!r}")
        if bound is None and cred:
            return NODEKEY_PREFIX + node_id.encode(), cred.encode()
        return None

    def bind(self, node_id: str, cred: str) -> None:
        """Bind ``node_id`` to ``cred`` (its record is on disk)."""
        self.key_of[node_id] = cred
        self.node_of_key[cred] = node_id
        log.info("node id %s bound to %s", node_id,
                 f"key {cred[:12]}..." if self.keyed else "its proof")

    def attach(self, ident: bytes, node_id: str) -> None:
        """Reach ``node_id`` at routing id ``ident`` from now on."""
        old = self.route.get(node_id)
        if old is not None and old != ident:
            self.node_at.pop(old, None)
        self.route[node_id] = ident
        self.node_at[ident] = node_id

    def speaker(self, ident: bytes, key: str, claimed: str | None = None) -> str | None:
        """The node behind a message from ``ident`` (with CURVE ``key``), or None.

        ``claimed``: the node id the message names; it must be the speaker's
        (PERMISSION_DENIED otherwise). None means the peer speaks for no node
        yet (an open cluster's node after an SMS restart: it re-registers).
        """
        if self.keyed:
            node = self.node_of_key.get(key)
            if node is not None and self._bound(node) != key:
                node = None  # a stale binding (the node id was re-keyed by configuration)
        else:
            node = self.node_at.get(ident)
        if claimed is not None and node is not None and node != claimed:
            raise self.refuse(f"peer {'key ' + key[:12] + '...' if self.keyed else repr(ident)} "
                              f"may not act for node {claimed!r}")
        if node is not None and self.keyed and self.route.get(node) != ident:
            self.attach(ident, node)  # the node reconnected: reach it where it speaks from
        return node

    def detach(self, node_id: str) -> None:
        """``node_id`` is gone: it has no route until it registers again."""
        ident = self.route.pop(node_id, None)
        if ident is not None:
            self.node_at.pop(ident, None)
