"""The refseg FiftyOne plugin: registers the operators of ``operators/`` and the panel of
``panels/``.

FiftyOne re-runs this module when it (re)loads plugins, so it imports only the operator and
panel classes; they import the ``refseg`` engine (and torch) lazily, inside forms, events and
executions.
"""

import importlib.util
import os
import sys

# Installed as a plugin only (`fiftyone plugins download`, or a symlink into the plugins
# directory) the engine package sits next to this file rather than in site-packages; make it
# importable. A pip-installed refseg takes precedence. find_spec does not import the package.
if importlib.util.find_spec("refseg") is None:
    sys.path.append(os.path.dirname(os.path.abspath(__file__)))


def register(p):
    # Imported here, not at module level: pytest imports this file on its own (the checkout
    # root is collected as a package), where a relative import has no parent package.
    from .operators import OPERATORS
    from .panels import PANELS

    for operator in OPERATORS + PANELS:
        p.register(operator)
