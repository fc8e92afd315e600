"""``python -m spear.sms`` is ``spear sms``."""

import sys

from ..cli import main

sys.exit(main(["sms", *sys.argv[1:]]))
