"""``python -m spear.spearlet`` is ``spear spearlet``."""

import sys

from ..cli import main

sys.exit(main(["spearlet", *sys.argv[1:]]))
