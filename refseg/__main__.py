"""Entry point of ``python -m refseg``."""

import sys

from refseg.cli import main

sys.exit(main())
