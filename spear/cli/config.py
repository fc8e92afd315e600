"""``spear config show`` and ``spear config check``.

``show`` prints the effective configuration, one key per line, each with the
layer it came from (``default``, ``file PATH``, ``env SPEAR_...``, ``flag``).
The text form is TOML: it can be saved and used as a configuration file
(values without a TOML form, such as an unset ``fuel``, are printed as
comments; bearer tokens are never printed). ``--json`` gives
``{"file": ..., "values": {"section.key": {"value": ..., "source": ...}}}``.

``check FILE`` loads FILE (and, with ``--env``, the ``SPEAR_*`` variables)
and exits 0 when valid, 2 with the loader's message when not.
"""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from typing import Any, Iterator

import msgspec

from .. import errors
from ..config import load_config
from ._base import EXIT_OK, EXIT_USAGE, Command

#: keys whose values are secrets: shown as a count, never printed
SECRET_KEYS = frozenset({"security.tokens"})


def add_arguments(p: argparse.ArgumentParser) -> None:
    """``config show`` and ``config check`` under the ``config`` parser."""
    csub = p.add_subparsers(dest="config_command", metavar="ACTION", required=True)

    s = csub.add_parser("show", help="the effective configuration and where each value came from")
    s.add_argument("--config", help="TOML configuration file (default: $SPEAR_CONFIG)")
    s.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="a command-line override, e.g. sms.listen=tcp://0.0.0.0:7700 (repeatable)")
    s.add_argument("--json", action="store_true", help="machine-readable output")

    c = csub.add_parser("check", help="validate a configuration file (exit 0 valid, 2 invalid)")
    c.add_argument("file", help="TOML configuration file")
    c.add_argument("--env", action="store_true", help="also apply the SPEAR_* environment variables")
    c.add_argument("--json", action="store_true", help="machine-readable output")


# ------------------------------------------------------------------ building blocks


def parse_override(text: str) -> tuple[str, Any]:
    """``section.key=VALUE`` -> (key, value); VALUE is read as TOML, else kept as a string."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or "." not in key:
        raise errors.ConfigError(f"command line: --set {text!r} is not section.key=VALUE")
    raw = raw.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # bare words: tcp://..., info, ./path
    return key, value


def walk(cfg: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Every leaf of a config Struct as ("section.key", value), in declaration order."""
    for f in msgspec.structs.fields(cfg):
        value = getattr(cfg, f.name)
        key = f"{prefix}{f.encode_name}"
        if isinstance(value, msgspec.Struct):
            yield from walk(value, key + ".")
        else:
            yield key, value


def effective(path: str | None = None, *, env=None, overrides=None) -> dict:
    """``{"file": ..., "values": {"section.key": {"value", "source"}}}`` of the effective config.

    Raises :class:`spear.errors.ConfigError` as the loader does.
    """
    cfg, origin = load_config(path, env=env, overrides=overrides, with_origin=True)
    values = {}
    for key, value in walk(cfg):
        value = msgspec.to_builtins(value)
        if key in SECRET_KEYS and value:
            value = f"<{len(value)} hidden>"
        values[key] = {"value": value, "source": origin.get(key, "default")}
    files = {s[5:] for s in origin.values() if s.startswith("file ")}
    file = str(path) if path else (files.pop() if files else None)
    return {"file": file, "values": values}


def _toml_value(value: Any) -> str | None:
    """A TOML literal, or None when the value has none (unset)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) or '""' for v in value) + "]"
    if isinstance(value, dict):
        items = ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items())
        return "{ " + items + " }" if items else "{}"
    return json.dumps(str(value))


def render_text(eff: dict) -> str:
    """The TOML-with-origins text of :func:`effective`'s result."""
    lines = [f"# effective Spear configuration; file: {eff['file'] or 'none'}",
             "# precedence: default < file < env SPEAR_* < flag"]
    rows: list[tuple[str, str]] = []
    section = None
    for key, item in eff["values"].items():
        sec, name = key.rsplit(".", 1)
        if sec != section:
            rows.append(("", ""))
            rows.append((f"[{sec}]", ""))
            section = sec
        value = item["value"]
        if key in SECRET_KEYS and isinstance(value, str):
            text = f"# {name} = {value}"
        else:
            lit = _toml_value(value)
            text = f"{name} = {lit}" if lit is not None else f"# {name} = (unset)"
        rows.append((text, item["source"]))
    width = max(len(t) for t, src in rows if src)
    for text, src in rows:
        lines.append(f"{text:<{width}}  # {src}" if src else text)
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ commands


def show(args, env=None) -> int:
    """``spear config show``: print the effective configuration and each value's source."""
    try:
        overrides = dict(parse_override(o) for o in getattr(args, "overrides", None) or [])
        # the top-level --log-level/--log-format are flags too, as the daemons apply them
        for key, attr in (("global.log_level", "log_level"), ("global.log_format", "log_format")):
            if getattr(args, attr, None) is not None:
                overrides.setdefault(key, getattr(args, attr))
        eff = effective(getattr(args, "config", None), env=env, overrides=overrides)
    except errors.ConfigError as exc:
        print(f"spear: configuration error: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        print(json.dumps(eff, indent=2))
    else:
        sys.stdout.write(render_text(eff))
    return EXIT_OK


def check(args, env=None) -> int:
    """``spear config check FILE``: 0 if FILE loads, 2 with the loader's message if not."""
    try:
        load_config(args.file, env=env if args.env else {})
    except errors.ConfigError as exc:
        if args.json:
            print(json.dumps({"file": args.file, "ok": False, "error": exc.message}))
        print(f"spear: configuration error: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        print(json.dumps({"file": args.file, "ok": True}))
    else:
        print(f"{args.file}: ok")
    return EXIT_OK


def cmd_config(args) -> int:
    """``spear config show|check``."""
    return {"show": show, "check": check}[args.config_command](args)


COMMANDS = {"config": Command(add_arguments, cmd_config)}
