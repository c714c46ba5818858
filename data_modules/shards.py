"""Reading what `python -m src.preprocess` wrote: the manifest, and frames out of a litdata item."""
from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np

from src.errors import UserError


def load_manifest(root: str | Path) -> dict:
    """The manifest of a finished shard folder, after checking that each split's litdata index declares only
    the plain fields this project writes (a shard folder is data: nothing in it may ask to be unpickled)."""
    path = Path(root) / "manifest.json"
    if not path.is_file():
        raise UserError(f"{root} is not a finished shard folder (no manifest.json): run "
                        f"python -m src.preprocess --input VIDEOS --output {root}")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is not valid JSON ({type(exc).__name__}); preprocess again into a new "
                        "folder") from None
    if not isinstance(manifest, dict) or manifest.get("format") != "metaportrait-shards":
        raise UserError(f"{path} is not a metaportrait shard manifest")
    for split in manifest.get("splits") or {}:
        if (Path(root) / split).is_dir():
            check_shard_index(Path(root) / split)
    return manifest


# What the shard writer's litdata chunks hold (data_modules/shard_writer.py): strings, floats, bytes, numpy arrays.
# litdata decodes other formats too, `pickle` among them, which would run code from the dataset: refused.
_FIELD_FORMATS = re.compile(r"^(str|float|int|bytes|numpy|no_header_numpy:\d+)$")
_SPEC_TYPES = {None, "builtins.dict"}


def check_shard_index(split_dir: Path) -> None:
    """A UserError unless split_dir/index.json describes chunks of plain fields, uncompressed and unencrypted."""
    path = split_dir / "index.json"
    try:
        config = json.loads(path.read_text())["config"]
        formats, spec = list(config["data_format"]), json.loads(config["data_spec"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{path} is missing or not a litdata index ({type(exc).__name__})") from None
    bad = [f for f in formats if not (isinstance(f, str) and _FIELD_FORMATS.match(f))]
    types = set()

    def collect(node):
        if isinstance(node, dict):
            types.add(node.get("type"))
            for child in node.get("children_spec") or []:
                collect(child)
        elif isinstance(node, list):
            for child in node:
                collect(child)

    collect(spec)
    if bad or not types <= _SPEC_TYPES or config.get("encryption") or config.get("item_loader") != "PyTreeLoader":
        what = ", ".join(map(str, bad)) or ", ".join(sorted(map(str, types - _SPEC_TYPES))) or "its loader"
        raise UserError(f"{path} declares fields this project never writes ({what}); a shard folder is data, and "
                        f"decoding these could run code: refused")


def check_id_dim(requested: int | None, manifest: dict) -> int:
    """The identity-embedding dimension to build models with: the shards' own, and a config asking for
    another one is an error naming both."""
    have = int(manifest["embedding"]["dim"])
    if requested is not None and int(requested) != have:
        raise UserError(f"model.id_dim={requested} but the shards hold {have}-D embeddings from "
                        f"{manifest['embedding']['backend']}: set model.id_dim={have} (or null) or re-preprocess")
    return have


def decode_frames(item: dict, indices, hq: bool = False, size: int | None = None) -> np.ndarray:
    """(len(indices), H, W, 3) uint8 RGB frames of a litdata item, resized to `size` when given."""
    blob, offsets = (item["frames512"], item["offsets512"]) if hq else (item["frames256"], item["offsets256"])
    out = None
    for k, i in enumerate(indices):
        buf = np.frombuffer(blob, np.uint8, count=int(offsets[i + 1] - offsets[i]), offset=int(offsets[i]))
        img = cv2.imdecode(buf, cv2.IMREAD_COLOR)
        if size is not None and img.shape[0] != size:
            img = cv2.resize(img, (size, size),
                             interpolation=cv2.INTER_AREA if img.shape[0] > size else cv2.INTER_CUBIC)
        if out is None:
            out = np.empty((len(indices), *img.shape), np.uint8)
        cv2.cvtColor(img, cv2.COLOR_BGR2RGB, dst=out[k])
    return out


def num_frames(item: dict) -> int:
    return len(item["offsets256"]) - 1


SOURCE_FRAMES = ("typical", "first")  # the frame held-out frames are driven from: typical_frame(), or frame 0


def typical_frame(landmarks: np.ndarray, lo: int, hi: int) -> int:
    """The frame in [lo, hi) whose 2D landmarks are nearest (sum of squares) the per-point median over that range:
    the clip's usual pose, expression and framing."""
    lm = landmarks[lo:hi, :, :2].astype(np.float64)
    return lo + int(np.argmin(((lm - np.median(lm, axis=0)) ** 2).sum(axis=(1, 2))))


HELDOUT_FRACTION = 0.2  # the part of a clip personalization holds out by default (src.personalize --heldout-fraction)


def heldout_tail(n: int, fraction: float) -> int:
    """How many frames at the end of an n-frame clip are held out (personalization's split; at least 1)."""
    return max(1, int(round(n * fraction)))


def has_hq(item: dict) -> bool:
    return len(item["offsets512"]) > 1
