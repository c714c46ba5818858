"""`make demo`: the whole pipeline on the embedded sample dataset, at the `demo` preset, on a CPU.

    python -m src.demo [--sample data/sample] [--output outputs/demo]

Each step skips work that is already done, so an interrupted demo resumes where it stopped.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from src.arguments import Parser
from src.errors import cli_entry
from src.files import atomic_write_json

# every stage validates at the end of its epochs; the pre-training check is time the demo lacks (SR's alone: 15 s)
NO_SANITY = ["trainer.num_sanity_val_steps=0"]


def _record(out: Path, stage: str) -> dict:
    """The stages of the demo's run of `stage` (its stages.json)."""
    from src.lineage import read_record

    return read_record(out / stage / "demo")["stages"]


def step_sample(sample: Path, out: Path) -> dict:
    from src.sample_dataset import Settings, build

    meta = build(sample, Settings())
    return {"sample": str(sample), "identities": meta["num_identities"], "clips": meta["num_clips"],
            "frames": meta["num_frames"]}


def step_preprocess(sample: Path, out: Path) -> dict:
    from src.preprocessing import preprocess

    shards = Path("data/sample_shards")  # the default data.root of every stage (lightning_configs/data/sample.yaml)
    manifest = preprocess(sample, shards, workers=2)
    return {"shards": str(shards), "clips": {k: v["clips"] for k, v in manifest["splits"].items()},
            "clips_with_512": {k: v["clips_with_sr"] for k, v in manifest["splits"].items()},
            "rejected": manifest["num_rejects"], "identity_backend": manifest["embedding"]["backend"]}


def step_stage1(sample: Path, out: Path) -> dict:
    """Stage 1 (warp, then refine) at the demo preset: a few epochs, enough to run every part."""
    from src.training import train

    args = [ "model=demo", "data.root=data/sample_shards", f"output_root={out}", "run_name=demo",
            "stage1.warp_epochs=2", "stage1.refine_epochs=2", "trainer.log_every_n_steps=5", *NO_SANITY]
    train("stage1", args)
    record = _record(out, "stage1")
    return {"run": str(out / "stage1" / "demo"), "checkpoints": {k: v["checkpoint"] for k, v in record.items()}}


def step_meta(sample: Path, out: Path) -> dict:
    """Meta-learning (reptile) warm-started from the demo's stage-1 generator: a few outer steps."""
    from src.training import train

    record = _record(out, "stage1")
    args = [ "model=demo", "data.root=data/sample_shards", f"output_root={out}", "run_name=demo",
            f"meta.init={record['refine']['checkpoint']}", "trainer.max_epochs=3", "trainer.log_every_n_steps=1",
            *NO_SANITY,
            "optim.lr=1e-4"]
    train("meta", args)
    meta = _record(out, "meta")["meta"]
    return {"run": str(out / "meta" / "demo"), "checkpoint": meta["checkpoint"], "init": meta["init"]}


def step_personalize(sample: Path, out: Path) -> dict:
    """Personalize the meta checkpoint to one held-out (test split) sample identity from its video."""
    from src.personalization import PersonalizeOptions, personalize

    video = sorted((sample / "test" / "mp4").glob("*/*/*.mp4"))[0]
    person = video.parent.parent.name
    target = out / "personalized" / f"{person}.ckpt"
    report = target.with_suffix(".report.json")
    if not report.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        meta = _record(out, "meta")["meta"]["checkpoint"]
        personalize(PersonalizeOptions(meta, [video], target, steps=30, eval_every=10, max_eval_frames=16,
                                       overwrite=True))
    r = json.loads(report.read_text())
    return {"identity": person, "video": str(video), "checkpoint": str(target), "steps": r["steps"],
            "heldout_psnr": [round(r["heldout"]["before"]["psnr"], 2), round(r["heldout"]["after"]["psnr"], 2)]}


def step_sr(sample: Path, out: Path) -> dict:
    """Temporal SR (128 -> 512, x4, at the demo preset) on LQ frames rendered by the demo's meta checkpoint
    (the first 8 frames of every clip, two windows of each per epoch, one epoch: a CPU budget)."""
    from src.training import train

    meta = _record(out, "meta")["meta"]["checkpoint"]
    args = [ "model=demo", "data.root=data/sample_shards", f"output_root={out}", "run_name=demo",
            f"sr.init_base={meta}", "sr.lq_max_frames=8", "data.samples_per_clip=2", "trainer.max_epochs=1",
            "sr.window=4",
            "trainer.log_every_n_steps=5", "optim.lr=5e-4", "data.batch_size=2", *NO_SANITY]
    train("sr", args)
    header, *rows = (out / "sr" / "demo" / "csv" / "metrics.csv").read_text().splitlines()
    val = [dict(zip(header.split(","), r.split(","))) for r in rows]
    val = [r for r in val if r.get("val/psnr")]
    last = val[-1] if val else {}
    return {"run": str(out / "sr" / "demo"), "checkpoint": str(out / "sr" / "demo" / "checkpoints" / "last.ckpt"),
            "val_psnr": last.get("val/psnr"), "val_psnr_bicubic": last.get("val/psnr_bicubic")}


def step_animate(sample: Path, out: Path) -> dict:
    """The personalized person (held out from training) driven by another identity's clip, through SR."""
    from src.inference import animate
    from src.video_io import probe

    person = json.loads((out / "summary.partial.json").read_text())["personalize"]
    videos = sorted((sample / "test" / "mp4" / person["identity"]).glob("*/*.mp4"))
    source = next((v for v in videos if str(v) != person["video"]), videos[0])  # a picture the model was not tuned on
    test_videos = sorted((sample / "test" / "mp4").glob("*/*/*.mp4"))
    driving = next(v for v in test_videos if v.parent.parent.name != person["identity"])
    target = out / "animation.mp4"
    if not target.exists():
        animate(Path(person["checkpoint"]), source, driving, target,
                sr_checkpoint=out / "sr" / "demo" / "checkpoints" / "last.ckpt", motion="relative")
    info = probe(target)
    return {"output": str(target), "source": str(source), "driving": str(driving), "checkpoint": person["checkpoint"],
            "frames": info.frames, "size": f"{info.width}x{info.height}", "audio": info.has_audio}


def step_motion(sample: Path, out: Path) -> dict:
    """Whether the animation moves with its driving clip: its frame-to-frame change against the driver's, and
    MediaPipe's mouth opening of both, correlated (src/metrics/motion.py)."""
    from src.metrics.motion import follows_driver

    animate = json.loads((out / "summary.partial.json").read_text())["animate"]
    return follows_driver(Path(animate["output"]), Path(animate["driving"]))


def step_evaluate(sample: Path, out: Path) -> dict:
    """The meta checkpoint on the held-out test identities, same-identity, next to the two baselines."""
    from src.evaluation import evaluate, write_report

    meta = _record(out, "meta")["meta"]["checkpoint"]
    folder = out / "evaluation"
    if not (folder / "metrics.json").exists():
        write_report(evaluate(Path(meta), Path("data/sample_shards"), "test", max_frames=8), folder)
    (out / "evaluation.md").write_text((folder / "metrics.md").read_text())
    metrics = json.loads((folder / "metrics.json").read_text())["metrics"]
    return {"table": str(out / "evaluation.md"), "psnr": {name: m.get("psnr") for name, m in metrics.items()}}


# The pipeline, in order.
STEPS = [("sample", step_sample), ("preprocess", step_preprocess), ("stage1", step_stage1), ("meta", step_meta),
         ("sr", step_sr), ("personalize", step_personalize), ("animate", step_animate), ("motion", step_motion),
         ("evaluate", step_evaluate)]


@cli_entry
def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="python -m src.demo", description=__doc__,
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sample", type=Path, default=Path("data/sample"), help="where the sample dataset is built")
    p.add_argument("--output", type=Path, default=Path("outputs/demo"), help="where the demo writes its results")
    a = p.parse_args(argv)
    a.output.mkdir(parents=True, exist_ok=True)
    summary = {}
    for name, step in STEPS:
        t0 = time.time()
        print(f"== demo step: {name}")
        summary[name] = {**step(a.sample, a.output), "seconds": round(time.time() - t0, 1)}
        atomic_write_json(a.output / "summary.partial.json", summary, indent=2)  # later steps read it
    (a.output / "summary.partial.json").replace(a.output / "summary.json")  # finished: the partial one is the whole
    print(f"demo finished: {', '.join(summary)}; summary in {a.output / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
