"""``python -m spear`` is ``spear``."""

import sys

from .cli import main

sys.exit(main())
