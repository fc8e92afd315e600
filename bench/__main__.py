"""``python -m bench``: the performance harness (:mod:`bench.harness`); from the repository root."""

import sys

from bench.harness.main import main

sys.exit(main())
