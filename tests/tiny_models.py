"""Re-export of ``llmasr.tiny_models`` (moved there: the demo profile builds tiny models at run time)."""

from llmasr.tiny_models import *  # noqa: F401,F403
