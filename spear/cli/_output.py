"""How commands print: tables, JSON, byte counts. Imports nothing of Spear."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import msgspec


def print_json(obj: Any) -> None:
    """``obj`` (Structs included) as indented, key-sorted JSON on stdout."""
    print(json.dumps(msgspec.to_builtins(obj), indent=2, sort_keys=True, default=str))


def print_either(args, obj: Any, text: str) -> None:
    """``obj`` as JSON with ``--json``, else ``text``."""
    if args.json:
        print_json(obj)
    else:
        print(text)


def print_failure(error, out) -> None:
    """What a failed execution kept (an ``ErrorInfo`` or None): its stderr tail and
    its traceback, when known."""
    for title, text in (("stderr (tail)", error and error.stderr_tail),
                        ("traceback", error and error.traceback)):
        if text:
            print(f"--- {title} ---\n{text.rstrip()}", file=out)


def fmt_bytes(n: float) -> str:
    """``512B``, ``1.5KiB``, ... ``2.0TiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return str(n)


def short(b: bytes, n: int = 34) -> str:
    """The first ``n`` characters of ``b`` as one line of text."""
    s = b.decode("utf-8", "replace").strip().replace("\n", "\\n")
    return s if len(s) <= n else s[: n - 1] + "…"


def print_table(title: str, columns: list[str], rows: list[list[Any]],
                no_wrap: tuple[str, ...] = ()) -> None:
    """A table on a terminal (rich), plain aligned text otherwise; the columns
    named in ``no_wrap`` are never folded (ids must stay whole to be copied)."""
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # pragma: no cover
        Console = None
    if Console is not None:
        t = Table(title=title, header_style="bold")
        for c in columns:
            t.add_column(c, no_wrap=c in no_wrap)
        for r in rows:
            t.add_row(*[str(x) for x in r])
        Console(width=max(100, os.get_terminal_size(1).columns if sys.stdout.isatty() else 160)).print(t)
        return
    print(title)  # pragma: no cover
    for r in [columns, *rows]:  # pragma: no cover
        print("  ".join(str(x) for x in r))
