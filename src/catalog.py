"""The models a user can pick (the web app's model picker): every finished generator and SR checkpoint under an
outputs folder, each with its stage, preset and resolution.

Two kinds of records say a checkpoint is finished: a run's lineage record (stages.json, src/lineage.py) for the
training stages, and a personalize report (OUT.report.json beside OUT.ckpt, written before the checkpoint) for
personalized ones. A checkpoint that neither names (a partial one, a copy) is not offered.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from src.checkpoints import read_checkpoint, section
from src.errors import UserError
from src.lineage import RECORD, finished_stages

GENERATOR_STAGES = ("refine", "meta", "personalize")  # a warp-stage checkpoint is only the warper
# the default pick: the newest personalized model, else the newest meta one, else any generator
PREFERENCE = ("personalize", "meta", "refine")


@dataclass(frozen=True)
class Model:
    path: Path
    kind: str          # generator | sr
    stage: str         # refine, meta, personalize (generators) or sr
    preset: str        # the model preset it was trained at (tiny, demo, full), or ? when the config does not say
    resolution: str    # e.g. 128 px, or 128 -> 512 px for SR
    finished: float    # seconds since the epoch

    @property
    def label(self) -> str:
        return f"{self.stage} · {self.preset} · {self.resolution} · {self.path}"


def describe(path: Path, stage: str, finished: float) -> Model | None:
    """The Model of a checkpoint file, or None when it is not a generator or SR checkpoint that loads."""
    try:
        cfg = section(section(read_checkpoint(path, mmap=True), "hyper_parameters"), "cfg")
    except UserError:
        return None
    model = section(cfg, "model")
    preset = str(section(cfg, "presets").get("model", "?"))
    if stage == "sr":
        sr = section(model, "sr")
        if not sr:
            return None
        out = sr.get("out_size", "?")
        scale = sr.get("scale")
        size = f"{out // scale} -> {out} px" if isinstance(out, int) and isinstance(scale, int) else f"{out} px"
        return Model(path, "sr", "sr", preset, size, finished)
    if "resolution" not in model:
        return None
    return Model(path, "generator", stage, preset, f"{model['resolution']} px", finished)


def find_models(root: Path) -> list[Model]:
    """Every finished checkpoint under `root` (newest first); an absent root has none."""
    root = Path(root)
    if not root.is_dir():
        return []
    seen: dict[Path, Model] = {}
    for stage, entry, _ in finished_stages(root, f"**/{RECORD}"):
        if stage in GENERATOR_STAGES or stage == "sr":
            path = Path(entry["checkpoint"]).resolve()
            model = describe(path, stage, float(entry.get("finished", path.stat().st_mtime)))
            if model is not None:
                seen.setdefault(path, model)
    for report in root.glob("**/*.report.json"):
        ckpt = report.with_name(report.name[: -len(".report.json")] + ".ckpt")
        try:
            json.loads(report.read_text())
        except (OSError, ValueError):
            continue
        if ckpt.is_file() and ckpt.resolve() not in seen:
            model = describe(ckpt.resolve(), "personalize", ckpt.stat().st_mtime)
            if model is not None:
                seen[ckpt.resolve()] = model
    return sorted(seen.values(), key=lambda m: -m.finished)


def default_generator(models: list[Model]) -> Model | None:
    """The generator the picker starts on: the newest of the most preferred stage present."""
    for stage in PREFERENCE:
        picks = [m for m in models if m.kind == "generator" and m.stage == stage]
        if picks:
            return max(picks, key=lambda m: m.finished)
    return None
