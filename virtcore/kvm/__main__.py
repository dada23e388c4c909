"""``python -m virtcore.kvm run guest.bin [--real] [--isa x86|teaching] [--trace]``."""

import sys

from virtcore.kvm.cli import main

sys.exit(main())
