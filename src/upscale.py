"""Apply a trained TemporalSR model (x2 at the `full` preset, x4 at `demo`) to a folder of frames or to a video.

    python -m src.upscale --checkpoint SR.ckpt --input FRAMES_DIR|VIDEO --output OUT_DIR|OUT.mp4

A folder: its images (png/jpg, sorted by name) are upscaled and written as PNGs with the same names. A
video: written as H.264 mp4 with the input's audio. Frames must be the model's input size (half its output
size, 256 for the `full` preset). Frames go through the network in temporal windows of `sr.window` frames;
the last window is padded by repeating the last frame. The EMA weights are used when the checkpoint has them.
The output appears under its final name only when complete; an existing output is kept unless --overwrite.
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from src.errors import UserError, cli_entry

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp"}


def load_sr(checkpoint: str | Path):
    """(TemporalSR with the checkpoint's EMA weights when present, its config)."""
    from src.models.temporal_sr import build_sr

    path = Path(checkpoint)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"{path} is not a readable checkpoint ({type(exc).__name__})") from None
    weights = {k[4:]: v for k, v in state.get("state_dict", {}).items() if k.startswith("net.")}
    cfg = state.get("hyper_parameters", {}).get("cfg")
    if not weights or not cfg or "sr" not in cfg.get("model", {}):
        raise UserError(f"{path} is not a super-resolution checkpoint (the sr stage writes them)")
    net = build_sr(OmegaConf.create(cfg["model"]))
    for cb in state.get("callbacks", {}).values():  # callbacks/ema.py: the averaged weights
        if isinstance(cb, dict) and cb.get("shadow"):
            weights.update(cb["shadow"])
    net.load_state_dict(weights)
    return net.eval(), cfg


def read_input(path: Path):
    """(frames, names or None, fps, audio) of a folder of images or a video."""
    import cv2

    from src.video_io import probe, read_audio, read_frames

    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTS)
        if not files:
            raise UserError(f"no images ({', '.join(sorted(IMAGE_EXTS))}) in {path}")
        frames = []
        for f in files:
            img = cv2.imread(str(f), cv2.IMREAD_COLOR)
            if img is None:
                raise UserError(f"cannot read image {f}")
            frames.append(img[:, :, ::-1])
        return frames, [f.with_suffix(".png").name for f in files], None, None
    if not path.is_file():
        raise UserError(f"--input {path} does not exist")
    return list(read_frames(path)), None, probe(path).fps, read_audio(path)


@torch.no_grad()
def upscale(net, frames: list[np.ndarray], window: int, device, batch_windows: int = 1) -> list[np.ndarray]:
    from tqdm import tqdm

    size = net.cfg.in_size
    bad = {f.shape[:2] for f in frames if f.shape[:2] != (size, size)}
    if bad:
        raise UserError(f"frames are {sorted(bad)[0][1]}x{sorted(bad)[0][0]} but this model takes {size}x{size} "
                        f"(it outputs {net.cfg.out_size}x{net.cfg.out_size})")
    net = net.to(device)
    out = []
    for start in tqdm(range(0, len(frames), window), desc="upscale", unit="window", dynamic_ncols=True):
        chunk = frames[start : start + window]
        padded = chunk + [chunk[-1]] * (window - len(chunk))  # edge replication at the end
        x = torch.from_numpy(np.stack(padded)).permute(0, 3, 1, 2).float().div(255)[None].to(device)
        y = net(x)[0, : len(chunk)].clamp(0, 1)
        out += list((y * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy())
    return out


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m src.upscale", description=__doc__.split("\n\n")[0],
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, type=Path, help="checkpoint written by the sr stage")
    p.add_argument("--input", required=True, type=Path, help="folder of frames or a video")
    p.add_argument("--output", required=True, type=Path, help="folder (for a folder input) or .mp4 (for a video)")
    p.add_argument("--device", default="auto")
    p.add_argument("--overwrite", action="store_true")
    return p.parse_args(argv)


@cli_entry
def main(argv=None) -> int:
    import cv2

    from src.personalize import resolve_device
    from src.video_io import write_video

    a = parse_args(argv)
    if a.output.exists() and not a.overwrite:
        raise UserError(f"{a.output} exists: pass --overwrite to replace it")
    net, cfg = load_sr(a.checkpoint)
    frames, names, fps, audio = read_input(a.input)
    out = upscale(net, frames, cfg["sr"]["window"], resolve_device(a.device))
    if names is not None:  # a folder: fill a temporary folder, then move it into place
        tmp = a.output.with_name(a.output.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for name, img in zip(names, out):
            cv2.imwrite(str(tmp / name), img[:, :, ::-1])
        if a.output.exists():
            shutil.rmtree(a.output)
        tmp.rename(a.output)
    else:
        samples, rate = audio if audio is not None else (None, 16000)
        mono = samples.mean(0).astype(np.float32) if samples is not None else None
        write_video(a.output, out, fps=fps, audio=mono, sample_rate=rate)
    print(f"upscaled {len(out)} frames to {out[0].shape[1]}x{out[0].shape[0]}: {a.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
