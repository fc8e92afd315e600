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
    artifact_size: int = 0  # 0 in records written before sizes were kept
    created_at: float = 0.0
    updated_at: float = 0.0


_dec_fn = msgspec.msgpack.Decoder(StoredFunction)


class FunctionRegistry:
    """Registered functions by name; ``on_event(kind, key, state, now, detail)`` hears changes.

    Artifacts are stored once by SHA-256 and counted against
    ``artifacts_max`` bytes; an artifact is deleted, in the same synced
    write, when the last function using it is removed or moves to another.
    """

    def __init__(self, table: NodeTable, records: Iterable[tuple[bytes, bytes]] = (),
                 on_event: Callable[..., None] | None = None,
                 artifacts_max: int = 4096 << 20) -> None:
        self.table = table
        self.on_event = on_event
        self.artifacts_max = artifacts_max
        self.functions: dict[str, StoredFunction] = {}
        #: artifact digest -> size, of those known to be in the store
        self.artifacts: dict[str, int] = {}
        for key, raw in records:
            try:
                fn = _dec_fn.decode(raw)
            except msgspec.DecodeError:
                log.error("skipping corrupt function record %r", key)
                continue
            self.functions[fn.spec.name] = fn
            if fn.artifact_digest:
                self.artifacts[fn.artifact_digest] = fn.artifact_size

    def _artifact(self, spec: P.FunctionSpec) -> tuple[str, int, list]:
        """(digest, size, puts) of the spec's artifact: stored now, or already stored."""
        if spec.artifact is None:
            digest = spec.artifact_sha256
            if digest and digest not in self.artifacts:
                raise errors.NotFound(f"artifact {digest} is not stored: deploy it with its bytes")
            return digest, self.artifacts.get(digest, 0), []
        # specs.check (just before) verified a given SHA-256 against the bytes
        digest = spec.artifact_sha256 or hashlib.sha256(spec.artifact).hexdigest()
        size = len(spec.artifact)
        if digest in self.artifacts:
            return digest, size, []
        used = sum(self.artifacts.values())
        if used + size > self.artifacts_max:
            raise errors.ResourceExhausted(
                f"the artifact store is full: {used >> 20} MiB of {self.artifacts_max >> 20} MiB "
                f"used, this artifact needs {max(1, size >> 20)} MiB more ([sms] "
                "artifacts_max_mb; remove functions to free space)")
        return digest, size, [(ART_PREFIX + digest.encode(), bytes(spec.artifact))]

    def _orphaned(self, digest: str, leaving: str) -> list[bytes]:
        """The artifact key to delete if ``leaving`` was the last function using ``digest``."""
        if not digest or any(f.artifact_digest == digest for n, f in self.functions.items()
                             if n != leaving):
            return []
        return [ART_PREFIX + digest.encode()]

    def register(self, spec: P.FunctionSpec, now: float) -> Generator[Persist, str, P.FunctionInfo]:
        """Register or update a function (synced write first); returns its info."""
        specs.check(spec)
        art_digest, art_size, puts = self._artifact(spec)
        bare = msgspec.structs.replace(spec, artifact=None, artifact_sha256=art_digest)
        digest = hashlib.sha256(_enc.encode(bare) + art_digest.encode()).hexdigest()
        prev = self.functions.get(spec.name)
        fn = StoredFunction(spec=bare, digest=digest, artifact_digest=art_digest,
                            artifact_size=art_size,
                            created_at=prev.created_at if prev else now, updated_at=now)
        puts.append((FN_PREFIX + spec.name.encode(), _enc.encode(fn)))
        old_art = prev.artifact_digest if prev is not None else ""
        deletes = self._orphaned(old_art, spec.name) if old_art != art_digest else []
        if deletes:
            self.artifacts.pop(old_art, None)  # no deploy may name it while it is deleted
        error = yield Persist(puts, deletes, True)
        if error:
            if deletes:
                self.artifacts[old_art] = prev.artifact_size
            raise errors.Unavailable(unavailable_text(error))
        if art_digest:
            self.artifacts[art_digest] = art_size
        prev = self.functions.get(spec.name)
        self.functions[spec.name] = fn
        if prev is not None and prev.digest != digest:
            self.table.forget_function(spec.name)  # nodes hold the old version
        self._event("registered", spec.name, now, digest[:12])
        return self.info(fn)

    def remove(self, name: str, now: float) -> Generator[Persist, str, None]:
        """Unregister a function (its record is deleted, synced, first: that may fail)."""
        fn = self.get(name)
        deletes = [FN_PREFIX + name.encode(), *self._orphaned(fn.artifact_digest, name)]
        if len(deletes) > 1:
            self.artifacts.pop(fn.artifact_digest, None)
        error = yield Persist((), deletes, True)
        if error:
            if len(deletes) > 1:
                self.artifacts[fn.artifact_digest] = fn.artifact_size
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
