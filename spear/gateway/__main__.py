"""``python -m spear.gateway`` is ``spear gateway``."""

import sys

from ..cli import main

sys.exit(main(["gateway", *sys.argv[1:]]))
