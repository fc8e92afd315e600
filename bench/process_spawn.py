"""What a process function's start costs with its limits applied.

Every process the process runtime starts waits behind a ``sh`` gate while its
rlimits are set and it joins its own cgroup (docs/sandbox.md, Limits). This
measures spawn-to-result of a one-shot ``true`` (with and without the sandbox
user, with and without a network namespace, with cgroups or with the rlimit
fallback) and a warm pooled call of a no-op Python handler, p10 and median
in ms. Run it as root to see the sandbox and the cgroups; elsewhere the
sandboxed rows are the Spearlet's own user and the cgroups are off anyway.

    python -m bench.process_spawn              # 300 runs per row
    python -m bench.process_spawn --runs 1000
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

from spear.protocol import FunctionSpec, Limits
from spear.runtimes.hostpaths import HostPaths
from spear.runtimes.process import ProcessRuntime

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

ROWS = [
    # label, user, network, cgroups, pooled
    ("one-shot true, Spearlet's user, cgroups", None, True, "auto", False),
    ("one-shot true, Spearlet's user, rlimits only", None, True, "off", False),
    ("one-shot true, sandboxed, network=true", "auto", True, "auto", False),
    ("one-shot true, sandboxed, network=false", "auto", False, "auto", False),
    ("pooled warm call, handlers:noop, sandboxed", "auto", True, "auto", True),
]


async def row(user, network: bool, cgroups: str, pooled: bool, runs: int) -> list[float]:
    rt = ProcessRuntime(user=user, cgroups=cgroups, host_paths=HostPaths([str(EXAMPLES)]))
    if pooled:
        spec = FunctionSpec(name="b", runtime="process", handler="handlers:noop",
                            workdir=str(EXAMPLES), limits=Limits(network=network))
        runs *= 10
    else:
        spec = FunctionSpec(name="b", runtime="process", command=["true"],
                            limits=Limits(network=network))
    try:
        inst = await rt.create_instance(await rt.prepare(spec))
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            await rt.invoke(inst, b"", [], Limits(cpu_seconds=5))
            times.append(time.perf_counter() - t0)
        return sorted(times)
    finally:
        await rt.close()


async def main(runs: int) -> None:
    for label, user, network, cgroups, pooled in ROWS:
        ts = await row(user, network, cgroups, pooled, runs)
        n = len(ts)
        print(f"{label:48s} p10 {ts[n // 10] * 1e3:7.3f} ms   median {ts[n // 2] * 1e3:7.3f} ms")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=300)
    asyncio.run(main(ap.parse_args().runs))
