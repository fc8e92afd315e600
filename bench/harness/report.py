"""The run's output: the table on stdout and the JSON file (figures, floors, raw samples, metadata)."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

from .plan import Plan
from .results import Results, fmt


def print_results(res: Results, plan: Plan) -> None:
    """One row per figure: value, floor, ratio, target, pass/fail, note; then what was skipped."""
    rows = []
    for f in res.figures:
        r = f.ratio
        rows.append([
            f.figure,
            fmt(f.value, f.unit),
            fmt(f.floor, f.unit) if f.floor is not None else "",
            f"{r:.2f}x" if r is not None else "",
            f.target,
            {True: "pass", False: "FAIL", None: ""}[f.passed],
            f.note,
        ])
    title = f"spear bench ({'quick' if plan.quick else 'full'} run)"
    cols = ["figure", "value", "floor", "ratio", "target", "pass/fail", "note"]
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # pragma: no cover
        print(title)
        for r in [cols, *rows]:
            print(" | ".join(str(x) for x in r))
        return
    t = Table(title=title, header_style="bold", show_lines=False)
    for c in cols:
        t.add_column(c, overflow="fold", no_wrap=c in ("value", "floor", "ratio", "pass/fail"))
    for r in rows:
        style = "red" if r[5] == "FAIL" else ("green" if r[5] == "pass" else None)
        t.add_row(*[str(x) for x in r], style=style)
    width = 220 if not sys.stdout.isatty() else max(120, shutil.get_terminal_size().columns)
    Console(width=width).print(t)
    for k, why in res.skipped.items():
        print(f"skipped {k}: {why}")


def meta(plan: Plan, sections: list[str], started: float) -> dict:
    """When, what and on what the run measured."""
    import msgspec
    import zmq

    import spear
    import spear.fast as fast

    rev = ""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5).stdout.strip()
    except Exception:  # noqa: BLE001 - not a checkout, or no git
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "when": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - started, 1),
        "quick": plan.quick,
        "sections": sections,
        "plan": plan.__dict__,
        "spear": getattr(spear, "__version__", ""),
        "git": rev,
        "python": sys.version.split()[0],
        "pyzmq": zmq.__version__,
        "libzmq": zmq.zmq_version(),
        "msgspec": msgspec.__version__,
        "extensions": fast.EXTENSIONS,
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "platform": platform.platform(),
        "loadavg_at_end": load,
        "config": "spearlet max_concurrency raised to >= 4096 (default 64) so a pipelined window fits; "
                  "process functions run as the bench's own user",
    }


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


def write_json(path: str, res: Results, meta: dict) -> None:
    """Everything the run found, as JSON at ``path``."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    doc = {"meta": meta, "figures": [f.as_json() for f in res.figures], "floor": res.floor,
           "skipped": res.skipped, "raw": _jsonable(res.raw)}
    p.write_text(json.dumps(doc, indent=2, default=str) + "\n")
