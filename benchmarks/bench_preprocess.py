"""Preprocessing throughput on the real fixture clips: frames/s per core, with and without the identity
embedding (per-clip stage timings are measured inside single-threaded worker processes)."""
from __future__ import annotations

import shutil
import sys
import time

from benchmarks.common import FIXTURES, RESULTS, save
from src.preprocessing import preprocess


def main() -> None:
    out = RESULTS / "shards_fixtures"
    shutil.rmtree(out, ignore_errors=True)
    workers = 2
    t0 = time.time()
    manifest = preprocess(FIXTURES / "voxceleb2_mini", out, workers=workers, quiet=True)
    wall = time.time() - t0
    clips = manifest["clips"]
    frames = sum(c["decoded_frames"] for c in clips)
    stage = {k: sum(c["timing"][k] for c in clips) for k in clips[0]["timing"]}
    busy = sum(stage.values())
    save("preprocess", {
        "command": "python -m benchmarks.bench_preprocess",
        "clips": len(clips), "frames": frames, "workers": workers, "wall_s": round(wall, 1),
        "frames_per_s_wall": round(frames / wall, 1),
        "frames_per_s_per_core": round(frames / busy, 1),
        "frames_per_s_per_core_without_identity": round(frames / (busy - stage["identity"]), 1),
        "stage_ms_per_frame": {k: round(1000 * v / frames, 2) for k, v in stage.items()},
        "identity_backend": manifest["embedding"]["backend"],
    })


if __name__ == "__main__":
    sys.exit(main())
