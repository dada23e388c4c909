"""``python -m virtcore.xen COMMAND …`` — see :mod:`virtcore.xen.cli` (``--help`` teaches)."""

import sys

from virtcore.xen.cli import main

sys.exit(main())
