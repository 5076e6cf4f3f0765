"""``python -m attnops``: the ``attnops`` command line."""

import sys

from attnops.cli import main

sys.exit(main())
