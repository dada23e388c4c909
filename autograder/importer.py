"""Collect submissions into ``submitted/`` without trusting anything a student controls.

``python -m autograder import <assignment> <source>`` reads one of three kinds of source
(see ``course/README.md``) and writes ``submitted/<student>/<assignment>/<notebook>``:

- a **folder** of per-student folders (``<student>/[<assignment>/]<notebook>``);
- a **zip** of downloads: per-student folders (a wrapper folder is fine, a per-student zip
  inside is read too) or an LMS's flat names, ``<lms part>_attempt_<timestamp>_<file>``
  (the format ``nbgrader zip_collect`` documents);
- an **nbgrader exchange**: ``inbound/<student>+<assignment>+<timestamp>+<random>/``, as
  ``nbgrader submit`` leaves it.

What a student controls is read as data and never followed:

- **No symlink is followed, no special file read.**  Folders are walked without following
  links and every file is opened relative to an already-open directory with ``O_NOFOLLOW``
  (each component), ``O_NONBLOCK`` (a FIFO cannot block the import) and checked with
  ``fstat`` to be a regular file before one byte is read, with a size cap: a link to
  ``source/``, to the course secret or to ``/dev/zero``, a FIFO or a device is refused with a
  per-student message that never quotes the link's target.  A zip member that is a symlink
  (its Unix mode in ``external_attr``) is refused the same way.
- **An exchange submission must be owned by its student**, as ``nbgrader collect`` checks
  (``ExchangeCollect.copy_files`` compares ``pwd.getpwuid(st_uid).pw_name`` with the id in
  the directory name, but only warns): here the directory and every file read from it must
  belong to the student's Unix user (the user name is the student id unless ``uid_map``
  says otherwise) — or to the importing user or root, who could write anything anyway.  A
  submission another user placed under a student's id is skipped with a warning naming the
  owner, and the student's own latest submission is taken instead.
- **A world-writable folder is not trusted.**  ``nbgrader collect`` leaves the directories
  it copies at mode 0777 (``nbgrader submit`` makes each inbound submission 0777, and the
  copy keeps the mode), so anyone could have replaced a file there: a folder import refuses
  files in a group- or world-writable directory (or themselves writable by others) and says
  to import from the exchange instead.
- **An LMS name cannot be spoofed by a student-chosen file name.**  The LMS writes
  ``<assignment>_<student>_attempt_<timestamp>_`` before the file name the student chose;
  only that generated prefix is read — the *first* ``_attempt_<YYYY-MM-DD-hh-mm-ss>_`` ends
  it — and the student id is taken from it by the roster (the longest known id it ends with),
  by the assignment name's prefix, or by a pattern matched against the whole prefix.  A file
  named ``x_alice_attempt_2099-…_nb.ipynb`` uploaded by mallory stays mallory's (and is
  reported as an imitation).
- **Archives have limits checked before anything is read**: members, total and per-member
  uncompressed size, compression ratio; a nested zip is read only one level deep (a
  per-student zip) and under the same limits.  Declared sizes may lie, so every read is
  also capped.
- **A notebook is checked before it lands in ``submitted/``**: at most
  :data:`MAX_NOTEBOOK_BYTES`, JSON nested at most :data:`MAX_JSON_DEPTH` deep (measured
  without recursion: a 100,000-deep file is refused, not parsed).  A file that is not a
  notebook at all is imported and graded *corrupt* (0, with the reason).
- **One bad student never stops the others**: every problem is an outcome line for that
  student (``rejected: …``) and the import goes on.  A rejected submission leaves no notebook
  (``grade`` then scores it *missing*, 0) and a note ``import-rejected.txt`` saying why.

>>> split_lms_name("a1_bob_attempt_2024-03-01-10-00-00_x_alice_attempt_2099-01-01-00-00-00_n")
('a1_bob', '2024-03-01-10-00-00', 'x_alice_attempt_2099-01-01-00-00-00_n')
>>> json_depth('{"a": [1, {"b": "[[[["}]}')
3
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import pwd
import re
import stat
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autograder.extract import MAX_NOTEBOOK_BYTES

__all__ = [
    "MAX_JSON_DEPTH",
    "MAX_NOTEBOOK_BYTES",
    "ImportLimits",
    "ImportSourceError",
    "Outcome",
    "check_notebook_bytes",
    "collect",
    "json_depth",
    "split_lms_name",
    "valid_student_id",
]

#: A notebook nested deeper than this (JSON arrays/objects) is refused at import.
MAX_JSON_DEPTH = 64
#: The LMS's generated part ends at the first ``_attempt_<timestamp>_``.
_LMS = re.compile(r"_attempt_(\d{4}-\d\d-\d\d-\d\d-\d\d-\d\d)_")
#: Default pattern for the LMS part before ``_attempt_`` when neither the roster nor the
#: assignment name decides: the last ``_``-free token is the student id.
DEFAULT_LMS_PATTERN = r"(?:.*_)?(?P<student_id>[A-Za-z0-9.@+\-]+)"
_STUDENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@+\-]{0,127}")
_EXTRAS = ("timestamp.txt", "submission_secret.txt")
_EXTRA_BYTES = 4096
_SKIP_DIRS = (".ipynb_checkpoints", "__MACOSX")


class ImportSourceError(Exception):
    """The import cannot start at all (the source is missing, not a zip, over the limits)."""


@dataclass(frozen=True)
class ImportLimits:
    """Limits on what an import reads (bytes unless said otherwise).

    ``max_ratio`` applies to members larger than ``ratio_floor`` (a small file of spaces
    may legitimately compress 1000:1; a 200 MB one is a bomb).

    >>> ImportLimits().max_member_bytes == MAX_NOTEBOOK_BYTES
    True
    """

    max_members: int = 20_000
    max_total_bytes: int = 2 * 1024**3
    max_member_bytes: int = MAX_NOTEBOOK_BYTES
    max_nested_zip_bytes: int = 64 * 1024**2
    max_ratio: float = 200.0
    ratio_floor: int = 1024**2
    max_json_depth: int = MAX_JSON_DEPTH


def valid_student_id(sid: str) -> bool:
    """Whether ``sid`` is safe as a directory name and a gradebook id.

    >>> valid_student_id("alice_01"), valid_student_id("../etc"), valid_student_id("a b")
    (True, False, False)
    """
    return bool(_STUDENT_ID.fullmatch(sid)) and ".." not in sid


# -- checks on bytes ------------------------------------------------------------------------------


def json_depth(text: str) -> int:
    """The nesting depth of JSON arrays/objects in ``text``, computed without recursion.

    Strings are skipped (a ``[`` inside a string does not count).

    >>> json_depth("[]"), json_depth("[[[]]]"), json_depth('"[[["'), json_depth("1")
    (1, 3, 0, 0)
    """
    brackets = re.sub(r'"(?:[^"\\]|\\.)*"', "", text)
    depth = best = 0
    for ch in re.sub(r"[^\[\]{}]", "", brackets):
        if ch in "[{":
            depth += 1
            best = max(best, depth)
        else:
            depth -= 1
    return best


def check_notebook_bytes(data: bytes, limits: ImportLimits | None = None) -> str | None:
    """Why ``data`` must not reach ``submitted/`` (None when it may).

    Only what would hurt the grader or the disk is refused here: more than
    ``max_member_bytes``, or JSON nested deeper than ``max_json_depth`` (Python's parser
    recurses and would crash on it).  A file that is merely not a notebook is imported and
    scores 0 as *corrupt*, with the grader's reason.

    >>> check_notebook_bytes(b'{"cells": [], "nbformat": 4}') is None
    True
    >>> check_notebook_bytes(b"[" * 1000 + b"]" * 1000)
    'nested 1000 levels deep (at most 64)'
    """
    lim = limits or ImportLimits()
    if len(data) > lim.max_member_bytes:
        return f"larger than {lim.max_member_bytes} bytes"
    depth = json_depth(data.decode("utf-8", errors="replace"))
    if depth > lim.max_json_depth:
        return f"nested {depth} levels deep (at most {lim.max_json_depth})"
    return None


# -- a tree of entries (a folder or a zip) -------------------------------------------------------


@dataclass
class Entry:
    """One file of a source: its path parts, its kind, and how to read it (capped)."""

    parts: tuple[str, ...]
    kind: str  # "file", "link", "special", "zip-bad", "too-large", "unsafe"
    read: Callable[[int], bytes] | None = None
    problem: str = ""


class _RejectedError(Exception):
    pass


def _open_nofollow(root: Path, parts: Iterable[str]) -> int:
    """An fd for ``root/parts…``: every component opened with O_NOFOLLOW below ``root``."""
    flags_dir = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    parts = list(parts)
    fd = os.open(root, flags_dir)
    try:
        for name in parts[:-1]:
            nfd = os.open(name, flags_dir, dir_fd=fd)
            os.close(fd)
            fd = nfd
        ffd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
                      | getattr(os, "O_CLOEXEC", 0), dir_fd=fd)
    finally:
        os.close(fd)
    return ffd


def _read_fd(fd: int, cap: int, *, owners: frozenset[int] | None = None,
             trust_mode: bool = False) -> bytes:
    """Read a regular file from ``fd`` (closed afterwards), at most ``cap`` bytes."""
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _RejectedError("not a regular file (a FIFO, a device or a directory)")
        if owners is not None and st.st_uid not in owners:
            raise _RejectedError(f"the file is owned by {_user(st.st_uid)}")
        if trust_mode and st.st_mode & 0o002:
            raise _RejectedError("the file is writable by other users")
        if st.st_size > cap:
            raise _RejectedError(f"larger than {cap} bytes")
        chunks, n = [], 0
        while True:
            try:
                b = os.read(fd, min(1 << 20, cap + 1 - n))
            except BlockingIOError:
                raise _RejectedError("not a regular file") from None
            if not b:
                break
            chunks.append(b)
            n += len(b)
            if n > cap:
                raise _RejectedError(f"larger than {cap} bytes")
        return b"".join(chunks)
    finally:
        os.close(fd)


def _safe_read(root: Path, parts: tuple[str, ...], cap: int, *,
               owners: frozenset[int] | None = None, trust_mode: bool = False) -> bytes:
    try:
        fd = _open_nofollow(root, parts)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
            raise _RejectedError("a symbolic link (not followed)") from None
        raise _RejectedError(f"cannot be read ({e.strerror})") from None
    return _read_fd(fd, cap, owners=owners, trust_mode=trust_mode)


def _user(uid: int) -> str:
    try:
        return f"user {pwd.getpwuid(uid).pw_name!r} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _world_writable(mode: int) -> bool:
    return bool(mode & 0o002) and not (stat.S_ISDIR(mode) and mode & stat.S_ISVTX)


def _walk_folder(root: Path, limits: ImportLimits) -> list[Entry]:
    """Every file under ``root`` (links and special files marked, never followed).

    A file in a world-writable directory (or below one), or itself world-writable, is
    marked unsafe: anyone could have put it there.
    """
    out: list[Entry] = []
    unsafe_dirs: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        rel = Path(dirpath).relative_to(root).parts
        keep = []
        for d in sorted(dirnames):
            full = Path(dirpath) / d
            if d in _SKIP_DIRS or d.startswith("."):
                continue
            if full.is_symlink():
                out.append(Entry((*rel, d, d), "link",
                                 problem="a symbolic link (not followed)"))
                continue
            keep.append(d)
        dirnames[:] = keep
        parent_unsafe = dirpath != str(root) and str(Path(dirpath).parent) in unsafe_dirs
        if _world_writable(os.lstat(dirpath).st_mode) or parent_unsafe:
            unsafe_dirs.add(dirpath)
        for f in sorted(filenames):
            parts = (*rel, f)
            st = os.lstat(Path(dirpath) / f)
            if stat.S_ISLNK(st.st_mode):
                out.append(Entry(parts, "link", problem="a symbolic link (not followed)"))
            elif not stat.S_ISREG(st.st_mode):
                out.append(Entry(parts, "special", problem="not a regular file"))
            elif dirpath in unsafe_dirs or _world_writable(st.st_mode):
                out.append(Entry(parts, "unsafe", problem=(
                    "in a folder other users can write (as `nbgrader collect` leaves"
                    " submitted/): import from the exchange instead")))
            else:
                def reader(cap: int, parts: tuple[str, ...] = parts) -> bytes:
                    return _safe_read(root, parts, cap, trust_mode=True)
                out.append(Entry(parts, "file", reader))
    return out


def _zip_kind(info: zipfile.ZipInfo) -> str:
    mode = info.external_attr >> 16
    if info.create_system == 3 and mode:  # Unix
        if stat.S_ISLNK(mode):
            return "link"
        if stat.S_IFMT(mode) and not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
            return "special"
    return "file"


def _zip_entries(zf: zipfile.ZipFile, limits: ImportLimits, prefix: tuple[str, ...] = (),
                 nested: bool = True) -> list[Entry]:
    infos = zf.infolist()
    if len(infos) > limits.max_members:
        raise ImportSourceError(f"{len(infos)} members (at most {limits.max_members})")
    total = sum(max(0, i.file_size) for i in infos)
    if total > limits.max_total_bytes:
        raise ImportSourceError(f"{total} bytes uncompressed (at most {limits.max_total_bytes})")
    out: list[Entry] = []
    for info in infos:
        if info.is_dir():
            continue
        name = info.filename.replace("\\", "/")
        parts = tuple(p for p in name.split("/") if p not in ("", "."))
        if name.startswith("/") or ".." in parts or not parts or ":" in parts[0]:
            out.append(Entry((*prefix, info.filename.replace("/", "\u2215")), "unsafe",
                             problem=f"unsafe path {info.filename!r} in the zip (not read)"))
            continue
        parts = (*prefix, *parts)
        if any(p in _SKIP_DIRS or p.startswith(".") for p in parts):
            continue
        kind = _zip_kind(info)
        if kind != "file":
            out.append(Entry(parts, kind, problem=(
                "a symbolic link in the zip (not followed)" if kind == "link"
                else "not a regular file in the zip")))
            continue
        ratio = info.file_size / max(1, info.compress_size)
        is_zip = parts[-1].lower().endswith(".zip")
        cap = limits.max_nested_zip_bytes if is_zip else limits.max_member_bytes
        if info.file_size > cap:
            out.append(Entry(parts, "too-large", problem=(
                f"{parts[-1]} expands to {info.file_size} bytes (at most {cap})")))
            continue
        if info.file_size > limits.ratio_floor and ratio > limits.max_ratio:
            out.append(Entry(parts, "too-large", problem=(
                f"{parts[-1]} has a compression ratio of {ratio:.0f}:1 (at most"
                f" {limits.max_ratio:g}:1): a zip bomb?")))
            continue

        def reader(cap: int, info: zipfile.ZipInfo = info) -> bytes:
            try:
                with zf.open(info) as fh:
                    data = fh.read(cap + 1)
            except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError,
                    NotImplementedError, RuntimeError) as e:
                raise _RejectedError(f"cannot be read from the zip ({type(e).__name__}:"
                                     f" {str(e)[:100]})") from None
            if len(data) > cap:
                raise _RejectedError(f"larger than {cap} bytes")
            return data

        if is_zip:
            if not nested:
                out.append(Entry(parts, "zip-bad", problem="a zip inside a zip inside a zip"
                                 " (not read)"))
                continue
            try:
                inner = zipfile.ZipFile(io.BytesIO(reader(cap)))
                sub = _zip_entries(inner, limits, (*parts[:-1], parts[-1][:-4]), nested=False)
            except (zipfile.BadZipFile, ImportSourceError, _RejectedError, OSError, EOFError,
                    ValueError, NotImplementedError, RuntimeError) as e:
                out.append(Entry((*parts[:-1], parts[-1][:-4], parts[-1]), "zip-bad",
                                 problem=f"{parts[-1]} cannot be read: {type(e).__name__}:"
                                         f" {str(e)[:120]}"))
                continue
            out.extend(sub)
            continue
        out.append(Entry(parts, "file", reader))
    return out


# -- what was found per student ---------------------------------------------------------------


@dataclass
class Found:
    """One student's submission found in an import source."""

    student: str
    notebook: bytes | None = None
    timestamp: str | None = None
    extras: dict[str, bytes] = field(default_factory=dict)
    note: str = ""
    problem: str = ""  # non-empty: rejected, with this reason


@dataclass(frozen=True)
class Outcome:
    """What the import did for one student (``what`` starts with ``rejected`` or
    ``skipped`` when it took nothing)."""

    student: str
    what: str


def _read_entry(e: Entry, cap: int) -> bytes:
    if e.kind != "file" or e.read is None:
        raise _RejectedError(e.problem or e.kind)
    return e.read(cap)


def _pick(entries: list[Entry], spec: Any) -> tuple[Entry | None, str, list[Entry]]:
    """The assignment's notebook among one student's entries; the refused entries."""
    nbs = [e for e in entries if e.parts[-1].endswith(".ipynb")]
    bad = [e for e in entries if e.kind != "file" and (
        e.parts[-1].endswith(".ipynb") or e.kind in ("zip-bad", "link", "special"))]
    good = [e for e in nbs if e.kind == "file"]
    exact = [e for e in good if e.parts[-1] == spec.notebook]
    if exact:
        exact.sort(key=lambda e: (spec.name not in e.parts, len(e.parts)))
        return exact[0], "", bad
    if len(good) == 1 and not [e for e in bad if e.parts[-1].endswith(".ipynb")]:
        return good[0], f"renamed {good[0].parts[-1]} -> {spec.notebook}", bad
    if good:
        return None, f"{len(good)} notebooks, none named {spec.notebook}", bad
    return None, "no notebook", bad


def _found_from(student: str, entries: list[Entry], spec: Any,
                limits: ImportLimits) -> Found:
    nb, note, bad = _pick(entries, spec)
    f = Found(student, note=note)
    if nb is None:
        if bad:
            f.problem = "; ".join(sorted({e.problem for e in bad}))
        return f
    try:
        data = _read_entry(nb, limits.max_member_bytes)
    except _RejectedError as why_not:
        f.problem = f"{nb.parts[-1]}: {why_not}"
        return f
    why = check_notebook_bytes(data, limits)
    if why:
        f.problem = f"{nb.parts[-1]}: {why}"
        return f
    f.notebook = data
    dirs = {nb.parts[:-1], entries[0].parts[:1]}
    for e in entries:
        if e.parts[-1] in _EXTRAS and e.parts[:-1] in dirs and e.kind == "file":
            try:
                f.extras[e.parts[-1]] = _read_entry(e, _EXTRA_BYTES)
            except _RejectedError:
                continue
    if "timestamp.txt" in f.extras:
        f.timestamp = f.extras["timestamp.txt"].decode("utf-8", "replace").strip()
    return f


def split_lms_name(name: str) -> tuple[str, str, str] | None:
    """``(lms part, timestamp, student's file name)`` of an LMS download's name, or None.

    The *first* ``_attempt_<YYYY-MM-DD-hh-mm-ss>_`` ends the part the LMS generated;
    whatever follows is the file name the student chose and is never searched for ids.

    >>> split_lms_name("notes.ipynb") is None
    True
    """
    m = _LMS.search(name)
    if not m:
        return None
    return name[: m.start()], m.group(1), name[m.end():]


def lms_student(head: str, assignment: str, roster: Iterable[str] = (),
                pattern: str | None = None) -> str | None:
    """The student id in an LMS part (``<assignment label>_<student>``), or None.

    The roster decides first (the longest roster id that ends the part after a ``_``),
    then a part starting with the assignment's name, then ``pattern`` (``fullmatch``, with
    a ``student_id`` group; default :data:`DEFAULT_LMS_PATTERN`).

    >>> lms_student("a1_x_alice_01", "a1_x", ())
    'alice_01'
    >>> lms_student("Week 3_alice_01", "a1_x", ("alice_01", "01"))
    'alice_01'
    >>> lms_student("Week 3_bob", "a1_x")
    'bob'
    """
    ids = sorted((r for r in roster if head == r or head.endswith("_" + r)), key=len)
    if ids:
        return ids[-1]
    if head.startswith(assignment + "_") and len(head) > len(assignment) + 1:
        return head[len(assignment) + 1:]
    m = re.fullmatch(pattern or DEFAULT_LMS_PATTERN, head)
    if m and m.groupdict().get("student_id"):
        return m.group("student_id")
    return None


def _lms_timestamp(stamp: str) -> str | None:
    """``2016-01-30-20-30-10`` (an LMS download's name) → ``2016-01-30 20:30:10``.

    >>> _lms_timestamp("2016-01-30-20-30-10")
    '2016-01-30 20:30:10'
    """
    m = re.fullmatch(r"(\d{4})-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)", stamp or "")
    if not m:
        return None
    y, mo, d, h, mi, s = m.groups()
    return f"{y}-{mo}-{d} {h}:{mi}:{s}"


def _strip_wrappers(entries: list[Entry], assignment: str) -> list[Entry]:
    """Drop wrapper folders around the per-student folders or the LMS's flat files.

    A single top folder is a wrapper when it holds no file directly, or only LMS-named
    files; never when its only folder is the assignment (one student's nbgrader layout).
    """
    while entries:
        tops = {e.parts[0] for e in entries}
        if len(tops) != 1 or any(len(e.parts) == 1 for e in entries):
            break
        below = [e for e in entries if len(e.parts) == 2]
        if below and not all(split_lms_name(e.parts[1]) for e in below):
            break
        if all(e.parts[1] == assignment for e in entries):
            break
        entries = [Entry(e.parts[1:], e.kind, e.read, e.problem) for e in entries]
    return entries


def _scan_entries(entries: list[Entry], spec: Any, limits: ImportLimits,
                  roster: Iterable[str], pattern: str | None) -> Iterator[Found]:
    entries = _strip_wrappers(entries, spec.name)
    roster = tuple(roster)
    lms: dict[str, list[tuple[str, Entry]]] = {}
    for e in entries:
        if len(e.parts) != 1:
            continue
        split = split_lms_name(e.parts[0])
        if split:
            sid = lms_student(split[0], spec.name, roster, pattern)
            if sid:
                lms.setdefault(sid, []).append((split[1], e))
    if lms:
        for sid in sorted(lms):
            attempts = lms[sid]
            latest = max(stamp for stamp, _ in attempts)
            mine = [Entry((e.parts[0][len(_head_of(e)):],), e.kind, e.read, e.problem)
                    for stamp, e in attempts if stamp == latest]
            f = _found_from(sid, mine, spec, limits)
            f.timestamp = _lms_timestamp(latest)
            imitated = [split_lms_name(p.parts[0]) for p in mine]
            if any(x is not None for x in imitated):
                f.note = (f.note + "; " if f.note else "") + (
                    "its file name imitates an LMS name: taken as this student's own")
            yield f
        for e in entries:
            if len(e.parts) == 1 and e.kind != "file" and split_lms_name(e.parts[0]) is None:
                yield Found("(archive)", problem=f"{e.parts[0]}: {e.problem}")
        return
    by_student: dict[str, list[Entry]] = {}
    for e in entries:
        if len(e.parts) == 1:
            if e.kind != "file":
                yield Found("(archive)", problem=f"{e.parts[0]}: {e.problem}")
            continue
        by_student.setdefault(e.parts[0], []).append(e)
    for sid in sorted(by_student):
        yield _found_from(sid, by_student[sid], spec, limits)


def _head_of(e: Entry) -> str:
    split = split_lms_name(e.parts[0])
    assert split is not None
    return e.parts[0][: len(e.parts[0]) - len(split[2])]


# -- the exchange ---------------------------------------------------------------------------------


def _is_exchange(path: Path, course_id: str, assignment: str) -> Path | None:
    """The ``inbound`` directory if ``path`` is an nbgrader exchange (root, course or inbound)."""
    for cand in (path / course_id / "inbound", path / "inbound", path):
        if cand.is_dir() and not cand.is_symlink() and any(
                "+" in p.name and f"+{assignment}+" in p.name for p in cand.iterdir()):
            return cand
    return None


def owner_uids(student: str, uid_map: Mapping[str, str | int] | None = None) -> set[int]:
    """The uids allowed to own a student's exchange submission ({} if the user is unknown).

    ``uid_map`` maps a student id to a user name or uid (default: the id is the user name).
    """
    who = (uid_map or {}).get(student, student)
    if isinstance(who, int) or (isinstance(who, str) and who.isdigit()):
        return {int(who)}
    try:
        return {pwd.getpwnam(str(who)).pw_uid}
    except KeyError:
        return set()


def _scan_exchange(inbound: Path, spec: Any, limits: ImportLimits, *,
                   check_owner: bool = True,
                   uid_map: Mapping[str, str | int] | None = None) -> Iterator[Found]:
    """nbgrader's exchange: ``inbound/<student>+<assignment>+<timestamp>[+<random>]/``."""
    from nbgrader.utils import parse_utc

    trusted = {0, os.geteuid()}
    cands: dict[str, list[tuple[Any, str]]] = {}
    warnings: list[Found] = []
    for name in sorted(os.listdir(inbound)):
        parts = name.rsplit("+", 3)
        if len(parts) < 3:
            continue
        if len(parts) == 4 and parts[2] == spec.name:
            student, assignment, stamp = parts[0] + "+" + parts[1], parts[2], parts[3]
        elif len(parts) == 4:
            student, assignment, stamp = parts[0], parts[1], parts[2]
        else:
            student, assignment, stamp = parts
        if assignment != spec.name:
            continue
        st = os.lstat(inbound / name)
        if not stat.S_ISDIR(st.st_mode):
            warnings.append(Found(student, problem=f"{name!r} in the exchange is not a"
                                  " directory (a symbolic link?): ignored"))
            continue
        if check_owner:
            allowed = owner_uids(student, uid_map) | trusted
            if st.st_uid not in allowed:
                warnings.append(Found(student, problem=(
                    f"WARNING: a submission under this id is owned by {_user(st.st_uid)},"
                    f" not by the student: ignored (cheating attempt?)")))
                continue
        try:
            when = parse_utc(stamp)
        except (ValueError, TypeError, OverflowError):
            continue
        cands.setdefault(student, []).append((when, name))
    yield from warnings
    for student in sorted(cands):
        _, name = max(cands[student])
        owners = frozenset(owner_uids(student, uid_map) | trusted) if check_owner else None
        yield _exchange_found(inbound, name, student, spec, limits, owners)


def _exchange_found(inbound: Path, name: str, student: str, spec: Any, limits: ImportLimits,
                    owners: frozenset[int] | None) -> Found:
    root = inbound / name
    entries: list[Entry] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        rel = Path(dirpath).relative_to(root).parts
        dirnames[:] = [d for d in sorted(dirnames) if d not in _SKIP_DIRS
                       and not (Path(dirpath) / d).is_symlink()]
        for f in sorted(filenames):
            parts = (*rel, f)
            st = os.lstat(Path(dirpath) / f)
            if stat.S_ISLNK(st.st_mode):
                entries.append(Entry(parts, "link", problem="a symbolic link (not followed)"))
            elif not stat.S_ISREG(st.st_mode):
                entries.append(Entry(parts, "special", problem="not a regular file"))
            else:
                def reader(cap: int, parts: tuple[str, ...] = parts) -> bytes:
                    return _safe_read(root, parts, cap, owners=owners)
                entries.append(Entry(parts, "file", reader))
    if not entries:
        return Found(student, note="no notebook")
    # the per-student layout expects the student's folder as the first part
    entries = [Entry((student, *e.parts), e.kind, e.read, e.problem) for e in entries]
    return _found_from(student, entries, spec, limits)


# -- writing submitted/ ----------------------------------------------------------------------------


def _safe_dir(base: Path, *names: str) -> Path:
    """``base/names…``, created as real directories (a symlink in the way is removed)."""
    d = base
    for n in names:
        d = d / n
        try:
            st = os.lstat(d)
        except FileNotFoundError:
            os.mkdir(d, 0o755)
            continue
        if not stat.S_ISDIR(st.st_mode):
            os.unlink(d)
            os.mkdir(d, 0o755)
        elif st.st_mode & 0o002:
            os.chmod(d, stat.S_IMODE(st.st_mode) & ~0o022)
    return d


def _write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix="." + path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)  # replaces a symlink itself, never its target
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _read_existing(path: Path) -> bytes | None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return b""
    return path.read_bytes()


def collect(course: Path, spec: Any, source: Path, *, regexp: str | None = None,
            course_id: str = "virtcore", roster: Iterable[str] = (),
            limits: ImportLimits | None = None, check_owner: bool = True,
            uid_map: Mapping[str, str | int] | None = None) -> list[tuple[str, str]]:
    """Copy submissions from ``source`` into ``submitted/<student>/<assignment>/``.

    Returns ``(student, outcome)`` pairs; outcomes: ``new``, ``updated``, ``unchanged``,
    ``no notebook …``, ``skipped: <why>`` (an invalid id), ``rejected: <why>`` (a
    submission refused; the student's notebook is removed, so ``grade`` scores it
    *missing*) and ``WARNING: …`` (e.g. an exchange submission owned by someone else,
    ignored).  Raises :class:`ImportSourceError` only when the source as a whole is unusable.
    """
    lim = limits or ImportLimits()
    if not os.path.lexists(source):
        raise ImportSourceError(f"{source} does not exist")
    if source.is_symlink():
        raise ImportSourceError(f"{source} is a symbolic link: give the real path")
    if source.is_file():
        try:
            with zipfile.ZipFile(source) as zf:
                entries = _zip_entries(zf, lim)
                found = list(_scan_entries(entries, spec, lim, roster, regexp))
        except zipfile.BadZipFile as e:
            raise ImportSourceError(f"{source} is not a zip file: {e}") from None
        except ImportSourceError as e:
            raise ImportSourceError(f"{source} is over the import limits: {e}") from None
    else:
        inbound = _is_exchange(source, course_id, spec.name)
        if inbound is not None:
            found = list(_scan_exchange(inbound, spec, lim, check_owner=check_owner,
                                        uid_map=uid_map))
        else:
            found = list(_scan_entries(_walk_folder(source, lim), spec, lim, roster, regexp))
    sub_root = course / "submitted"
    sub_root.mkdir(parents=True, exist_ok=True)
    if os.lstat(sub_root).st_mode & 0o002:
        os.chmod(sub_root, stat.S_IMODE(os.lstat(sub_root).st_mode) & ~0o022)
    outcomes: list[tuple[str, str]] = []
    for f in found:
        try:
            outcomes.append((f.student, _store(course, spec, f)))
        except OSError as e:  # one student's write failing never stops the others
            outcomes.append((f.student, f"rejected: cannot write ({e.strerror or e})"))
    return outcomes


def _store(course: Path, spec: Any, f: Found) -> str:
    if f.problem.startswith("WARNING"):
        return f.problem
    if f.student == "(archive)":
        return "skipped: " + f.problem
    if not valid_student_id(f.student):
        return "skipped: not a valid student id"
    dest_dir = _safe_dir(course / "submitted", f.student, spec.name)
    dest = dest_dir / spec.notebook
    note_file = dest_dir / "import-rejected.txt"
    if f.notebook is None:
        if os.path.lexists(dest):
            os.unlink(dest)
        for name, data in f.extras.items():
            _write(dest_dir / name, data)
        if f.problem:
            _write(note_file, (f.problem + "\n").encode())
            return f"rejected: {f.problem} (graded as missing)"
        return f"no notebook ({f.note or 'nothing'}): grades as missing"
    before = _read_existing(dest)
    _write(dest, f.notebook)
    if os.path.lexists(note_file):
        os.unlink(note_file)
    for name, data in f.extras.items():
        _write(dest_dir / name, data)
    if f.timestamp and "timestamp.txt" not in f.extras:
        _write(dest_dir / "timestamp.txt", (f.timestamp + "\n").encode())
    if before is None:
        what = "new"
    elif hashlib.sha256(before).digest() == hashlib.sha256(f.notebook).digest():
        what = "unchanged"
    else:
        what = "updated"
    return what + (f" ({f.note})" if f.note else "")
