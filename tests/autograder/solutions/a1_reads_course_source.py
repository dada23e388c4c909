# ruff: noqa
# Looks for the instructor's source notebook next to the library (the checkout's course/)
# and anywhere shallow on the file system, and executes the handlers_io solution cell from
# it.  Expected: handlers_io scores 0 — nothing of course/ is in the sandbox.

# %% handlers_io
import builtins
import json
import os

import virtcore as _vc


def _solution(grade_id):
    here = os.path.dirname(os.path.dirname(os.path.abspath(_vc.__file__)))
    for root in (here, os.path.dirname(here), "/"):
        for folder, subs, files in os.walk(root):
            if folder.count(os.sep) - root.count(os.sep) >= 4:
                subs[:] = []
            subs[:] = [s for s in subs if s not in ("proc", "sys", "dev", ".git", ".venv",
                                                    "node_modules", "usr")]
            for name in files:
                if not name.endswith(".ipynb"):
                    continue
                try:
                    with open(os.path.join(folder, name), encoding="utf-8") as f:
                        cells = json.load(f).get("cells", [])
                except Exception:
                    continue
                for cell in cells:
                    meta = cell.get("metadata", {}).get("nbgrader", {})
                    text = "".join(cell.get("source", []))
                    if meta.get("grade_id") == grade_id and "BEGIN SOLUTION" in text:
                        return text
    raise LookupError("no source notebook found")


getattr(builtins, "ex" + "ec")(_solution("handlers_io"), globals())
