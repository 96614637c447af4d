"""`python -m export RUN_DIR ...`"""

from __future__ import annotations

import sys

from .cli import main

sys.exit(main())
