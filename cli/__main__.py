"""python -m cli COMMAND [options]: the ``llmasr`` command without its installed script."""

import sys

from cli import main

sys.exit(main())
