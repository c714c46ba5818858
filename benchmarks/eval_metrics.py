"""The field's metrics (python -m src.evaluate) for a generator checkpoint next to the two classical
baselines, same-identity and cross-identity, as one BENCHMARKS.md table.

    python -m benchmarks.eval_metrics --checkpoint outputs/stage1/evidence/refine/checkpoints/last.ckpt \
        --data outputs/bench/shards_fixtures [--max-frames 16]

The full reports (JSON + Markdown) stay in outputs/bench/<name>/{same,cross}-identity/ (name: evaluation).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from benchmarks.common import RESULTS, save


def main(argv=None) -> None:
    from src.evaluation import evaluate, write_report

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--max-frames", type=int, default=16)
    p.add_argument("--name", default="evaluation", help="the table's name (a repetition's own, say)")
    a = p.parse_args(argv)
    result = {"command": "python -m benchmarks.eval_metrics " + " ".join(argv if argv is not None else sys.argv[1:])}
    t0 = time.time()
    for mode in ("same-identity", "cross-identity"):
        out = RESULTS / a.name / mode
        r = evaluate(Path(a.checkpoint), Path(a.data), a.split, mode, a.max_frames, progress=False)
        write_report(r, out)
        result[f"{mode} pairs"] = f"{r['pairs']} pairs from {r['clips']} clips at {r['resolution']} px"
        for method, row in r["metrics"].items():
            if row:  # real_driving has no row across identities (no real frames of the source person)
                result[f"{mode}: {method}"] = row
        for person, table in r.get("per_identity", {}).items():  # PSNR / SSIM / AKD of each method, per person
            result[f"{mode}: {person}"] = {m: "/".join(str(row.get(k, "-")) for k in ("psnr", "ssim", "akd"))
                                           for m, row in table.items() if m != "real_driving"}
        if r["unavailable"]:
            result[f"{mode}: unavailable"] = r["unavailable"]
    result["eval_s"] = round(time.time() - t0, 1)
    save(a.name, result)


if __name__ == "__main__":
    main()
