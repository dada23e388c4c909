"""Soak the Xen isolation properties: ``.venv/bin/python -m benchmarks.soak_xen [N] [LEN]``.

Runs :func:`virtcore.xen.fuzz.run_ops` on ``N`` (default 10 000) seeded random sequences of
``LEN`` (default 60) guest and toolstack operations each — the same seven properties as
``tests/xen/test_properties.py`` — prints progress, the duration and every violation, and exits
non-zero if any property failed.  ``make soak`` runs it.
"""

from __future__ import annotations

import sys
import time

from virtcore.rng import derive_seed
from virtcore.xen.fuzz import random_ops, run_ops


def main(argv: list[str]) -> int:
    n = int(argv[0]) if argv else 10_000
    length = int(argv[1]) if len(argv) > 1 else 60
    t0 = time.perf_counter()
    failed = 0
    for i in range(n):
        ops = random_ops(derive_seed("soak_xen", i), length)
        violations = run_ops(ops)
        if violations:
            failed += 1
            print(f"sequence {i}: {violations[0]}")
        if (i + 1) % 1000 == 0:
            print(f"  {i + 1:6d} sequences, {failed} failed, {time.perf_counter() - t0:7.1f} s",
                  flush=True)
    dt = time.perf_counter() - t0
    print(f"soak_xen: {n} sequences × {length} operations, {failed} failed, {dt:.1f} s"
          f" ({n / dt:.0f} sequences/s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
