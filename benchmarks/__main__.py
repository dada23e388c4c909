"""Run every benchmark and print its figures: ``python -m benchmarks [name ...]``."""

from __future__ import annotations

import importlib
import pkgutil
import platform
import sys
import time

import benchmarks


def main(argv: list[str]) -> int:
    names = sorted(m.name for m in pkgutil.iter_modules(benchmarks.__path__)
                   if m.name.startswith("bench_"))
    wanted = [n if n.startswith("bench_") else "bench_" + n for n in argv] or names
    unknown = set(wanted) - set(names)
    if unknown:
        print(f"unknown benchmark(s): {', '.join(sorted(unknown))}; have {', '.join(names)}")
        return 2
    print(f"virtcore benchmarks — Python {platform.python_version()} on {platform.machine()}")
    for name in wanted:
        mod = importlib.import_module(f"benchmarks.{name}")
        t0 = time.perf_counter()
        rows = mod.run()
        print(f"\n{name}  ({(mod.__doc__ or '').strip().splitlines()[0]})")
        for row in rows:
            print(row)
        print(f"  [{time.perf_counter() - t0:.1f} s]")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
