"""Does an animation move with its driving clip? The two checks issue 18 asks of `make demo`'s animation.mp4
(src/metrics/motion.py: the frame-to-frame change against the driver's, and MediaPipe's mouth opening of both,
correlated).

    python -m benchmarks.eval_motion [--output outputs/demo/animation.mp4 --driving CLIP.mp4]

Without arguments it reads both paths from outputs/demo/summary.json. Goals: a frame-change ratio of at least 0.5
and a mouth correlation above 0.6. The result is saved as outputs/bench/demo_motion.json.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from benchmarks.common import save


def main(argv: list[str] | None = None) -> None:
    from src.metrics.motion import follows_driver

    p = argparse.ArgumentParser(prog="python -m benchmarks.eval_motion", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", type=Path, help="the animation (default: the demo's)")
    p.add_argument("--driving", type=Path, help="its driving clip (default: the demo's)")
    p.add_argument("--summary", type=Path, default=Path("outputs/demo/summary.json"))
    a = p.parse_args(argv)
    if a.output is None or a.driving is None:
        animate = json.loads(a.summary.read_text())["animate"]
        a.output, a.driving = a.output or Path(animate["output"]), a.driving or Path(animate["driving"])
    save("demo_motion", {"command": "python -m benchmarks.eval_motion", "output": str(a.output),
                         "driving": str(a.driving), **follows_driver(a.output, a.driving)})


if __name__ == "__main__":
    sys.exit(main())
