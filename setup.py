"""Build the optional Cython kernels in spear/_fast/.

When Cython or a C compiler is missing the package still installs and runs on
the pure-Python twins (see spear/fast.py). Set SPEAR_REQUIRE_EXTENSIONS=1 to
make a failed build an error instead (CI does).
"""

import glob
import os
import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """build_ext that degrades to pure Python unless extensions are required."""

    def run(self):
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - any failure means "no compiler"
            self._skip(exc)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001
            self._skip(exc)

    @staticmethod
    def _skip(exc):
        if os.environ.get("SPEAR_REQUIRE_EXTENSIONS") == "1":
            raise exc
        sys.stderr.write(f"spear: Cython extensions not built ({exc}); using pure-Python twins\n")


def extensions():
    sources = sorted(glob.glob("spear/_fast/*.pyx"))
    if not sources:
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        if os.environ.get("SPEAR_REQUIRE_EXTENSIONS") == "1":
            raise
        sys.stderr.write("spear: Cython not available; using pure-Python twins\n")
        return []
    return cythonize(
        sources,
        language_level=3,
        compiler_directives={"boundscheck": False, "wraparound": False, "cdivision": True},
        quiet=True,
    )


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
