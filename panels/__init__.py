"""The refseg panel (``refseg_panel``): ``PANELS`` is what the plugin's ``register`` registers."""

from .refseg_panel import RefsegPanel

PANELS = (RefsegPanel,)
