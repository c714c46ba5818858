"""The path guard every command runs before any work: inputs are what they claim to be (a file or a folder, a
video or an image by content, not by name), and the output can be written without touching an input or an
earlier result."""
from __future__ import annotations

import os
from pathlib import Path

from src.errors import UserError
from src.files import remove_partials_of

# leading bytes of the image formats OpenCV reads here (a file's name says nothing about its content)
_IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"BM", b"II*\x00", b"MM\x00*")


def media_kind(path: Path) -> str | None:
    """'image' or 'video' by the file's content, or None when it is neither (empty, text, random bytes)."""
    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith(_IMAGE_MAGIC) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
        return "image"
    if not head:
        return None
    import av

    try:
        with av.open(str(path)) as c:
            return "video" if c.streams.video else None
    except (av.FFmpegError, UnicodeDecodeError, ValueError):
        return None


def kind_mismatch(path: Path, kind: str) -> str | None:
    """None when the file at `path` is, by its content, of `kind` ('video', 'image', or 'picture' for either);
    else what it is instead, worded to follow "... is": "a video, not an image", "empty (0 bytes)"."""
    found = media_kind(path)
    if found is not None and (kind == "picture" or found == kind):
        return None
    want = {"picture": "an image or a video"}.get(kind, f"a{'n' if kind == 'image' else ''} {kind}")
    what = f"a{'n' if found == 'image' else ''} {found}" if found else "not a readable image or video"
    if path.stat().st_size == 0:
        what = "empty (0 bytes)"
    return f"{what}, not {want}" if found else what


def require_file(path: Path, flag: str, kind: str | None = None) -> Path:
    """`path` if it is a file (of `kind`: 'video', 'image', or 'picture' for either), else an error that says
    what it is instead."""
    path = _require(Path(path), flag, folder=False)
    why = kind_mismatch(path, kind) if kind is not None else None
    if why:
        raise UserError(f"{flag} {path} is {why}")
    return path


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


def check_output(output: Path, inputs: dict[str, Path | None], flag: str = "--output", overwrite: bool | None = None,
                 kind: str | None = None, suffix: str | None = None) -> Path:
    """An error unless `output` can be written safely:
    - it is not one of `inputs` ({flag: path}) nor inside or around one (a command that clears or packs its output
      folder would delete the input);
    - kind 'file' or 'folder': an existing output is of that kind; `suffix`: the output's name ends so;
    - overwrite False: it does not exist yet (None: the caller resumes into it);
    - its folder can be created and written (probed now, not after minutes of work)."""
    output = Path(output)
    if kind is not None and output.exists() and output.is_dir() != (kind == "folder"):
        raise UserError(f"{flag} {output} is a {'folder' if output.is_dir() else 'file'}, not a {kind}")
    folder = output if kind == "folder" else output.parent
    while not folder.exists() and folder != folder.parent:  # probe the nearest existing folder: nothing made yet
        folder = folder.parent
    if not folder.is_dir():
        raise UserError(f"cannot write {flag} {output}: {folder} is a file")
    for name, path in inputs.items():
        if path is not None and _overlap(output, Path(path)):
            raise UserError(f"{flag} {output} overlaps {name} {path}: write the output somewhere else")
    if suffix is not None and output.suffix.lower() != suffix:
        raise UserError(f"{flag} {output}: the output is a {suffix} file")
    if overwrite is False and (output.exists() or output.is_symlink()):
        raise UserError(f"{flag} {output} exists: pass --overwrite to replace it")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"cannot write {flag} {output}: {folder} is not writable")
    if output.parent.is_dir():
        remove_partials_of(output)  # what a killed earlier run was writing there
    try:
        probe = folder / f".write_probe.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"cannot write {flag} {output}: {exc.strerror or type(exc).__name__}") from None
    return output
