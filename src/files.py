"""Atomic file writes and input fingerprints.

A file appears under its final name only when it is complete: it is written to a fresh temporary file in the
same folder (created with O_EXCL under a random name, so a file or symlink planted there is never opened or
followed), then moved into place with os.replace (which replaces a symlink at the final name, never its
target). A killed job leaves at most a `.NAME.XXXX.partial` beside it, which `remove_partials` clears.
"""
from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from src.errors import UserError

PARTIAL_GLOB = ".*.partial"  # the temporary files of this module, for clean-up after a killed job


@contextlib.contextmanager
def partial_file(path: str | Path) -> Iterator[Path]:
    """A new empty temporary file beside `path` to write; moved to `path` when the block ends without an
    error, deleted otherwise."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def partial_folder(path: str | Path) -> Iterator[Path]:
    """A new empty temporary folder beside `path` to fill; deleted when the block ends (the caller moves what it
    wrote out of it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial"))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def remove_partials_of(path: str | Path) -> int:
    """Delete the temporary files a killed writer of `path` left beside it (unlinked, never followed); how many."""
    path = Path(path)
    return _unlink_files(path.parent.glob(f".{glob.escape(path.name)}.*.partial"))


def remove_partials(folder: str | Path) -> int:
    """Delete the temporary files a killed job left under `folder` (regular files only; a symlink is unlinked,
    never followed); how many."""
    return _unlink_files(Path(folder).rglob(PARTIAL_GLOB))


def _unlink_files(paths) -> int:
    found = [p for p in paths if p.is_symlink() or p.is_file()]
    for p in found:
        p.unlink(missing_ok=True)
    return len(found)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    with partial_file(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj, indent: int = 1) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=indent))


def read_json(path: str | Path, hint: str = "") -> dict:
    """A JSON object file this project wrote, or a one-line UserError when it is unreadable or damaged."""
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"{path} is unreadable or damaged ({type(exc).__name__}){hint}") from None
    if not isinstance(value, dict):
        raise UserError(f"{path} is damaged (not a JSON object){hint}")
    return value


# ------------------------------------------------------------------------------------------ fingerprints
_EDGE = 1 << 20  # bytes hashed at each end of a file


def fingerprint(path: str | Path) -> dict:
    """What identifies a file's content cheaply: size, mtime and a hash of its first and last MiB (a replaced
    video of another length, or re-encoded, differs; a touched one does not)."""
    path = Path(path)
    st = path.stat()
    h = hashlib.sha1()
    with open(path, "rb") as f:
        h.update(f.read(_EDGE))
        if st.st_size > 2 * _EDGE:
            f.seek(-_EDGE, os.SEEK_END)
        h.update(f.read(_EDGE))
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha1_edges": h.hexdigest()}


def unchanged(path: str | Path, recorded: dict | None) -> bool:
    """Whether the file at `path` still has the content `recorded` by fingerprint(); size and mtime are compared
    first, so an untouched file is not read."""
    if not recorded:
        return False
    try:
        st = Path(path).stat()
    except OSError:
        return False
    if st.st_size != recorded.get("size"):
        return False
    if st.st_mtime_ns == recorded.get("mtime_ns"):
        return True
    return fingerprint(path)["sha1_edges"] == recorded.get("sha1_edges")
