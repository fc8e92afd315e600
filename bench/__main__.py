"""``python -m bench``: the performance harness (the same as ``spear bench``).

The harness lives in :mod:`spear.bench` so that ``spear bench`` works from an
installed checkout; see its docstring for what each section measures.
"""

import sys

from spear.bench import main

sys.exit(main())
