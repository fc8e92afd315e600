"""What a decorated function ships besides itself: its code bundle and requirements.

Every function deploys with a code bundle (:func:`spear.bundles.pack`)
holding ``_spear_runner.py``, the node-side handler, plus the files of the
connection's ``working_dir`` when it has one; the node unpacks the bundle and
runs the handler from it, so neither Spear nor the project's code needs to be
installed there. The runner's own needs (the same ``cloudpickle`` as here, as
pickles need it, and ``msgspec``) are requirements of every function, next to
those of the connection and of the function.

Modules whose file lies in the working directory, importable from it under
their own name, travel in the bundle and are imported on the node; cloudpickle
pickles their functions by reference (:func:`ship_module`).
"""

from __future__ import annotations

import functools
import os
import sys
import sysconfig

import cloudpickle

from .. import bundles, errors
from ..specs import check_requirement
from .runner import spear_runner

#: the runner's name in every bundle, and the handler that calls it
RUNNER_MODULE = "_spear_runner"
HANDLER = f"{RUNNER_MODULE}:run"


@functools.cache
def runner_source() -> bytes:
    """The source of :mod:`.runner.spear_runner`, shipped as ``_spear_runner.py``."""
    with open(spear_runner.__file__, "rb") as f:
        return f.read()


def requirement_lines(requirements) -> tuple[str, ...]:
    """Requirement lines (``"humanize"``, ``"numpy>=1.26"``), each checked."""
    if isinstance(requirements, (str, bytes)):
        raise TypeError("requirements is a list of lines such as [\"humanize>=4\"], not one string")
    return tuple(check_requirement(line) for line in requirements)


def runner_requirements() -> list[str]:
    """What the runner needs on the node: this ``cloudpickle`` exactly, and ``msgspec``."""
    return [f"cloudpickle=={cloudpickle.__version__}", "msgspec>=0.18"]


class CodeBundle:
    """The bundle of one connection: its bytes, their SHA-256 and the local root."""

    __slots__ = ("data", "sha256", "root")

    def __init__(self, root: str | None) -> None:
        self.root = root
        self.data = bundles.pack(root, extra={f"{RUNNER_MODULE}.py": runner_source()})
        self.sha256 = bundles.sha256(self.data)


def code_bundle(working_dir: str | os.PathLike | None) -> CodeBundle:
    """Pack ``working_dir`` (None: the runner alone) with the runner.

    INVALID_ARGUMENT when it is not a directory, holds its own
    ``_spear_runner.py`` or packs too large.
    """
    if working_dir is None:
        return _runner_only()
    root = os.path.realpath(os.fspath(working_dir))
    if not os.path.isdir(root):
        raise errors.InvalidArgument(f"working_dir {os.fspath(working_dir)!r} is not a directory")
    if os.path.exists(os.path.join(root, f"{RUNNER_MODULE}.py")):
        raise errors.InvalidArgument(
            f"working_dir {root} has a {RUNNER_MODULE}.py: that name is Spear's runner")
    return CodeBundle(root)


@functools.cache
def _runner_only() -> CodeBundle:
    return CodeBundle(None)


def _installed_roots() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    return tuple(os.path.realpath(paths[k]) + os.sep
                 for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths)


def in_bundle(module, root: str | None) -> bool:
    """Whether ``module`` travels in the bundle of ``root``: its file is there, at
    the path its dotted name gives (so the node imports it under the same name)."""
    path = getattr(module, "__file__", None)
    if root is None or not path:
        return False
    rel = os.path.relpath(os.path.realpath(path), root)
    if rel.startswith(os.pardir + os.sep) or os.path.isabs(rel):
        return False
    stem = module.__name__.replace(".", os.sep)
    return rel in (stem + ".py", os.path.join(stem, "__init__.py"))


def ship_module(fn, root: str | None) -> None:
    """Decide how the module of ``fn`` travels, before cloudpickle pickles ``fn``.

    ``__main__`` always goes by value (cloudpickle's own rule); a module in
    the bundle goes by reference; an installed one (standard library or
    site-packages) by reference too, as the node is expected to have it; any
    other module (a script, a test module, a package of the project outside
    the working directory) by value.
    """
    module = sys.modules.get(getattr(fn, "__module__", None) or "")
    if module is None or module.__name__ == "__main__":
        return
    registered = module.__name__ in cloudpickle.list_registry_pickle_by_value()
    if in_bundle(module, root):
        if registered:  # another connection shipped it by value: not this one
            cloudpickle.unregister_pickle_by_value(module)
        return
    path = getattr(module, "__file__", None)
    if path and os.path.realpath(path).startswith(_installed_roots()):
        return
    if not registered:
        cloudpickle.register_pickle_by_value(module)
