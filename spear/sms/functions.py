"""The function registry of the SMS: deployed specs, their digests and artifacts.

Pure state: writes and cold reads are yielded as :class:`Persist` / :class:`Load`
(see :mod:`spear.sms.events`); memory changes only once a write succeeded.
An artifact is stored once, by its SHA-256, apart from the spec.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Callable, Generator, Iterable

import msgspec

from .. import errors, protocol as P, specs
from .events import Load, Persist, unavailable_text
from .recovery import ART_PREFIX, FN_PREFIX
from .scheduler import NodeTable

log = logging.getLogger("spear.sms.tasks")  # as spear.sms.executions

_enc = msgspec.msgpack.Encoder()


class StoredFunction(msgspec.Struct, frozen=True, kw_only=True):
    """A registered function as persisted (artifact stored apart, by digest)."""

    spec: P.FunctionSpec
    digest: str
    artifact_digest: str = ""
    created_at: float = 0.0
    updated_at: float = 0.0


_dec_fn = msgspec.msgpack.Decoder(StoredFunction)


class FunctionRegistry:
    """Registered functions by name; ``on_event(kind, key, state, now, detail)`` hears changes."""

    def __init__(self, table: NodeTable, records: Iterable[tuple[bytes, bytes]] = (),
                 on_event: Callable[..., None] | None = None) -> None:
        self.table = table
        self.on_event = on_event
        self.functions: dict[str, StoredFunction] = {}
        #: artifact digests known to be on disk (those of recovered functions, or written since)
        self.artifacts: set[str] = set()
        for key, raw in records:
            try:
                fn = _dec_fn.decode(raw)
            except msgspec.DecodeError:
                log.error("skipping corrupt function record %r", key)
                continue
            self.functions[fn.spec.name] = fn
            if fn.artifact_digest:
                self.artifacts.add(fn.artifact_digest)

    def register(self, spec: P.FunctionSpec, now: float) -> Generator[Persist, str, P.FunctionInfo]:
        """Register or update a function (synced write first); returns its info."""
        specs.check(spec)
        art_digest = ""
        puts = []
        if spec.artifact is not None:
            art_digest = hashlib.sha256(spec.artifact).hexdigest()
            if art_digest not in self.artifacts:
                puts.append((ART_PREFIX + art_digest.encode(), bytes(spec.artifact)))
        bare = msgspec.structs.replace(spec, artifact=None)
        digest = hashlib.sha256(_enc.encode(bare) + art_digest.encode()).hexdigest()
        prev = self.functions.get(spec.name)
        fn = StoredFunction(spec=bare, digest=digest, artifact_digest=art_digest,
                            created_at=prev.created_at if prev else now, updated_at=now)
        puts.append((FN_PREFIX + spec.name.encode(), _enc.encode(fn)))
        error = yield Persist(puts, (), True)
        if error:
            raise errors.Unavailable(unavailable_text(error))
        if art_digest:
            self.artifacts.add(art_digest)
        prev = self.functions.get(spec.name)
        self.functions[spec.name] = fn
        if prev is not None and prev.digest != digest:
            self.table.forget_function(spec.name)  # nodes hold the old version
        self._event("registered", spec.name, now, digest[:12])
        return self.info(fn)

    def remove(self, name: str, now: float) -> Generator[Persist, str, None]:
        """Unregister a function (its record is deleted, synced, first: that may fail)."""
        self.get(name)
        error = yield Persist((), (FN_PREFIX + name.encode(),), True)
        if error:
            raise errors.Unavailable(unavailable_text(error))
        if self.functions.pop(name, None) is not None:
            self.table.forget_function(name)
            self._event("removed", name, now)

    def get(self, name: str) -> StoredFunction:
        """A function by name, or NOT_FOUND."""
        fn = self.functions.get(name)
        if fn is None:
            raise errors.NotFound(f"function {name!r} is not registered")
        return fn

    def full_spec(self, name: str) -> Generator[Load, list, tuple[P.FunctionSpec, str]]:
        """The spec with its artifact bytes (for a node that lacks it), and its digest."""
        fn = self.get(name)
        spec = fn.spec
        if fn.artifact_digest:
            (art,) = yield Load((ART_PREFIX + fn.artifact_digest.encode(),))
            if art is None:
                raise errors.Internal(f"artifact {fn.artifact_digest} of {name} is missing")
            spec = msgspec.structs.replace(spec, artifact=art)
        return spec, fn.digest

    @staticmethod
    def info(fn: StoredFunction) -> P.FunctionInfo:
        """What ``Deployed`` and ``FunctionList`` say of a function."""
        return P.FunctionInfo(name=fn.spec.name, runtime=fn.spec.runtime, digest=fn.digest)

    def list(self) -> list[P.FunctionInfo]:
        """Every function, by name."""
        return [self.info(f) for _, f in sorted(self.functions.items())]

    def _event(self, state: str, name: str, now: float, detail: str = "") -> None:
        if self.on_event is not None:
            self.on_event("function", name, state, now, detail)
