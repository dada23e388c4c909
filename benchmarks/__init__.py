"""virtcore benchmarks: ``python -m benchmarks`` (or ``make bench``) runs them all.

Each module exposes ``run() -> list[Row]`` and measures its baseline in the
same run, so ratios do not depend on the machine of the day.
"""
