"""``python -m dynaps``: the same as the ``dynaps`` command."""

import sys

from dynaps.cli import main

sys.exit(main())
