"""Run the container examples straight on the docker runtime (no cluster).

    python3 examples/container/run.py

Needs a Docker Engine with the test images (.ci/setup-docker.sh); builds
spear-example/wordcount from this directory if it is missing.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import msgspec

from spear import errors
from spear.protocol import FunctionSpec
from spear.runtimes.docker import DockerRuntime

HERE = Path(__file__).resolve().parent
TEXT = b"the quick brown fox jumps over the lazy dog\nthe dog sleeps\n"


def load(name: str) -> FunctionSpec:
    raw = tomllib.loads((HERE / name).read_text())["function"]
    raw["command"] = raw["command"].split()
    return msgspec.convert(raw, FunctionSpec)


def build_image(image: str) -> None:
    if subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode:
        print(f"building {image} ...", flush=True)
        done = subprocess.run(["docker", "build", "-q", "-t", image, str(HERE)],
                              env={**os.environ, "DOCKER_BUILDKIT": "0"}, capture_output=True)
        if done.returncode:
            sys.exit(f"docker build failed:\n{done.stderr.decode()}")


async def main() -> int:
    rt = DockerRuntime()
    ok, why = rt.available()
    if not ok:
        print(f"docker runtime unavailable: {why}", file=sys.stderr)
        return 1
    try:
        upper = load("upper.toml")
        inst = await rt.create_instance(await rt.prepare(upper))
        t = time.perf_counter()
        out = await rt.invoke(inst, b"inside a container\n", [], upper.limits)
        print(f"one-shot {upper.name}: {out.output!r} in {time.perf_counter() - t:.3f}s")

        wc = load("wordcount.toml")
        build_image(wc.image)
        inst = await rt.create_instance(await rt.prepare(wc))
        try:
            for args in ([], [1]):
                t = time.perf_counter()
                out = await rt.invoke(inst, TEXT, args, wc.limits,
                                      on_log=lambda b: print("  log:", b.decode().rstrip()))
                print(f"pooled {wc.name}{args}: {out.output.decode().strip()} "
                      f"in {time.perf_counter() - t:.3f}s, cpu {out.usage.cpu_time:.3f}s, "
                      f"peak {out.usage.peak_memory >> 20} MiB")
            try:
                await rt.invoke(inst, b"", [], wc.limits)
            except errors.FunctionError as exc:
                print(f"empty input -> {exc.code}: {exc.message}")
        finally:
            await rt.destroy(inst)
    finally:
        await rt.close()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
