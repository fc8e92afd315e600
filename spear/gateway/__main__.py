"""``python -m spear.gateway``: the HTTP gateway daemon."""

import sys

from .cli import main

sys.exit(main())
