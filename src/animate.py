"""Animate a portrait with a driving video: one-shot (any generator checkpoint) or personalized.

    python -m src.animate --checkpoint CKPT --source IMAGE_OR_VIDEO --driving VIDEO --output OUT.mp4
                          [--sr-checkpoint SR.ckpt] [--motion relative|absolute] [--paste-back]
                          [--face largest|all|INDEX] [--video-to-video] [--batch-size N] [--device auto|cpu|cuda]
                          [--runtime torch|onnx [--onnx DIR]] [--precision auto|fp32|bf16]
    python -m src.animate --source IMAGE --list-faces

From raw files, with the preprocessing code: the source (an image, or a video's first frame) and every
driving frame are face-detected and cropped like the training data, MediaPipe gives their landmarks, and
the identity embedding of the source is computed with the backend the checkpoint was trained with. The
source's encoding (crop, landmark image, identity, refiner feature pyramid) is computed once; the driving
frames go through the generator in batches, then optionally through a temporal SR model (to 512), and are
written with the driving clip's audio.

--motion relative (default; for another person's video): the driver's head motion and expressions,
measured from its first frame, move the source's own landmarks, so the source keeps its face shape.
--motion absolute: the driver's landmarks as they are (same-person reenactment).
--paste-back: the generated face is blended back into the full source picture, through a feathered mask of
the face (the source's and the generated face's mesh outlines), its colours first matched to the picture's
face (--no-colour-match: as generated); every pixel outside the mask is the picture's own.
--face largest|all|INDEX: which face of a picture with several: the largest (default, and said), all of them
(each through its own crop, pasted back, so --paste-back is implied), or the INDEX-th from the left
(--list-faces prints them with their boxes, and needs no checkpoint).
--video-to-video: the source is a video; each output frame starts from the matching source frame, keeps its
head motion, and takes on the driver's expression change since its first frame (with the expression and eye
and lip controls). The output stops at the shorter of the two videos; source frames without a face hold the
last good frame (the count is reported).
--motion-parts pose|expression|both: which part of the driver's motion moves the source: its head pose (the
similarity fitted on points that move only with the skull), its expression (the rest), or both (default).
--expression-scale S multiplies the expression change: 0 keeps the source's own expression (with --motion
absolute: the first driving frame's), 1 is as driven, 2 doubles it.
--eyes driving|source|open|closed: whose eyes: the driver's (default), the source's own (no blinks from the
driver), the driver's widest-open frame held, or shut. --lips driving|source: whose mouth; --lip-scale S
scales the driver's mouth motion (lips and jaw) for lip-sync strength.

--runtime onnx: the networks run in onnxruntime on ONNX graphs (--onnx DIR: written by python -m src.export for
this checkpoint; without it they are exported for the run, about 8 s for the full preset), 0.63-0.86 of torch's
fp32 time a frame on 2 CPU cores (BENCHMARKS.md); the output matches torch's to about 1e-5. The graphs are fp32.

--precision auto|fp32|bf16: the torch runtime's arithmetic for the generator. bf16 runs it under autocast with
channels_last weights: on a CPU with AMX (Intel Sapphire Rapids and later) about 2.6x faster than fp32 for the
full preset and 2.3-2.6x for demo, the frames within 3 of 255 of fp32's (mean 0.07, 59.5 dB; BENCHMARKS.md). auto (the
default) takes bf16 there and fp32 elsewhere: CPUs without bf16 units emulate it, and it has not been measured on
a GPU yet. The SR net stays in fp32.

--smooth N: the driving landmarks are smoothed over time by a Savitzky-Golay filter of N frames (odd). On the
fixture clips the landmarks' tremble drops by 24% (N=5) to 51% (N=13), and the generated face's by 26% (N=9) to
36% (N=13) on the mean of 6 clips (BENCHMARKS.md); a still driver gains nothing and fast mouth motion softens,
so it is off by default (--no-smooth).

Driving frames where the face is lost
keep the last good landmarks (the count is reported). The mp4 appears under its final name only when
complete; an existing OUT is kept unless --overwrite. Videos are streamed: memory does not grow with the
driving video's length (BENCHMARKS.md, streaming).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from src.arguments import Parser, bounded, odd_window, positive_int
from src.controls import PRECISIONS, RUNTIMES, SCALE_RANGE, check_controls
from src.errors import UserError, cli_entry
from src.faces.identity import BACKENDS
from src.faces.motion import EYES_CHOICES, LIPS_CHOICES, PARTS
from src.faces.motion import MODES as MOTIONS


def parse_args(argv=None) -> argparse.Namespace:
    p = Parser(prog="python -m src.animate", description=__doc__.split("\n\n")[0],
               formatter_class=argparse.RawDescriptionHelpFormatter,
               epilog="\n\n".join(__doc__.split("\n\n")[2:]))
    p.add_argument("--checkpoint", type=Path, help="generator checkpoint (refine, meta or personalize)")
    p.add_argument("--source", required=True, type=Path,
                   help="portrait image, or a video (its first frame; every frame with --video-to-video)")
    p.add_argument("--driving", type=Path, help="driving video")
    p.add_argument("--output", type=Path, help="the mp4 to write")
    p.add_argument("--sr-checkpoint", type=Path, default=None,
                   help="a TemporalSR checkpoint, applied after generation (its input size must be the generator's)")
    p.add_argument("--motion", choices=MOTIONS, default="relative",
                   help="relative: driver's motion on the source's face (default); absolute: driver's landmarks")
    p.add_argument("--motion-parts", choices=PARTS, default="both",
                   help="the driver's head pose, its expression, or both (default)")
    p.add_argument("--expression-scale", type=bounded(float, *SCALE_RANGE), default=1.0, metavar="S",
                   help="expression strength in [0, 3]: 0 keeps the source's expression, 1 as driven (default)")
    p.add_argument("--eyes", choices=EYES_CHOICES, default="driving",
                   help="whose eyes: the driver's (default), the source's, held open, or closed")
    p.add_argument("--lips", choices=LIPS_CHOICES, default="driving", help="whose mouth: the driver's or the source's")
    p.add_argument("--lip-scale", type=bounded(float, *SCALE_RANGE), default=1.0, metavar="S",
                   help="the driver's mouth motion times S, in [0, 3] (default 1)")
    p.add_argument("--paste-back", action="store_true", help="blend the face back into the full source picture")
    p.add_argument("--no-colour-match", dest="colour_match", action="store_false",
                   help="paste the face back with its colours as generated (default: matched to the picture)")
    p.add_argument("--face", default="largest", metavar="largest|all|INDEX",
                   help="which face of the source: the largest (default), all, or the INDEX-th from the left (1, 2..)")
    p.add_argument("--list-faces", action="store_true", help="print the source's faces with their boxes, and stop")
    p.add_argument("--video-to-video", action="store_true",
                   help="the source is a video: re-animate each of its frames (stops at the shorter video)")
    smooth = p.add_mutually_exclusive_group()
    smooth.add_argument("--smooth", type=odd_window, default=None, metavar="N",
                        help="smooth the driving landmarks over N frames (odd, 3 to 101; 5 is gentle)")
    smooth.add_argument("--no-smooth", dest="smooth", action="store_const", const=None,
                        help="use the raw driving landmarks (the default)")
    p.add_argument("--batch-size", type=positive_int, default=8,
                   help="frames per forward pass, >= 1 (with --onnx DIR: the graphs' own batch)")
    p.add_argument("--runtime", choices=RUNTIMES, default="torch",
                   help="where the networks run: torch, or onnxruntime on ONNX graphs (src.export; BENCHMARKS.md "
                        "measures both)")
    p.add_argument("--onnx", type=Path, default=None, metavar="DIR",
                   help="with --runtime onnx: graphs written by python -m src.export for this checkpoint (default: "
                        "exported for this run into a temporary folder)")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="the generator's arithmetic in torch: auto (bf16 on CPUs with AMX, else fp32; default), "
                        "fp32, or bf16")
    p.add_argument("--device", default="auto", help="auto (cuda when available) | cpu | cuda | cuda:N")
    p.add_argument("--identity-backend", default="auto", choices=BACKENDS)
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    # ranges and combinations that cannot mean anything, refused before any work (the app runs the same check)
    if not a.list_faces:
        missing = [f"--{n}" for n in ("checkpoint", "driving", "output") if getattr(a, n) is None]
        if missing:
            p.error(f"the following arguments are required: {', '.join(missing)}")
    try:
        check_controls(a.motion, a.motion_parts, a.expression_scale, a.eyes, a.lips, a.lip_scale, a.face,
                       a.video_to_video, a.paste_back, a.colour_match, a.smooth, a.list_faces,
                       a.runtime, a.onnx, a.precision)
    except UserError as exc:
        p.error(str(exc))
    return a


@cli_entry
def main(argv=None) -> int:
    from src.inference import animate, list_faces

    a = parse_args(argv)
    if a.list_faces:
        print(json.dumps(list_faces(a.source), indent=1))
        return 0
    summary = animate(a.checkpoint, a.source, a.driving, a.output, a.sr_checkpoint, a.motion, a.paste_back,
                      a.batch_size, a.device, a.identity_backend, a.overwrite, progress=not a.quiet, smooth=a.smooth,
                      motion_parts=a.motion_parts, expression_scale=a.expression_scale, eyes=a.eyes, lips=a.lips,
                      lip_scale=a.lip_scale, face=a.face, video_to_video=a.video_to_video,
                      colour_match=a.colour_match, runtime=a.runtime, onnx=a.onnx,
                      precision=a.precision)
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
