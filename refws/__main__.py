"""``python -m refws ...`` is the ``refws`` command."""

import sys

from .cli import main

sys.exit(main())
