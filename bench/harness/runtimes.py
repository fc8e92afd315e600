"""Per-runtime figures: cold starts of every runtime, and containers if the node offers docker."""

from __future__ import annotations

import os
import statistics
import time

from .results import ms
from .session import Session

#: cold-start rows: key, label, the warm function it copies, whether the wasm target applies
COLD_KINDS = [
    ("wasm", "wasm export (new module name, cache warm)", "b-add", True),
    ("wasi", "WASI command", "b-hello", True),
    ("python", "Python handler (pyworker)", "b-noop", False),
    ("pooled", "pooled process worker", "b-worker", False),
    ("oneshot", "one-shot process (cat)", "b-oneshot", False),
]


def _cold_once(s: Session, c, key: str, base: str, i: int) -> dict:
    """Deploy a copy of ``base`` with ``min_warm=0`` under a new name; time deploy, first and second call."""
    import msgspec

    from spear import protocol as P

    spec0, data, args = s.specs[base]
    name = f"b-cold-{key}-{i}-{os.getpid()}"
    spec = msgspec.structs.replace(spec0, name=name, pool=P.PoolSettings(min_warm=0))
    t0 = time.perf_counter()
    c.deploy(spec, node=s.node)
    t_dep = time.perf_counter() - t0
    t0 = time.perf_counter()
    r = c.invoke(name, data, args=args, node=s.node)
    t_first = time.perf_counter() - t0
    r.raise_for_status()
    t0 = time.perf_counter()
    c.invoke(name, data, args=args, node=s.node).raise_for_status()
    t_second = time.perf_counter() - t0
    try:
        c.remove(name, node=s.node)
    except Exception:  # noqa: BLE001 - a leftover function does not spoil the figure
        pass
    return {"deploy": t_dep * 1e3, "first": t_first * 1e3, "second": t_second * 1e3,
            "cold_start": r.info.timings.cold_start * 1e3, "cold": r.info.cold}


def section_cold(s: Session) -> None:
    """First invocation after a deploy with ``min_warm=0``, per runtime (median of ``cold_reps``)."""
    raw = s.res.raw.setdefault("cold", {})
    with s.client() as c:
        for key, label, base, wasm_target in COLD_KINDS:
            s.prog.step(f"cold start: {label[:30]}")
            reps = [_cold_once(s, c, key, base, i) for i in range(s.plan.cold_reps)]
            raw[key] = reps

            def med(k: str, reps=reps) -> float:
                return statistics.median(x[k] for x in reps)

            s.res.add("cold", f"cold.{key}.first", f"cold start {label}: first invoke (direct)",
                      med("first"), "ms", target=("<", 5.0) if wasm_target else None,
                      note=f"timings.cold_start {med('cold_start'):.2f} ms; deploy {med('deploy'):.1f} ms; "
                           f"second call {med('second'):.2f} ms"
                           + (f"; median of {len(reps)}" if len(reps) > 1 else ""))


def _docker_one(s: Session, c, kind: str, spec) -> None:
    """Deploy, time the first call, then ``n`` more; one row (None with the reason if it fails)."""
    label = f"docker {kind} container (cat), direct: p50"
    try:
        c.deploy(spec, node=s.node)
        t0 = time.perf_counter()
        r = c.invoke(spec.name, b"spear", node=s.node)
        first = time.perf_counter() - t0
        r.raise_for_status()
        n = s.plan.docker_oneshot_n if kind == "oneshot" else s.plan.docker_pooled_n
        ts = []
        for _ in range(n):
            t0 = time.perf_counter()
            c.invoke(spec.name, b"spear", node=s.node).raise_for_status()
            ts.append(time.perf_counter() - t0)
        raw = s.res.raw["docker"]
        raw[kind] = {"first_ms": first * 1e3, **ms(ts)}
        s.res.add("docker", f"docker.{kind}.p50", label, raw[kind]["p50"], "ms",
                  note=f"first call {first * 1e3:.0f} ms (cold: {r.info.timings.cold_start * 1e3:.0f} ms); n={n}")
    except Exception as exc:  # noqa: BLE001 - report, do not abort the run
        msg = getattr(exc, "message", str(exc))
        s.res.skipped[f"docker.{kind}"] = msg
        s.res.add("docker", f"docker.{kind}.p50", label, None, "ms", note=f"failed: {msg[:100]}")
    finally:
        try:
            c.remove(spec.name, node=s.node)
        except Exception:  # noqa: BLE001
            pass


def section_docker(s: Session) -> None:
    """One-shot and pooled ``cat`` containers, if the node offers the docker runtime."""
    from spear import protocol as P

    s.prog.step("docker: one-shot and pooled containers")
    if "docker" not in s.runtimes:
        why = s.unavailable.get("docker", "the node does not offer the docker runtime")
        s.res.skipped["docker"] = why
        s.res.add("docker", "docker.skipped", "docker runtime", None, "ms", note=f"skipped: {why}")
        return
    image = "spear-test/busybox:latest"
    specs = {
        "oneshot": P.FunctionSpec(name="b-dock-once", runtime="docker", image=image, command=["cat"]),
        "pooled": P.FunctionSpec(name="b-dock-pool", runtime="docker", image=image, command=["cat"],
                                 mode="pooled", pool=P.PoolSettings(min_warm=0)),
    }
    s.res.raw.setdefault("docker", {})
    with s.client(timeout=120) as c:
        for kind, spec in specs.items():
            _docker_one(s, c, kind, spec)
