"""The rules every function spec meets, checked wherever a spec comes in.

The SMS checks a deploy with :func:`check` before it stores anything, and
each Spearlet checks again what it installs (from a client directly or
fetched from the SMS), so no path skips a rule. Imports only
:mod:`spear.errors` and :mod:`spear.protocol`.
"""

from __future__ import annotations

import hashlib
import re

from . import errors, protocol as P

# A requirement is a name, extras, version specifiers and an environment
# marker: never an option line (``-r /etc/...``, ``--index-url ...``), a path
# or a URL, which would let a deployer make the node read its files or fetch
# from anywhere while it builds the environment.
_REQUIREMENT = re.compile(
    r"^[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?"   # name
    r"(?:\[[A-Za-z0-9._,\s-]*\])?"                    # [extras]
    r"\s*(?:(?:===|==|!=|~=|<=|>=|<|>)\s*[A-Za-z0-9.*+!_-]+\s*,?\s*)*"  # specifiers
    r"(?:;[^@\\]*)?\Z"                                # ; marker
)


def check_requirement(line: str) -> str:
    """``line`` stripped, or INVALID_ARGUMENT if it is not a plain requirement."""
    text = line.strip()
    if not _REQUIREMENT.match(text) or "://" in text:
        raise errors.InvalidArgument(
            f"requirement {line!r} is not a package name with optional extras, versions and "
            "marker (options, paths and URLs are not accepted)")
    return text


def check(spec: P.FunctionSpec) -> None:
    """INVALID_ARGUMENT for a spec that no node could run as written."""
    if spec.runtime == "wasm" and not (spec.artifact or spec.artifact_sha256):
        raise errors.InvalidArgument("a wasm function needs an artifact (.wasm or .wat bytes)")
    if spec.runtime == "process" and not (spec.command or spec.handler):
        raise errors.InvalidArgument("a process function needs a command or a handler")
    if spec.runtime == "docker" and not spec.image:
        raise errors.InvalidArgument("a docker function needs an image")
    missing = [k for k in spec.secret_env if k not in spec.env]
    if missing:
        raise errors.InvalidArgument(
            f"{spec.name}: secret_env names {', '.join(missing)}, which env does not set")
    if spec.artifact is not None and spec.artifact_sha256:
        got = hashlib.sha256(spec.artifact).hexdigest()
        if got != spec.artifact_sha256:
            raise errors.InvalidArgument(
                f"{spec.name}: the artifact's SHA-256 is {got}, not {spec.artifact_sha256}")
    if (spec.requirements or spec.python) and not (spec.runtime == "process" and spec.handler):
        raise errors.InvalidArgument(
            f"{spec.name}: requirements and python apply to Python handlers only "
            "(runtime process with a handler)")
    for line in spec.requirements:
        check_requirement(line)


#: runtime names a deployer may write for another: "python" is the process
#: runtime serving a ``module:function`` handler (see :func:`canonical_runtime`)
RUNTIME_ALIASES = {"python": "process"}


def canonical_runtime(runtime: str) -> str:
    """The runtime ``runtime`` stands for (``"python"`` -> ``"process"``); others as given."""
    return RUNTIME_ALIASES.get(runtime, runtime)
