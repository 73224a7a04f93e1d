"""Entry point of ``python -m refseg`` (the same command line as the ``refseg`` command)."""

import sys

from refseg.cli import main

sys.exit(main(prog="python -m refseg"))
