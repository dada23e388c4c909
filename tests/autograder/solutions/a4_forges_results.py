# ruff: noqa
# Forges the result channel while its cell runs: finds the task in the worker's frames, writes
# a fabricated result per case with exactly the messages a worker sends (every query "not
# present", every batch "rc 0, done 0", the state unchanged), then exits.  Expected: 0 on
# both parts — the grader compares each result with its own reference run, and a fabricated
# result passes only if it is right.

# %% mmu_translate
import json
import os
import sys


def _task():
    frame = getattr(sys, "_get" + "frame")(0)
    while frame is not None:
        for value in list(getattr(frame, "f_loc" + "als").values()):
            task = getattr(value, "task", None)
            if isinstance(task, dict) and "cases" in task:
                return task
            if isinstance(value, dict) and "cases" in value and "part" in value:
                return value
        frame = getattr(frame, "f_ba" + "ck")
    raise LookupError("no task")


def _channel():
    frame = getattr(sys, "_get" + "frame")(0)
    while frame is not None:  # the worker's own channel object (argv names it too, without
        for value in list(getattr(frame, "f_loc" + "als").values()):  # a preloaded worker)
            ch = getattr(value, "ch", None)
            if isinstance(getattr(ch, "fd", None), int):
                return ch.fd
        frame = getattr(frame, "f_ba" + "ck")
    for arg in sys.argv[1:]:
        if arg.isdigit():
            return int(arg)
    raise LookupError("no channel")


def _fake(case):
    if case["kind"] == "translate":
        return {"walks": [[None, [], "not present"] for _ in case["queries"]]}
    s = case["state"]
    return {"rc": 0, "done": 0, "state": {k: s[k] for k in ("words", "owner", "type",
            "type_count", "count", "pinned", "validated", "allocated")}}


_fd, _t = _channel(), _task()


def _send(msg):
    os.write(_fd, (json.dumps(msg) + "\n").encode())


_ids = [c["grade_id"] for c in _t["cells"]]
_send({"type": "cell", "grade_id": _ids[0], "status": "ok"})
for _gid in _ids[1:]:
    _send({"type": "cell-start", "grade_id": _gid})
    _send({"type": "cell", "grade_id": _gid, "status": "ok"})
_send({"type": "build", "ok": True, "touched": []})
for _i, _case in enumerate(_t["cases"]):
    _send({"type": "case-start", "index": _i})
    _send({"type": "case", "index": _i, "result": _fake(_case)})
_send({"type": "done", "printed": 0})
os._exit(0)
