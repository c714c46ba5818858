"""Export a generator checkpoint (and an SR checkpoint) as ONNX graphs, checked against torch on a real frame.

    python -m src.export --checkpoint CKPT --output DIR [--sr-checkpoint SR.ckpt] [--batch-size 1]
                         [--check-source IMAGE --check-driving VIDEO]

Writes DIR/source.onnx (the source crop -> the refiner's feature pyramid, run once per video), DIR/frame.onnx (a
batch of frames: guidance, mesh flow, identity and pyramid -> the generated frames), DIR/sr.onnx with
--sr-checkpoint (one temporal window), and DIR/manifest.json, which ties them to the checkpoints. The landmark
guidance and the mesh flow stay in torch (src/runtime.py says why). The graphs have a fixed batch
(--batch-size; animate pads the last batch): the CPU benchmark measured 1; larger batches should pay on a GPU
(not measured).

Each graph is then run with onnxruntime on the same inputs as torch and the largest absolute difference of
their outputs (pixels in [0, 1]) is reported. The check uses a real portrait and driving frames: by default the
sample dataset's (written by `make sample` or `make demo`), or --check-source / --check-driving. It fails when
a difference is above --tolerance (then the graphs stay for inspection, without the manifest animate needs).
Then:

    python -m src.animate --runtime onnx --onnx DIR --checkpoint CKPT ...

TensorRT, on a machine with a GPU and TensorRT: `trtexec --onnx=DIR/frame.onnx --saveEngine=frame.plan --fp16`
builds an engine of the same graph (README, "Speed").
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from src.arguments import Parser, positive_int
from src.errors import UserError, cli_entry

DEFAULT_TOLERANCE = 1e-3  # measured: 4e-5 (full preset) to 1e-5 (tiny) on fixture frames; float32 either way


def export(checkpoint: Path, output: Path, sr_checkpoint: Path | None = None, batch_size: int = 1,
           check_source: Path | None = None, check_driving: Path | None = None, tolerance: float = DEFAULT_TOLERANCE,
           identity_backend: str = "auto", overwrite: bool = False) -> dict:
    """Write the graphs of `checkpoint` (and `sr_checkpoint`) to the folder `output` and check them against
    torch; the manifest with the measured differences."""
    from src.checkpoints import load_generator, load_sr
    from src.files import atomic_write_json
    from src.paths import check_output, require_file
    from src.runtime import export_graphs

    inputs = {"--checkpoint": require_file(checkpoint, "--checkpoint"),
              "--sr-checkpoint": sr_checkpoint and require_file(sr_checkpoint, "--sr-checkpoint")}
    check_source, check_driving = check_inputs(check_source, check_driving)
    check_output(output, inputs, overwrite=overwrite, kind="folder")
    generator, cfg, id_dim = load_generator(checkpoint)
    sr = sr_window = None
    if sr_checkpoint is not None:
        sr, sr_cfg = load_sr(sr_checkpoint)
        sr_window = sr_cfg["sr"]["window"]
        if sr.cfg.in_size != cfg["model"]["resolution"]:
            raise UserError(f"--sr-checkpoint {sr_checkpoint} takes {sr.cfg.in_size}px frames but the generator "
                            f"renders {cfg['model']['resolution']}px")
    manifest = export_graphs(generator, output, batch_size, checkpoint, sr, sr_window, sr_checkpoint)
    manifest["check"] = check_graphs(generator, sr, output, checkpoint, sr_checkpoint, check_source, check_driving,
                                     identity_backend, id_dim)
    atomic_write_json(output / "manifest.json", manifest)
    worst = max(manifest["check"]["max_abs_diff"].values())
    if worst > tolerance:  # no manifest: animate refuses graphs that failed their check
        (output / "manifest.json").unlink()
        raise UserError(f"export: onnxruntime differs from torch by {worst:.2g} (> --tolerance {tolerance:g}) on "
                        f"{manifest['check']['source']}; the graphs are left in {output} for inspection")
    return manifest


def check_inputs(source: Path | None, driving: Path | None, samples: Path = Path("data/sample")) -> tuple[Path, Path]:
    """The real portrait and driving clip of the check: as given, or two of the sample dataset's test clips."""
    from src.paths import require_file

    if source is None or driving is None:
        clips = sorted(Path(samples).glob("test/mp4/*/*/*.mp4"))
        if len(clips) < 2:
            raise UserError(f"export checks the graphs on a real face: run `make sample` (it writes {samples}), "
                            f"or pass --check-source IMAGE_OR_VIDEO --check-driving VIDEO")
        source, driving = source or clips[0], driving or clips[1]
    return require_file(source, "--check-source"), require_file(driving, "--check-driving", kind="video")


def check_graphs(generator, sr, folder: Path, checkpoint: Path, sr_checkpoint: Path | None, source: Path,
                 driving: Path, identity_backend: str, id_dim: int, frames: int = 4) -> dict:
    """The largest absolute difference between torch and onnxruntime, per graph, on the first `frames` frames
    of `driving` driving `source` (real crops, real MediaPipe landmarks)."""
    import numpy as np
    import torch

    from src.inference import identity_embedder, iter_generate, prepare_driving, prepare_sources
    from src.runtime import OnnxGenerator, OnnxSR

    r = generator.warper.cfg.resolution
    still = prepare_sources(source, r, identity_embedder(identity_backend, id_dim), "largest")[0]
    landmarks = prepare_driving(driving, r).landmarks[:frames]
    onnx_generator = OnnxGenerator(folder, checkpoint)
    batch = onnx_generator.batch
    cpu = torch.device("cpu")
    ours = list(iter_generate(onnx_generator, still, landmarks, cpu, batch))
    theirs = list(iter_generate(generator, still, landmarks, cpu, batch))
    # compared before the uint8 rounding: one frame's float outputs through each runtime
    diffs = {"frame.onnx": _float_diff(generator, onnx_generator, still, landmarks[:batch], r)}
    frames_diff = max(np.abs(a.astype(int) - b.astype(int)).max() for a, b in zip(ours, theirs))
    if sr is not None:
        onnx_sr = OnnxSR(folder, sr_checkpoint)
        window = torch.from_numpy(np.stack(theirs[:1] * onnx_sr.cfg.window)).permute(0, 3, 1, 2)[None].float() / 255
        with torch.no_grad():
            diffs["sr.onnx"] = float((onnx_sr(window) - sr.cpu().eval()(window)).abs().max())
    return {"source": str(source), "driving": str(driving), "frames": len(landmarks),
            "max_abs_diff": {k: round(v, 7) for k, v in diffs.items()},
            "animated_frames_max_uint8_diff": int(frames_diff)}


def _float_diff(generator, onnx_generator, still, landmarks, r: int) -> float:
    import numpy as np
    import torch

    from src.faces.render import LandmarkRenderer, gaze_heatmaps, region_masks
    from src.inference import to_tensor

    renderer = LandmarkRenderer()
    lm = torch.from_numpy(np.asarray(landmarks, np.float32))
    src = to_tensor(still.crop[None], "cpu").expand(len(lm), -1, -1, -1)
    src_points = torch.from_numpy(np.asarray(still.landmarks, np.float32))[None]
    identity = torch.from_numpy(np.asarray(still.embedding, np.float32))[None].expand(len(lm), -1)
    kwargs = dict(source=src, source_lmk=renderer(src_points, r).expand(len(lm), -1, -1, -1),
                  driving_lmk=renderer(lm, r), identity=identity, gaze=gaze_heatmaps(lm, r),
                  mouth_mask=region_masks(lm, r)[1], source_points=src_points, driving_points=lm)
    with torch.no_grad():
        ours = onnx_generator(**kwargs, source_feats=onnx_generator.source_features(src[:1]))["output"]
        theirs = generator.eval()(**kwargs, source_feats=generator.source_features(src[:1]))["output"]
    return float((ours - theirs).abs().max())


def parse_args(argv=None) -> argparse.Namespace:
    p = Parser(prog="python -m src.export", description=__doc__.split("\n\n")[0],
               formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--checkpoint", required=True, type=Path, help="generator checkpoint (refine, meta or personalize)")
    p.add_argument("--output", required=True, type=Path, help="the folder to write the graphs to")
    p.add_argument("--sr-checkpoint", type=Path, default=None, help="an SR checkpoint to export too")
    p.add_argument("--batch-size", type=positive_int, default=1, help="frames per graph call (fixed), >= 1")
    p.add_argument("--check-source", type=Path, default=None, help="portrait for the check (default: the sample's)")
    p.add_argument("--check-driving", type=Path, default=None,
                   help="driving video for the check (default: the sample's)")
    p.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                   help=f"largest allowed |onnx - torch| on [0, 1] pixels (default {DEFAULT_TOLERANCE:g})")
    p.add_argument("--identity-backend", default="auto",
                   help="auto | insightface | dlib (as the checkpoint was trained)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing DIR's graphs")
    return p.parse_args(argv)


@cli_entry
def main(argv=None) -> int:
    a = parse_args(argv)
    manifest = export(a.checkpoint, a.output, a.sr_checkpoint, a.batch_size, a.check_source, a.check_driving,
                      a.tolerance, a.identity_backend, a.overwrite)
    print(json.dumps(manifest, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
