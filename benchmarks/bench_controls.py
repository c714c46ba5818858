"""The animate controls measured where a viewer sees them: MediaPipe run again on the generated frames.

An untrained `demo`-size generator (128 px, seed 0) on the mesh prior, so the face moves by the mesh alone;
a trained checkpoint would render mouths and lids better, and this is the floor. The source is a fixture
portrait. The drivers are two windows of the first `test` fixture clip. Per control:
- for --eyes, 40 frames around its blink: the eye opening (lid gap over the inter-ocular distance) at the blink
  and its median;
- for --expression-scale and --lip-scale, the 30 frames up to 10 past its widest mouth opening (it starts
  closed: relative motion scales the change since the driver's first frame, so the window must open the mouth):
  the 90th percentile of the mouth opening.
It also draws docs/controls_grid.jpg, the README's picture: rows of output frames for --expression-scale 0, 1,
2 (the lips window's first frame and its widest four) and --eyes driving, source, closed (the blink window's
first frame, three before the blink, and the blink).
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from benchmarks.common import FIXTURES, save, untrained_generator


def main() -> None:
    import cv2

    from src.faces.landmarks import FaceMesh
    from src.faces.motion import eye_opening, mouth_opening
    from src.inference import animate, prepare_driving
    from src.video_io import read_frames, write_video

    tmp = Path(tempfile.mkdtemp(prefix="bench_controls_"))
    ckpt = untrained_generator(tmp / "demo.ckpt", ["model=demo"])
    clip = sorted((FIXTURES / "voxceleb2_mini" / "test" / "mp4").glob("*/*/*.mp4"))[0]
    landmarks = prepare_driving(clip, 256).landmarks
    blink = int(np.argmin(eye_opening(landmarks)))
    lo = max(0, blink - 20)
    lips_lo = max(0, int(np.argmax(mouth_opening(landmarks))) - 20)
    frames = read_frames(clip)
    drivers = {"eyes": write_video(tmp / "blink.mp4", frames[lo:lo + 40], fps=25),
               "mouth": write_video(tmp / "lips.mp4", frames[lips_lo:lips_lo + 30], fps=25)}
    portrait = FIXTURES / "portraits" / "portrait_a.jpg"

    drawn = {}

    def measured(driver: str, **control) -> np.ndarray:
        out = tmp / "out.mp4"
        animate(ckpt, portrait, drivers[driver], out, overwrite=True, progress=False, identity_backend="dlib",
                **control)
        frames = read_frames(out)
        drawn[tuple(control.items())] = frames
        with FaceMesh(static=True) as mesh:
            found = [mesh(cv2.resize(f, (256, 256), interpolation=cv2.INTER_CUBIC)) for f in frames]
        return np.stack([f[0] for f in found if f])

    result = {"command": "python -m benchmarks.bench_controls", "eyes_frames": 40, "blink_frame": blink - lo,
              "mouth_frames": 30, "mouth_window_start": lips_lo}
    for eyes in ("driving", "source", "open", "closed"):
        o = eye_opening(measured("eyes", eyes=eyes))
        result[f"eyes_{eyes}"] = {"at_blink": round(float(o[blink - lo]), 4), "median": round(float(np.median(o)), 4)}
    for key, values in (("expression_scale", (0.0, 1.0, 2.0)), ("lip_scale", (0.0, 0.5, 1.0, 1.5, 2.0))):
        result[f"mouth_p90_by_{key}"] = {str(v): round(float(np.percentile(mouth_opening(measured("mouth", **{key: v})),
                                                                           90)), 4) for v in values}
    save("controls", result)
    widest = np.argsort(mouth_opening(prepare_driving(drivers["mouth"], 256).landmarks))[-4:].tolist()
    draw_grid(drawn, {"expression_scale": sorted([0, *widest]),
                      "eyes": [0, blink - lo - 10, blink - lo - 5, blink - lo - 2, blink - lo]},
              Path("docs/controls_grid.jpg"))


def draw_grid(drawn: dict, columns: dict[str, list[int]], path: Path) -> None:
    """Rows of output frames per control (the frames `columns` names for that control), labelled, as a JPEG."""
    import cv2

    rows = [(("expression_scale", 0.0),), (("expression_scale", 1.0),), (("expression_scale", 2.0),),
            (("eyes", "driving"),), (("eyes", "source"),), (("eyes", "closed"),)]
    lines = []
    for row in rows:
        frames = drawn[row]
        label = np.full((frames.shape[1], 150, 3), 255, np.uint8)
        text = f"--{row[0][0].replace('_', '-')}"
        cv2.putText(label, text, (4, 50), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
        cv2.putText(label, str(row[0][1]), (4, 72), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
        lines.append(np.concatenate([label, *(frames[c] for c in columns[row[0][0]])], axis=1))
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.concatenate(lines, axis=0)[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 85])
    print(f"wrote {path} (frames {columns})")


if __name__ == "__main__":
    main()
