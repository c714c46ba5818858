"""Paste-back on a real portrait, before and after the face mask: docs/paste_back.jpg and the seam numbers.

    python -m benchmarks.bench_paste

An untrained `demo`-size generator (128 px, mesh prior) animates a fixture portrait with 40 frames of a fixture
clip; its frame with the widest mouth is pasted into the portrait three ways:
- `square`: the crop square with a feathered border (what --paste-back did before the face mask);
- `mask`: the feathered face mask, colours as generated (--no-colour-match);
- `mask_colour`: the face mask with the colour match (the default);
- `drifted_*`: the same two with the generated face made darker and warmer (a generator's colour drift, which
  this untrained one does not have), to show what the colour match is for.
Per way: the share of the crop square's pixels that change (the old square repaints hair, neck and background
with the generator's blurrier copy), the pixels outside the blend that differ from the picture (0 for every
way), and the mean colour difference (CIE Lab, over the fully blended face) between the output and the picture.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from benchmarks.common import FIXTURES, save, untrained_generator


def square_alpha(s: int, feather: float = 0.08) -> np.ndarray:
    """The old blend: a ramp over `feather` of the crop side at each border of the crop square."""
    ramp = np.clip(np.minimum(np.arange(s), np.arange(s)[::-1]) / max(1.0, feather * s), 0, 1)
    return np.minimum(ramp[:, None], ramp[None, :]).astype(np.float32)


def main() -> None:
    import cv2
    import torch

    from src.checkpoints import load_generator
    from src.faces.identity import make_embedder
    from src.faces.motion import mouth_opening, transfer_motion
    from src.faces.paste import colour_map, face_mask, paste_back
    from src.faces.tracking import crop_frame
    from src.inference import generate, prepare_driving, prepare_source

    tmp = Path(tempfile.mkdtemp(prefix="bench_paste_"))
    ckpt = untrained_generator(tmp / "demo.ckpt", ["model=demo"])
    generator, _, _ = load_generator(ckpt)
    portrait = FIXTURES / "portraits" / "portrait_a.jpg"
    clip = sorted((FIXTURES / "voxceleb2_mini" / "test" / "mp4").glob("*/*/*.mp4"))[0]
    source = prepare_source(portrait, 128, make_embedder("dlib"))
    driven = transfer_motion(source.landmarks, prepare_driving(clip, 128).landmarks[:40])
    faces = generate(generator, source, driven, torch.device("cpu"), progress=False)
    t = int(np.argmax(mouth_opening(driven)))
    mask = face_mask([source.landmarks, driven[t]], 128)
    colours = colour_map(faces[0], crop_frame(source.picture, source.box, 128), mask)
    picture = source.picture
    cx, cy, side = source.box
    s = int(round(side))
    x0, y0 = int(round(cx - side / 2)), int(round(cy - side / 2))

    def full_alpha(alpha: np.ndarray) -> np.ndarray:  # the blend's alpha over the whole picture
        out = np.zeros(picture.shape[:2], np.float32)
        a = cv2.resize(alpha, (s, s), interpolation=cv2.INTER_LINEAR)
        ys, xs = slice(max(0, y0), min(picture.shape[0], y0 + s)), slice(max(0, x0), min(picture.shape[1], x0 + s))
        out[ys, xs] = a[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0]
        return out

    # a generator's colour drift, emulated: every generated frame 15% darker and warmer
    drift = lambda f: np.clip(f * np.array([0.95, 0.82, 0.75]), 0, 255).astype(np.uint8)  # noqa: E731
    drift_colours = colour_map(drift(faces[0]), crop_frame(source.picture, source.box, 128), mask)
    ways = {"square": (square_alpha(128), None, faces[t]), "mask": (mask, None, faces[t]),
            "mask_colour": (mask, colours, faces[t]), "drifted_mask": (mask, None, drift(faces[t])),
            "drifted_mask_colour": (mask, drift_colours, drift(faces[t]))}
    result, crops = {"command": "python -m benchmarks.bench_paste", "frame": t}, []
    for name, (alpha, cmap, face) in ways.items():
        out = paste_back(picture, source.box, face, alpha, cmap)
        big = full_alpha(alpha)
        inside = full_alpha(mask) > 0.99
        lab = [cv2.cvtColor(x, cv2.COLOR_RGB2LAB).astype(np.float32)[inside].mean(0) for x in (out, picture)]
        result[name] = {"crop_square_changed": round(float((big[max(0, y0):y0 + s, max(0, x0):x0 + s] > 0).mean()), 3),
                        "changed_outside": int((out[big == 0] != picture[big == 0]).any(-1).sum()),
                        "face_lab_delta": round(float(np.linalg.norm(lab[0] - lab[1])), 2)}
        crops.append(crop_frame(out, source.box, 320))
    crops.insert(0, crop_frame(picture, source.box, 320))
    labels = ("source picture", "before: crop square", "face mask", "face mask + colour match",
              "drifted face, mask", "drifted, + colour match")
    for crop, label in zip(crops, labels):
        cv2.putText(crop, label, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    Path("docs").mkdir(exist_ok=True)
    cv2.imwrite("docs/paste_back.jpg", np.concatenate(crops, axis=1)[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 85])
    save("paste_back", result)


if __name__ == "__main__":
    main()
