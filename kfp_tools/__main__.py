"""``python -m kfp_tools`` is ``python -m kfp_tools.schedule``."""

import sys

from kfp_tools.schedule import main

sys.exit(main())
