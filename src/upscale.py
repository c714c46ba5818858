"""Apply a trained TemporalSR model (x2 at the `full` preset, x4 at `demo`) to a folder of frames or to a video.

    python -m src.upscale --checkpoint SR.ckpt --input FRAMES_DIR|VIDEO --output OUT_DIR|OUT.mp4

A folder: its images (png/jpg, sorted by name) are upscaled and written as PNGs with the same names. A
video: written as H.264 mp4 with the input's audio. Frames must be the model's input size (half its output
size, 256 for the `full` preset). Frames go through the network in temporal windows of `sr.window` frames;
the last window is padded by repeating the last frame. The EMA weights are used when the checkpoint has them.
Every output file appears under its final name only when complete; an existing output (or, for a folder, an
existing frame of the same name) is kept unless --overwrite, and nothing else in an output folder is touched.
The output must not be or lie inside the input (and the reverse).
"""
from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import numpy as np

from src.arguments import Parser
from src.errors import UserError, cli_entry
from src.inference import IMAGE_EXTS
from src.paths import check_output, require_file


def read_input(path: Path):
    """(frames, names or None, fps, audio) of a folder of images or a video."""
    import cv2

    from src.video_io import probe, read_audio, read_frames

    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTS and p.is_file())
        if not files:
            raise UserError(f"no images ({', '.join(sorted(IMAGE_EXTS))}) in {path}")
        stems = Counter(f.stem for f in files)
        clash = sorted(f.name for f in files if stems[f.stem] > 1)
        if clash:  # both would be written as STEM.png: one frame would silently replace the other
            raise UserError(f"--input {path}: {', '.join(clash[:4])} share a name (each frame is written as "
                            "NAME.png); rename them")
        frames = []
        for f in files:
            img = cv2.imread(str(f), cv2.IMREAD_COLOR)
            if img is None:
                raise UserError(f"cannot read image {f}")
            frames.append(img[:, :, ::-1])
        return frames, [f.with_suffix(".png").name for f in files], None, None
    require_file(path, "--input", kind="video")
    return list(read_frames(path)), None, probe(path).fps, read_audio(path)


def parse_args(argv=None):
    p = Parser(prog="python -m src.upscale", description=__doc__.split("\n\n")[0],
               epilog="\n\n".join(__doc__.split("\n\n")[1:]),
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, type=Path, help="checkpoint written by the sr stage")
    p.add_argument("--input", required=True, type=Path, help="folder of frames or a video")
    p.add_argument("--output", required=True, type=Path, help="folder (for a folder input) or .mp4 (for a video)")
    p.add_argument("--device", default="auto")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing OUT.mp4, or PNGs of the same names in OUT_DIR")
    return p.parse_args(argv)


def upscale(checkpoint: Path, input: Path, output: Path, device: str = "auto", overwrite: bool = False) -> dict:
    """Super-resolve a folder of frames (into a folder of PNGs) or a video (into an mp4 with its audio)."""
    import cv2

    from src.checkpoints import load_sr
    from src.files import partial_file
    from src.inference import resolve_device, super_resolve
    from src.video_io import write_video

    # inputs and the output checked before any work (src/paths.py)
    checkpoint, input, output = Path(checkpoint), Path(input), Path(output)
    require_file(checkpoint, "--checkpoint")
    if not input.exists():
        raise UserError(f"--input {input} does not exist")
    folder = input.is_dir()
    inputs = {"--checkpoint": checkpoint, "--input": input}
    if folder:  # a folder of PNGs; an existing one gets its frames replaced, nothing else in it is touched
        if output.suffix:
            raise UserError(f"--output {output}: a folder input is written as a folder of PNGs, not a "
                            f"{output.suffix} file")
        check_output(output, inputs, kind="folder")
    else:
        check_output(output, inputs, kind="file", suffix=".mp4", overwrite=overwrite)
    net, cfg = load_sr(checkpoint)
    frames, names, fps, audio = read_input(input)
    if folder and not overwrite:
        existing = [n for n in names if (output / n).exists()]
        if existing:
            raise UserError(f"--output {output} already holds {len(existing)} of these frames ({existing[0]}, ...): "
                            "pass --overwrite to replace them")
    out = super_resolve(net, frames, cfg["sr"]["window"], resolve_device(device))
    if folder:  # each PNG appears under its name only when complete
        output.mkdir(parents=True, exist_ok=True)
        for name, img in zip(names, out):
            with partial_file(output / name) as tmp:
                ok, data = cv2.imencode(".png", img[:, :, ::-1])
                tmp.write_bytes(data.tobytes())
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
