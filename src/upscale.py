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

from src.errors import UserError, cli_entry
from src.inference import IMAGE_EXTS


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


def upscale(checkpoint: Path, input: Path, output: Path, device: str = "auto", overwrite: bool = False) -> dict:
    """Super-resolve a folder of frames (into a folder of PNGs) or a video (into an mp4 with its audio)."""
    import cv2

    from src.checkpoints import load_sr
    from src.inference import resolve_device, super_resolve
    from src.video_io import write_video

    if output.exists() and not overwrite:
        raise UserError(f"{output} exists: pass --overwrite to replace it")
    net, cfg = load_sr(checkpoint)
    frames, names, fps, audio = read_input(input)
    out = super_resolve(net, frames, cfg["sr"]["window"], resolve_device(device))
    if names is not None:  # a folder: fill a temporary folder, then move it into place
        tmp = output.with_name(output.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for name, img in zip(names, out):
            cv2.imwrite(str(tmp / name), img[:, :, ::-1])
        if output.exists():
            shutil.rmtree(output)
        tmp.rename(output)
    else:
        samples, rate = audio if audio is not None else (None, 16000)
        mono = samples.mean(0).astype(np.float32) if samples is not None else None
        write_video(output, out, fps=fps, audio=mono, sample_rate=rate)
    return {"output": str(output), "frames": len(out), "size": [out[0].shape[1], out[0].shape[0]]}


@cli_entry
def main(argv=None) -> int:
    a = parse_args(argv)
    r = upscale(a.checkpoint, a.input, a.output, a.device, a.overwrite)
    print(f"upscaled {r['frames']} frames to {r['size'][0]}x{r['size'][1]}: {a.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
