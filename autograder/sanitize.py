"""Make a student's notebook safe to render for the instructor (formgrader, nbconvert, Lab).

A submitted notebook is the student's file: its markdown may hold raw HTML (``<script>``,
``<img onerror=…>``, ``<iframe>``), its outputs any MIME type (``text/html``,
``application/javascript``, ``image/svg+xml`` with scripts, widget views), its attachments
and metadata anything.  formgrader renders ``autograded/<student>/<assignment>/`` as HTML
in the instructor's browser (nbconvert's HTML exporter passes markdown HTML and
``text/html`` outputs through unsanitised by default — ``HTMLExporter.sanitize_html`` is
off), so a copy that reaches ``autograded/`` unsanitised is a stored XSS against the
instructor.  :func:`sanitize_notebook` keeps only what renders as text or as a plain image:

- **markdown and raw cells**: ``&`` and ``<`` become entities, so no tag, comment, autolink
  or entity survives as markup (the text reads the same; inside code spans the entities
  show literally — a cosmetic cost on the student's own prose only); link schemes that run
  code (``javascript:``, ``vbscript:``, ``data:``) are broken (``javascript-blocked:``); a raw
  cell loses its ``raw_mimetype`` (nbconvert would pass a ``text/html`` raw cell through).
  Attachments keep PNG/JPEG/GIF images only.
- **outputs**: ``stream`` and ``error`` stay (rendered as escaped text);
  ``execute_result``/``display_data`` keep ``text/plain`` and base64 PNG/JPEG/GIF images;
  every other MIME type (HTML, JavaScript, SVG, Markdown, LaTeX, widget views, JSON) and
  all output metadata but image sizes are dropped; unknown output types are dropped.
- **metadata**: the notebook keeps ``kernelspec``/``language_info``; a cell keeps
  ``nbgrader`` (with a ``grade_id`` of letters, digits, ``_``, ``-`` only), ``tags`` and
  Jupyter's display flags; widget state and everything else is dropped.

>>> nb = {"nbformat": 4, "nbformat_minor": 5, "metadata": {"widgets": {}}, "cells": [
...     {"cell_type": "markdown", "metadata": {}, "source": "hi <script>alert(1)</script>"},
...     {"cell_type": "code", "metadata": {}, "source": "x", "execution_count": 1,
...      "outputs": [{"output_type": "display_data", "metadata": {},
...                   "data": {"text/html": "<script>x</script>", "text/plain": "ok"}}]}]}
>>> clean = sanitize_notebook(nb)
>>> clean["cells"][0]["source"]
'hi &lt;script>alert(1)&lt;/script>'
>>> clean["cells"][1]["outputs"][0]["data"]
{'text/plain': 'ok'}
>>> "widgets" in clean["metadata"]
False
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import stat
import tempfile
from pathlib import Path
from typing import Any

__all__ = [
    "escape_markdown",
    "is_active",
    "sanitize_notebook",
    "sanitize_notebook_bytes",
    "sanitize_notebook_file",
]

_IMAGES = ("image/png", "image/jpeg", "image/gif")
_KEEP_DATA = ("text/plain", *_IMAGES)
_CELL_META = ("nbgrader", "tags", "collapsed", "scrolled", "deletable", "editable", "jupyter",
              "trusted")
_GRADE_ID = re.compile(r"[A-Za-z0-9_\-]{1,128}")
_SCHEME = re.compile(r"(?i)\b(java\s*script|vb\s*script|live\s*script|data)(\s*):")
_MAX_BYTES = 20 * 1024 * 1024


def escape_markdown(text: str) -> str:
    """Markdown with no HTML left in it: ``&`` → ``&amp;``, ``<`` → ``&lt;``, code schemes broken.

    >>> escape_markdown('<img src=x onerror="alert(1)"> & [a](javascript:alert(2))')
    '&lt;img src=x onerror="alert(1)"> &amp; [a](javascript-blocked:alert(2))'
    """
    text = text.replace("&", "&amp;").replace("<", "&lt;")
    return _SCHEME.sub(lambda m: f"{m.group(1)}-blocked{m.group(2)}:", text)


def _text(value: Any) -> str:
    if isinstance(value, list):
        return "".join(v for v in value if isinstance(v, str))
    return value if isinstance(value, str) else ""


def _image(value: Any) -> str | None:
    data = _text(value).strip()
    try:
        base64.b64decode(data.replace("\n", ""), validate=True)
    except (binascii.Error, ValueError):
        return None
    return data


def _output(out: Any) -> dict[str, Any] | None:
    if not isinstance(out, dict):
        return None
    kind = out.get("output_type")
    if kind == "stream":
        name = out.get("name") if out.get("name") in ("stdout", "stderr") else "stdout"
        return {"output_type": "stream", "name": name, "text": _text(out.get("text"))}
    if kind == "error":
        tb = out.get("traceback")
        return {"output_type": "error", "ename": _text(out.get("ename")),
                "evalue": _text(out.get("evalue")),
                "traceback": [t for t in tb if isinstance(t, str)] if isinstance(tb, list)
                else []}
    if kind in ("execute_result", "display_data"):
        raw = out.get("data")
        data: dict[str, Any] = raw if isinstance(raw, dict) else {}
        kept: dict[str, Any] = {}
        if "text/plain" in data:
            kept["text/plain"] = _text(data["text/plain"])
        for mime in _IMAGES:
            if mime in data and (img := _image(data[mime])) is not None:
                kept[mime] = img
        meta: dict[str, Any] = {}
        raw_meta = out.get("metadata")
        src_meta: dict[str, Any] = raw_meta if isinstance(raw_meta, dict) else {}
        for mime in _IMAGES:
            m = src_meta.get(mime)
            if mime in kept and isinstance(m, dict):
                size = {k: m[k] for k in ("width", "height")
                        if isinstance(m.get(k), int) and not isinstance(m.get(k), bool)}
                if size:
                    meta[mime] = size
        res: dict[str, Any] = {"output_type": kind, "data": kept, "metadata": meta}
        if kind == "execute_result":
            ec = out.get("execution_count")
            res["execution_count"] = ec if isinstance(ec, int) else None
        return res
    return None


def _cell_metadata(meta: Any) -> dict[str, Any]:
    meta = meta if isinstance(meta, dict) else {}
    out: dict[str, Any] = {}
    for k in _CELL_META:
        if k not in meta:
            continue
        v = json.loads(json.dumps(meta[k]))  # plain JSON values only
        if k == "nbgrader" and (not isinstance(v, dict)
                                or not _GRADE_ID.fullmatch(str(v.get("grade_id", "x")))):
            continue
        if k == "tags":
            if not isinstance(v, list):
                continue
            v = [t for t in v if isinstance(t, str)]
        out[k] = v
    return out


def _attachments(att: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if not isinstance(att, dict):
        return out
    for name, bundle in att.items():
        if not isinstance(bundle, dict) or not re.fullmatch(r"[\w.\-]{1,100}", str(name)):
            continue
        keep = {m: img for m in _IMAGES if m in bundle and (img := _image(bundle[m]))}
        if keep:
            out[name] = keep
    return out


def sanitize_notebook(nb: Any) -> dict[str, Any]:
    """A sanitised copy of a parsed notebook (a plain dict; see the module docstring)."""
    nb = nb if isinstance(nb, dict) else {}
    meta = nb.get("metadata") if isinstance(nb.get("metadata"), dict) else {}
    cells = []
    for i, cell in enumerate(nb.get("cells") or []):
        if not isinstance(cell, dict):
            continue
        kind = cell.get("cell_type")
        new: dict[str, Any] = {"cell_type": kind if kind in ("code", "markdown", "raw")
                               else "raw", "metadata": _cell_metadata(cell.get("metadata"))}
        cid = cell.get("id")
        new["id"] = cid if isinstance(cid, str) and re.fullmatch(r"[\w\-]{1,64}", cid) \
            else f"cell-{i}"
        src = _text(cell.get("source"))
        if new["cell_type"] == "code":
            new["source"] = src
            ec = cell.get("execution_count")
            new["execution_count"] = ec if isinstance(ec, int) else None
            new["outputs"] = [o for o in map(_output, cell.get("outputs") or []) if o]
        else:
            new["source"] = escape_markdown(src)
            att = _attachments(cell.get("attachments"))
            if att and new["cell_type"] == "markdown":
                new["attachments"] = att
        cells.append(new)
    keep_meta = {k: json.loads(json.dumps(meta[k])) for k in ("kernelspec", "language_info")
                 if isinstance(meta.get(k), dict)}
    return {"nbformat": 4, "nbformat_minor": 5, "metadata": keep_meta, "cells": cells}


def is_active(nb: Any) -> list[str]:
    """What in a notebook could run in a browser (empty for a sanitised one).

    >>> is_active(sanitize_notebook({"cells": [{"cell_type": "markdown", "source": "<b>"}]}))
    []
    >>> is_active({"cells": [{"cell_type": "markdown", "source": "<b>hi</b>"}]})
    ['cell 0: markdown with raw HTML']
    """
    found = []
    for i, cell in enumerate((nb or {}).get("cells") or []):
        if not isinstance(cell, dict):
            continue
        if cell.get("cell_type") in ("markdown", "raw") and re.search(
                r"<[A-Za-z!/?]", _text(cell.get("source"))):
            found.append(f"cell {i}: {cell.get('cell_type')} with raw HTML")
        for out in cell.get("outputs") or []:
            data = out.get("data") if isinstance(out, dict) else None
            for mime in data or {}:
                if mime not in _KEEP_DATA:
                    found.append(f"cell {i}: output {mime}")
        for bundle in (cell.get("attachments") or {}).values():
            for mime in bundle if isinstance(bundle, dict) else {}:
                if mime not in _IMAGES:
                    found.append(f"cell {i}: attachment {mime}")
    return found


def sanitize_notebook_bytes(data: bytes) -> bytes:
    """The sanitised notebook as JSON bytes; an unreadable one becomes a one-cell note."""
    try:
        nb = json.loads(data.decode("utf-8-sig"))
        if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list):
            raise ValueError("not a notebook")
        clean = sanitize_notebook(nb)
    except (ValueError, RecursionError, UnicodeDecodeError):
        clean = sanitize_notebook({"cells": [{
            "cell_type": "markdown", "metadata": {},
            "source": "The submitted file is not a readable notebook; it is not shown."}]})
    return (json.dumps(clean, indent=1, ensure_ascii=False) + "\n").encode("utf-8")


def sanitize_notebook_file(src: Path | str, dst: Path | str) -> None:
    """Write a sanitised copy of the notebook ``src`` to ``dst`` (atomically).

    ``src`` is opened without following a symlink and must be a regular file of at most
    20 MiB (otherwise the copy is the one-cell note); ``dst`` replaces whatever is there
    (a symlink at ``dst`` is replaced, never written through).
    """
    data = b""
    try:
        fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        try:
            st = os.fstat(fd)
            if stat.S_ISREG(st.st_mode) and st.st_size <= _MAX_BYTES:
                data = os.read(fd, _MAX_BYTES + 1)
        finally:
            os.close(fd)
    except OSError:
        data = b""
    out = Path(dst)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix="." + out.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(sanitize_notebook_bytes(data))
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
