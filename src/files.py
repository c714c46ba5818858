"""Atomic file writes: a file appears under its final name only when it is complete, so a killed job leaves at
most a `*.tmp` beside it, never a torn file that a re-run would trust."""
from __future__ import annotations

import json
import os
from pathlib import Path


def temporary_path(path: str | Path) -> Path:
    """Where `path` is written before it is moved into place (same folder: the move is atomic)."""
    path = Path(path)
    return path.with_name(path.name + ".tmp")


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj, indent: int = 1) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=indent))
