"""Compiled modules of the ``wasm`` runtime, and their cache.

A module is compiled once per artifact (sha256) and shared by every spec
that uses it. :class:`ModuleCache` finds it among the modules already loaded
(a bounded LRU), waits for a compile of the same artifact already under way,
deserializes (mmap) it from ``cache_dir``, or compiles it with cranelift and
serializes it there. The disk key is made of the artifact's sha256, the
wasmtime version and the engine configuration, so a redeploy or a Spearlet
restart does not recompile. The cache directory must be trusted:
deserializing is only safe for files this runtime wrote itself.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import logging
import os
import threading
from pathlib import Path
from typing import Any

from ... import errors
from .engine import Engine, short_trap, wasmtime

__all__ = ["Module", "ModuleCache", "WASI_MODULES"]

log = logging.getLogger("spear.runtimes.wasm")

WASM_MAGIC = b"\0asm"
WASI_MODULES = ("wasi_snapshot_preview1", "wasi_unstable")
#: WASI imports that can park the calling thread (a sleep)
_BLOCKING_IMPORTS = frozenset({"poll_oneoff"})


class Module:
    """A compiled and linked module shared by every spec with the same artifact."""

    __slots__ = ("module", "pre", "pre_ptr", "exports", "imports_wasi", "may_block", "memory_names", "from_cache")

    def __init__(self, module: Any, pre: Any, from_cache: bool) -> None:
        self.module = module
        self.pre = pre
        self.pre_ptr = pre.ptr()  # kept alive by ``pre``
        self.exports = {e.name: e.type for e in module.exports}
        wasi = {i.name for i in module.imports if i.module in WASI_MODULES}
        self.imports_wasi = bool(wasi)
        #: the guest can sleep inside a host call, where the epoch cannot stop it
        self.may_block = not wasi.isdisjoint(_BLOCKING_IMPORTS)
        self.memory_names = tuple(
            n.encode() for n, t in self.exports.items() if isinstance(t, wasmtime.MemoryType)
        )
        self.from_cache = from_cache


class ModuleCache:
    """Loaded modules (at most ``loaded_max``, least recently used dropped)
    over a disk cache in ``cache_dir`` (see module doc).

    Counters: ``compiles`` (artifacts compiled by cranelift), ``disk_hits``
    (deserialized from ``cache_dir``), ``memory_hits`` (found loaded).
    """

    def __init__(self, engine: Engine, cache_dir: Path, loaded_max: int) -> None:
        self.engine = engine
        self.cache_dir = cache_dir
        self.fingerprint = Engine.fingerprint()
        self.compiles = 0
        self.disk_hits = 0
        self.memory_hits = 0
        self._loaded: collections.OrderedDict[str, Module] = collections.OrderedDict()
        self._loaded_max = loaded_max
        self._inflight: dict[str, asyncio.Future] = {}

    def path(self, digest: str) -> Path:
        """Where the serialized module of an artifact with this sha256 lives."""
        key = hashlib.sha256(f"{self.fingerprint}\0{digest}".encode()).hexdigest()
        return self.cache_dir / f"{key}.cwasm"

    def clear(self) -> None:
        """Forget the loaded modules (the disk cache stays)."""
        self._loaded.clear()

    async def get(self, artifact: bytes, digest: str) -> Module:
        """The loaded module for an artifact: from memory, from a compile of
        the same artifact already under way, from the disk cache, or compiled."""
        while True:
            mod = self._loaded.get(digest)
            if mod is not None:
                self._loaded.move_to_end(digest)
                self.memory_hits += 1
                return mod
            pending = self._inflight.get(digest)
            if pending is None:
                break
            try:
                await asyncio.shield(pending)
            except asyncio.CancelledError:
                if not pending.cancelled():
                    raise  # we were cancelled ourselves
                # the compiling caller was cancelled: try again ourselves
        fut = asyncio.get_running_loop().create_future()
        self._inflight[digest] = fut
        try:
            mod = await asyncio.to_thread(self._load, artifact, digest)
        except asyncio.CancelledError:
            fut.cancel()
            raise
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # retrieved: waiters re-raise it, nobody else must
            raise
        finally:
            self._inflight.pop(digest, None)
        if mod.from_cache:
            self.disk_hits += 1
        else:
            self.compiles += 1
        self._loaded[digest] = mod
        while len(self._loaded) > self._loaded_max:
            self._loaded.popitem(last=False)
        fut.set_result(mod)
        return mod

    def _load(self, artifact: bytes, digest: str) -> Module:
        """Deserialize from the disk cache, else compile and store. (thread)"""
        path = self.path(digest)
        module = None
        from_cache = False
        if path.is_file():
            try:
                module = wasmtime.Module.deserialize_file(self.engine.wasmtime, str(path))
                from_cache = True
            except Exception as exc:  # stale/corrupt entry: recompile and replace
                log.warning("wasm cache entry %s unusable (%s); recompiling", path.name, short_trap(exc))
                try:
                    path.unlink()
                except OSError:
                    pass
        if module is None:
            module = self._compile(artifact)
            self._store(path, module)
        try:
            pre = self.engine.linker.instantiate_pre(module)
        except wasmtime.WasmtimeError as exc:
            raise errors.InvalidArgument(
                f"cannot link module: {short_trap(exc)} (only WASI preview1 imports are provided)"
            ) from None
        return Module(module, pre, from_cache)

    def _compile(self, artifact: bytes) -> Any:
        if artifact[:4] == WASM_MAGIC:
            wasm = artifact
        else:
            try:
                text = artifact.decode("utf-8")
            except UnicodeDecodeError:
                raise errors.InvalidArgument(
                    "artifact is neither a wasm binary (no \\0asm magic) nor UTF-8 .wat text"
                ) from None
            try:
                wasm = wasmtime.wat2wasm(text)
            except wasmtime.WasmtimeError as exc:
                raise errors.InvalidArgument(f"invalid .wat text: {exc}") from None
        try:
            return wasmtime.Module(self.engine.wasmtime, bytes(wasm))
        except wasmtime.WasmtimeError as exc:
            raise errors.InvalidArgument(f"invalid wasm module: {exc}") from None

    def _store(self, path: Path, module: Any) -> None:
        try:
            data = module.serialize()
            self.cache_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
            with open(tmp, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        except Exception as exc:  # the cache is an optimisation; never fail a deploy
            log.warning("cannot write wasm cache entry %s: %s", path, exc)
