"""The controls of animation (src.animate's flags, the web app's widgets): their ranges, and the combinations
that cannot mean anything, refused before any work by one check that every caller runs."""
from __future__ import annotations

from src.errors import UserError
from src.faces.motion import EYES_CHOICES, LIPS_CHOICES, MODES, PARTS

SCALE_RANGE = (0, 3)       # --expression-scale and --lip-scale: 0 holds the source, 1 as driven, 3 at most
SMOOTH_RANGE = (3, 101)    # --smooth: odd Savitzky-Golay windows, in frames
RUNTIMES = ("torch", "onnx")  # --runtime: where the networks run (src/runtime.py)
PRECISIONS = ("auto", "fp32", "bf16")  # --precision of the torch runtime (src.inference.autocast_dtype)


def check_controls(motion: str = "relative", motion_parts: str = "both", expression_scale: float = 1.0,
                   eyes: str = "driving", lips: str = "driving", lip_scale: float = 1.0, face: str = "largest",
                   video_to_video: bool = False, paste: bool = False, colour_match: bool = True,
                   smooth: int | None = None, list_faces: bool = False, runtime: str = "torch",
                   onnx=None, precision: str = "auto") -> None:
    """A UserError for a control out of its range or a combination that cannot mean anything; the command line
    runs it when it parses its arguments and the web app before it starts a job, so both refuse alike."""
    for name, value, choices in (("--motion", motion, MODES), ("--motion-parts", motion_parts, PARTS),
                                 ("--eyes", eyes, EYES_CHOICES), ("--lips", lips, LIPS_CHOICES),
                                 ("--runtime", runtime, RUNTIMES), ("--precision", precision, PRECISIONS)):
        if value not in choices:
            raise UserError(f"{name} {value}: not one of {', '.join(choices)}")
    for name, value in (("--expression-scale", expression_scale), ("--lip-scale", lip_scale)):
        if not SCALE_RANGE[0] <= value <= SCALE_RANGE[1]:
            raise UserError(f"{name} {value} is out of range [{SCALE_RANGE[0]:g}, {SCALE_RANGE[1]:g}]")
    if smooth is not None and not (SMOOTH_RANGE[0] <= smooth <= SMOOTH_RANGE[1] and smooth % 2 == 1):
        raise UserError(f"--smooth {smooth}: the window must be an odd number of frames in "
                        f"[{SMOOTH_RANGE[0]}, {SMOOTH_RANGE[1]}]")
    if onnx is not None and runtime != "onnx":
        raise UserError("--onnx DIR holds graphs for --runtime onnx; add --runtime onnx")
    if precision == "bf16" and runtime == "onnx":
        raise UserError("--precision bf16 is for --runtime torch: the ONNX graphs run in fp32")
    if not (face in ("largest", "all") or (str(face).isdigit() and int(face) >= 1)):
        raise UserError(f"--face {face}: not largest, all or a face number from 1 (left to right)")
    if video_to_video and face != "largest":
        raise UserError("--video-to-video follows the source video's main face: --face does not apply")
    if video_to_video and list_faces:
        raise UserError("--list-faces lists the faces of a picture; it does not go with --video-to-video")
    if video_to_video and motion != "relative":
        raise UserError("--video-to-video keeps the source video's own head motion: --motion absolute does not apply")
    if video_to_video and motion_parts != "both":
        raise UserError("--video-to-video takes the driver's expression onto the source video's own pose: "
                        "--motion-parts does not apply")
    if not colour_match and not (paste or face == "all"):
        raise UserError("--no-colour-match is about pasting back: add --paste-back")
    if motion_parts == "pose" and (expression_scale != 1.0 or eyes != "driving" or lips != "driving"
                                   or lip_scale != 1.0):
        raise UserError("--motion-parts pose takes no expression: --expression-scale, --eyes, --lips and "
                        "--lip-scale need the expression (both or expression)")
    if lips == "source" and lip_scale != 1.0:
        raise UserError("--lip-scale scales the driver's mouth motion; with --lips source there is none")
