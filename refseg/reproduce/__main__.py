"""Entry point of ``python -m refseg.reproduce``."""

import sys

from refseg.reproduce.cli import main

sys.exit(main())
