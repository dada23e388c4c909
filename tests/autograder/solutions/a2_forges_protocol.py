# ruff: noqa
# Forges the *serving* protocol: the grader now runs every case itself and asks the worker one
# scheduler hook at a time, so the task holds no case at all.  This cell writes, straight to
# the result descriptor, the rest of the worker's messages (every cell ok, build ok), then
# fabricated replies of the new protocol — class attributes, "run vCPU 0 for 30 ms" decisions
# — and fabricated legal-looking traces (case messages), all without ever reading a request,
# then exits.  Expected: every part 0 (no more than the blank): replies must answer requests,
# and traces from the worker are not part of the protocol any more.

# %% credit_accounting
import json
import os
import sys


def _task():
    frame = getattr(sys, "_get" + "frame")(0)
    while frame is not None:
        for value in list(getattr(frame, "f_loc" + "als").values()):
            task = getattr(value, "task", None)
            if isinstance(task, dict) and "cells" in task:
                return task
            if isinstance(value, dict) and "cells" in value and "part" in value:
                return value
        frame = getattr(frame, "f_ba" + "ck")
    raise LookupError("no task")


def _channel():
    frame = getattr(sys, "_get" + "frame")(0)
    while frame is not None:
        for value in list(getattr(frame, "f_loc" + "als").values()):
            ch = getattr(value, "ch", None)
            if isinstance(getattr(ch, "fd", None), int):
                return ch.fd
        frame = getattr(frame, "f_ba" + "ck")
    for arg in sys.argv[1:]:
        if arg.isdigit():
            return int(arg)
    raise LookupError("no channel")


_fd, _t = _channel(), _task()


def _send(msg):
    os.write(_fd, (json.dumps(msg) + "\n").encode())


_ids = [c["grade_id"] for c in _t["cells"]]
_send({"type": "cell", "grade_id": _ids[0], "status": "ok"})
for _gid in _ids[1:]:
    _send({"type": "cell-start", "grade_id": _gid})
    _send({"type": "cell", "grade_id": _gid, "status": "ok"})
_send({"type": "build", "ok": True, "touched": []})
for _case in range(40):  # as many cases as any part has, and more
    _send({"type": "reply", "t": [], "a": [10_000, 30_000, "StudentCredit"]})
    for _k in range(2000):
        _send({"type": "reply", "t": [], "d": [0, 30_000]})
    _send({"type": "case-start", "index": _case})
    _send({"type": "case", "index": _case, "result": {
        "vcpus": ["d0.0", "d1.0"], "segments": [[0, 0, 0, 1_500_000], [0, 1, 1_500_000, 3_000_000]],
        "runnable": [[[0, 3_000_000]], [[0, 3_000_000]]], "latencies": [[0], [1_500_000]],
        "busy": [3_000_000]}})
_send({"type": "done", "printed": 0})
os._exit(0)

# %% credit_boost
pass

# %% credit_caps
pass

# %% credit_multi_pcpu
pass
