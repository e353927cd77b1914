"""``python -m mcnc``: the command line."""

import sys

from mcnc.cli import main

sys.exit(main())
