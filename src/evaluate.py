"""Evaluate a generator the way talking-head papers do, next to two baselines on the same pairs.

    python -m src.evaluate --checkpoint CKPT --data SHARDS [--split test]
                           [--mode same-identity|cross-identity] --output DIR

Pairs, from preprocessed shards (python -m src.preprocess): for every clip of the split, source = its
first frame; driving = its next --max-frames frames (same-identity, the real frames are the ground truth),
or the frames of a clip of another identity whose motion is transferred relative to its first frame
(cross-identity, as src.animate's default; there is no ground truth).

Methods: the model; copy-the-source-frame; a classical piecewise-affine warp of the source along the
MediaPipe mesh to the target landmarks (no learning at all).

Metrics: PSNR, SSIM, LPIPS (same-identity only); FID of each method's frames against the real frames of the
evaluated clips; CSIM (cosine similarity of identity embeddings of output and source, with the backend the
checkpoint was trained with) and the paper's ID loss, 1 - CSIM; AKD, AED, APD on MediaPipe landmarks (see
src/metrics/face.py for their definitions); the temporal warping error of consecutive outputs
(src/metrics/temporal.py), also of the real driving frames. Outputs without a detectable face are left out of
the landmark and identity metrics and counted. LPIPS and FID need torchvision, torch-fidelity and downloaded
weights (`pip install -e ".[metrics]"` where torchvision installs beside torch, see the README); without them
they are reported as unavailable with the reason, never as 0.

Written: DIR/metrics.json (overall and per identity) and DIR/metrics.md (Markdown tables); the metrics of an
earlier evaluation there are kept unless --overwrite. DIR is checked before any work.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from src.arguments import Parser, bounded, positive_int
from src.errors import cli_entry
from src.evaluation import MESH_PRIOR, MODES, check_report_folder, evaluate, markdown, write_report
from src.faces.identity import BACKENDS


def parse_args(argv=None) -> argparse.Namespace:
    p = Parser(prog="python -m src.evaluate", description=__doc__.split("\n\n")[0],
               formatter_class=argparse.RawDescriptionHelpFormatter,
               epilog="\n\n".join(__doc__.split("\n\n")[2:]))
    p.add_argument("--checkpoint", required=True, type=Path, help="generator checkpoint (refine, meta or personalize)")
    p.add_argument("--data", required=True, type=Path, help="preprocessed shards (with manifest.json)")
    p.add_argument("--split", default="test", help="a split of --data (default test); an unknown one lists them")
    p.add_argument("--mode", choices=MODES, default="same-identity")
    p.add_argument("--output", required=True, type=Path, help="folder for metrics.json and metrics.md")
    p.add_argument("--max-frames", type=bounded(int, 2), default=32,
                   help="driving frames per clip (consecutive), >= 2 (default %(default)s)")
    p.add_argument("--batch-size", type=positive_int, default=8, help=">= 1 (default %(default)s)")
    p.add_argument("--device", default="auto")
    p.add_argument("--identity-backend", default="auto", choices=BACKENDS)
    p.add_argument("--mesh-prior", choices=list(MESH_PRIOR), default="auto",
                   help="auto: run the checkpoint as it was trained; on/off: require a checkpoint trained with/without "
                        "the mesh prior (an error otherwise), for ablation tables that must not mix the two")
    p.add_argument("--overwrite", action="store_true", help="replace the metrics of an earlier evaluation in DIR")
    p.add_argument("--quiet", action="store_true")
    return p.parse_args(argv)


@cli_entry
def main(argv=None) -> int:
    a = parse_args(argv)
    check_report_folder(a.output, {"--checkpoint": a.checkpoint, "--data": a.data}, a.overwrite)
    result = evaluate(a.checkpoint, a.data, a.split, a.mode, a.max_frames, a.batch_size, a.device, a.identity_backend,
                      a.mesh_prior, progress=not a.quiet)
    write_report(result, a.output)
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
