"""``python -m mcnc``: the command line."""

import sys

from mcnc.apps.cli import main

sys.exit(main())
