#!/usr/bin/env python3
"""Long fuzz runs of the SMS and a Spearlet; not part of CI.

    python3 bench/fuzz_long.py                     # 10 minutes, random seed
    python3 bench/fuzz_long.py --seconds 3600 --seed 1234
    python3 bench/fuzz_long.py --atheris 600       # then 10 minutes of atheris
    python3 bench/fuzz_long.py --glibc-default     # daemons with glibc's malloc defaults

The wire fuzz is tests/fuzz/test_wire.py::test_fuzz_sms_and_spearlet with
SPEAR_FUZZ_SECONDS set: hypothesis rounds of random seeds against a real SMS
and Spearlet for that long, the same properties as in CI. Its summary (frames,
rates, RSS timeline, withheld inputs, known bugs seen) is printed and written to
fuzz-summary.json in the cluster's data dir (pytest's tmp dir, path printed).
``--atheris`` then runs tests/fuzz/atheris_sms.py (coverage-guided, in-process
decoder + SMS) with its corpus in ``--corpus``. Exit status: non-zero if
either run failed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=600.0, help="wire fuzz duration")
    ap.add_argument("--seed", type=int, help="first hypothesis seed (default: random)")
    ap.add_argument("--shrink", action="store_true", help="let hypothesis shrink a failure")
    ap.add_argument("--glibc-default", action="store_true",
                    help="run the daemons without MALLOC_MMAP_THRESHOLD_ (RSS ratchets)")
    ap.add_argument("--atheris", type=float, default=0.0, metavar="SECONDS",
                    help="also run atheris_sms.py for this long")
    ap.add_argument("--corpus", default="/tmp/spear-atheris-corpus")
    args = ap.parse_args()

    env = {**os.environ, "SPEAR_FUZZ_SECONDS": str(args.seconds)}
    if args.seed is not None:
        env["SPEAR_FUZZ_SEED"] = str(args.seed)
    if args.shrink:
        env["SPEAR_FUZZ_SHRINK"] = "1"
    if args.glibc_default:
        env["SPEAR_FUZZ_GLIBC_DEFAULT"] = "1"
    rc = subprocess.call(
        [sys.executable, "-m", "pytest", "tests/fuzz/test_wire.py::test_fuzz_sms_and_spearlet",
         "-q", "-s", "-p", "no:cacheprovider"], cwd=ROOT, env=env)
    if args.atheris:
        Path(args.corpus).mkdir(parents=True, exist_ok=True)
        crashes = Path(args.corpus).parent / "spear-atheris-crashes"
        crashes.mkdir(exist_ok=True)
        rc2 = subprocess.call(
            [sys.executable, "tests/fuzz/atheris_sms.py", f"-max_total_time={int(args.atheris)}",
             "-rss_limit_mb=4096", f"-artifact_prefix={crashes}/", args.corpus], cwd=ROOT)
        rc = rc or rc2
    return rc


if __name__ == "__main__":
    sys.exit(main())
