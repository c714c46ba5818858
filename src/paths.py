"""The path guard every command runs before any work: inputs are what they claim to be, and the output can be
written without touching an input."""
from __future__ import annotations

import os
from pathlib import Path

from src.errors import UserError


def require_file(path: Path, flag: str) -> Path:
    return _require(Path(path), flag, folder=False)


def require_dir(path: Path, flag: str) -> Path:
    return _require(Path(path), flag, folder=True)


def _require(path: Path, flag: str, folder: bool) -> Path:
    """`path` if it exists and is a folder (folder=True) or a file, else an error saying which it is not."""
    if path.exists() and path.is_dir() != folder:
        have, want = ("file", "folder") if folder else ("folder", "file")
        raise UserError(f"{flag} {path} is a {have}, not a {want}")
    if not path.exists():
        raise UserError(f"{flag} {path} does not exist")
    return path


def _overlap(a: Path, b: Path) -> bool:
    a, b = a.resolve(), b.resolve()
    return a == b or a in b.parents or b in a.parents


def check_output(output: Path, inputs: dict[str, Path], flag: str = "--output") -> Path:
    """An error unless `output` is neither one of `inputs` ({flag: path}) nor inside or around one (a command that
    clears or packs its output folder would delete the input), and its folder can be created and written."""
    output = Path(output)
    for name, path in inputs.items():
        if path is not None and _overlap(output, Path(path)):
            raise UserError(f"{flag} {output} overlaps {name} {path}: write the output somewhere else")
    folder = output if output.is_dir() else output.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write_probe.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"cannot write {flag} {output}: {exc.strerror or type(exc).__name__}") from None
    return output
