# ruff: noqa
# Kills every other grading worker it can see (same uid in the old worker: all of them),
# for a few seconds, from two cells.  Expected: this submission scores what the blank
# scores, and the other students graded at the same time keep their full marks — in a
# sandbox with its own PID namespace there is no one else to see.

# %% handlers_interrupt_flag
import os
import time


def _kill_the_others(seconds):
    me = os.getpid()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for pid in os.listdir("/proc"):
            if not pid.isdigit() or int(pid) in (me, 1):
                continue
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmd = f.read()
                if b"autograder" in cmd or b"w.main" in cmd:
                    os.kill(int(pid), 9)
            except OSError:
                pass
        time.sleep(0.02)


_kill_the_others(4)
raise NotImplementedError()

# %% handlers_io
_kill_the_others(4)
raise NotImplementedError()
