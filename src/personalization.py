"""Personalization: fine-tuning a trained generator to one person from a short video (`python -m src.personalize`
is its command line; its --help says what is done and written)."""
from __future__ import annotations

import json
import math
import shutil
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from data_modules.shards import HELDOUT_FRACTION
from src.errors import UserError
from src.files import atomic_write_json, read_json
from src.images import to_uint8
from src.paths import check_output, require_file


@dataclass
class PersonalizeOptions:
    """What `personalize` does; the command line's defaults are these."""
    checkpoint: Path
    videos: list[Path]
    output: Path
    steps: int = 300
    time_budget: float | None = None
    device: str = "auto"
    batch_size: int = 4
    lr: float = 2e-4
    learned_lr: bool = True
    heldout_fraction: float = HELDOUT_FRACTION
    source_frame: str = "typical"
    eval_every: int = 25
    patience: int = 100
    max_eval_frames: int = 32
    identity_backend: str = "auto"
    perceptual: str | None = None
    overwrite: bool = False
    seed: int = 0

    def __post_init__(self):
        self.checkpoint, self.output = Path(self.checkpoint), Path(self.output)
        self.videos = [Path(v) for v in self.videos]
        if self.steps < 1 or self.eval_every < 1 or self.batch_size < 1 or self.patience < 1:
            raise UserError("--steps, --eval-every, --batch-size and --patience must be positive")
        if self.time_budget is not None and not self.time_budget > 0:
            raise UserError(f"--time-budget must be positive seconds, not {self.time_budget}")
        if not (0 < self.lr <= 1 and 0 < self.heldout_fraction < 1 and self.max_eval_frames >= 1):
            raise UserError("--lr must be in (0, 1], --heldout-fraction in (0, 1), --max-eval-frames >= 1")


def output_paths(out: Path) -> dict[str, Path]:
    stem = out.with_suffix("")
    return {"checkpoint": out, "report": Path(f"{stem}.report.json"), "preview": Path(f"{stem}.preview.mp4"),
            "work": Path(f"{stem}.work")}


def preprocess_videos(videos: list[Path], work: Path, backend: str) -> Path:
    """The person's videos through the project's preprocessing into work/shards (resumable)."""
    import hashlib

    from src.preprocessing import Options, preprocess
    from src.video_io import damage_warning

    inputs = work / "videos"
    inputs.mkdir(parents=True, exist_ok=True)
    wanted = {}
    for video in videos:
        tag = hashlib.sha1(str(video.resolve()).encode()).hexdigest()[:10]  # one name per source file
        wanted[f"{video.stem}-{tag}{video.suffix.lower()}"] = video.resolve()
    for link in inputs.iterdir():  # videos of an earlier call that are not part of this one
        if link.name not in wanted:
            link.unlink()
    for name, target in wanted.items():
        if not (inputs / name).is_symlink():
            (inputs / name).symlink_to(target)
    shards = work / "shards"
    # a damaged video is used as far as it decodes (preprocessing records it), with a warning below
    options = Options(identity_backend=backend, keep_damaged=True)
    manifest = preprocess(inputs, shards, ("person",), options, workers=1, quiet=True)
    if not manifest or not sum(s["clips"] for s in manifest["splits"].values()):
        reasons = [json.loads(line)["reason"] for line in (shards / "rejects.jsonl").read_text().splitlines() if line]
        why = "; ".join(reasons) or "all rejected"
        raise UserError(f"no usable face video among {', '.join(map(str, videos))}: {why}")
    for clip in manifest["clips"]:
        if clip.get("truncated"):
            video = wanted.get(Path(clip["source"]).name, clip["source"])  # the user's file, not its link
            print(damage_warning("personalize", video, clip["decoded_frames"], clip.get("declared_frames") or 0),
                  file=sys.stderr)
    return shards


@torch.no_grad()
def heldout_metrics(generator, dm, device, embedder=None, max_frames: int = 32, keep_frames: bool = False) -> dict:
    """Held-out loss, PSNR, SSIM (and identity similarity of output vs real frame) over up to max_frames."""
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    from src.modules.common import generator_inputs

    generator.eval()
    psnr, ssim, csim, frames, n = [], [], [], [], 0
    for batch in dm.val_dataloader():
        batch = dm.to_device(batch, device)
        out = generator(**generator_inputs(batch))["output"].clamp(0, 1)
        for i in range(len(out)):
            if n >= max_frames:
                break
            o, d = out[i : i + 1].float(), batch["driving"][i : i + 1]
            psnr.append(float(peak_signal_noise_ratio(o, d, data_range=1.0)))
            ssim.append(float(structural_similarity_index_measure(o, d, data_range=1.0)))
            if embedder is not None or keep_frames:
                o_np, d_np = to_uint8(o[0]), to_uint8(d[0])
                if embedder is not None:
                    lm = batch["driving_landmarks"][i].cpu().numpy()
                    e_o, e_d = embedder(o_np, lm), embedder(d_np, lm)
                    csim.append(float(e_o @ e_d / (np.linalg.norm(e_o) * np.linalg.norm(e_d) + 1e-8)))
                if keep_frames:
                    frames.append((d_np, o_np))
            n += 1
        if n >= max_frames:
            break
    generator.train()
    result = {"psnr": float(np.mean(psnr)), "ssim": float(np.mean(ssim)), "frames": n}
    result["identity_similarity"] = float(np.mean(csim)) if csim else None
    if keep_frames:
        result["_frames"] = frames
    return result


def heldout_loss(module, dm, device, max_batches: int | None = None) -> float:
    """Mean held-out reconstruction loss (the quantity early stopping and the benchmark curves use)."""
    module.eval()
    losses = []
    with torch.no_grad():
        for b, batch in enumerate(dm.val_dataloader()):
            if max_batches is not None and b >= max_batches:
                break
            batch = dm.to_device(batch, device)
            losses.append(float(module.model_step(batch)[0]))
    module.train()
    return float(np.mean(losses))


def personalize(a: PersonalizeOptions, callbacks: list | tuple = ()) -> dict:
    """Fine-tune a.checkpoint to the person of a.videos and write a.output (with its report and preview); the
    report. `callbacks`: more Lightning callbacks for the fine-tuning trainer (the web app's progress and cancel)."""
    import lightning as L
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    from data_modules.personal import PersonalVideoDataModule
    from src.checkpoints import (
        INNER_LR_SCALE,
        check_lr_scale,
        check_resumable,
        generator_checkpoint,
        learned_lr_scales,
        load_generator,
        read_checkpoint,
        save_checkpoint,
    )
    from src.faces.identity import make_embedder
    from src.inference import resolve_device
    from src.modules.personalize_module import PersonalizeModule

    # every input and output checked before any work (src/paths.py)
    paths = output_paths(a.output)
    require_file(a.checkpoint, "--checkpoint")
    for video in a.videos:
        require_file(video, "--video", kind="video")
    inputs = {"--checkpoint": a.checkpoint,
              **{"--video" + (f" #{i + 1}" if len(a.videos) > 1 else ""): v for i, v in enumerate(a.videos)}}
    existing = [str(p) for k, p in paths.items() if k != "work" and p.exists()]
    if existing and not a.overwrite:
        raise UserError(f"{', '.join(existing)} already {'exists' if len(existing) == 1 else 'exist'}: pass "
                        "--overwrite to replace, or another --output")
    check_output(a.output, inputs, suffix=".ckpt", kind="file")
    for key, path in paths.items():
        check_output(path, inputs, flag=f"--output ({key} {path.name})", kind="folder" if key == "work" else "file")
    device = resolve_device(a.device)
    generator, cfg, id_dim = load_generator(a.checkpoint)  # checked before any long work
    lr_scale = learned_lr_scales(a.checkpoint) if a.learned_lr else None
    check_lr_scale(generator, lr_scale)
    if a.perceptual:
        cfg["loss"]["perceptual"] = a.perceptual
    t0 = time.time()

    work = paths["work"]
    fresh = not work.exists()
    made = next((p for p in reversed(work.parents) if not p.exists()), work)  # the outermost folder made here
    a.output.parent.mkdir(parents=True, exist_ok=True)
    print(f"preprocessing {len(a.videos)} video(s) into {work / 'shards'} ...")
    try:
        shards = preprocess_videos(a.videos, work, a.identity_backend)
    except UserError:
        if fresh:  # nothing worth keeping: leave no trace of a run that could not start
            shutil.rmtree(made, ignore_errors=True)
        raise
    ckpt_dir = work / "checkpoints"
    data_stamp = read_json(shards / "manifest.json")["inputs_digest"]
    if (ckpt_dir / "data.json").exists() and read_json(ckpt_dir / "data.json").get("inputs_digest") != data_stamp:
        shutil.rmtree(ckpt_dir)  # the resume state of fine-tuning on other videos (or their earlier content)
    if not (ckpt_dir / "data.json").exists():
        atomic_write_json(ckpt_dir / "data.json", {"inputs_digest": data_stamp})
    last = ckpt_dir / "last.ckpt"
    # the steps an interrupted run on these videos did; its checkpoint is checked now, not after an evaluation
    done = check_resumable(last) if last.exists() else 0
    dm = PersonalVideoDataModule(str(shards), resolution=cfg["model"]["resolution"], batch_size=a.batch_size,
                                 heldout_fraction=a.heldout_fraction, samples_per_epoch=a.steps * a.batch_size,
                                 id_dim=id_dim, seed=a.seed, source_frame=a.source_frame,
                                 first_sample=done * a.batch_size)  # a resumed run goes on with unseen batches
    dm.setup()
    t_pre = time.time() - t0
    embedder = make_embedder(dm.manifest["embedding"]["backend"].split("-")[0])  # the backend of the shards
    L.seed_everything(a.seed, verbose=False)
    generator.to(device)
    before = heldout_metrics(generator, dm, device, embedder, a.max_eval_frames, keep_frames=True)

    module = PersonalizeModule(cfg, id_dim, a.lr, generator, lr_scale)
    best = ModelCheckpoint(dirpath=str(ckpt_dir), filename="best", monitor="val/loss", mode="min", save_top_k=1,
                           save_last=True)
    val_batches = max(1, math.ceil(a.max_eval_frames / a.batch_size))
    trainer = L.Trainer(accelerator="gpu" if device.type == "cuda" else "cpu", devices=1, max_steps=a.steps,
                        max_time={"seconds": a.time_budget} if a.time_budget else None,
                        val_check_interval=min(a.eval_every, a.steps), check_val_every_n_epoch=None,
                        limit_val_batches=val_batches, num_sanity_val_steps=0, logger=CSVLogger(str(work), name="logs"),
                        log_every_n_steps=min(a.eval_every, a.steps),  # the training loss beside each held-out one
                        callbacks=[best, EarlyStopping("val/loss", patience=max(1, a.patience // a.eval_every),
                                                       check_finite=True), *callbacks],
                        enable_model_summary=False, deterministic=False)
    t1 = time.time()
    with warnings.catch_warnings():  # the data module goes on where the checkpoint stopped (first_sample above)
        warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch")
        warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")  # ours: data.json
        trainer.fit(module, datamodule=dm, ckpt_path=str(last) if last.exists() else None, weights_only=True)
    t_train = time.time() - t1
    if best.best_model_path:  # the weights with the lowest held-out loss
        module.load_state_dict(read_checkpoint(best.best_model_path)["state_dict"])
    generator = module.generator.to(device)
    after = heldout_metrics(generator, dm, device, embedder, a.max_eval_frames, keep_frames=True)

    # outputs: preview, report, then the checkpoint, each written under a temporary name first
    from src.video_io import write_video

    frames = [np.concatenate([d, b, o], axis=1) for (d, b), (_, o) in zip(before.pop("_frames"), after.pop("_frames"))]
    if frames:
        write_video(paths["preview"], frames, fps=10.0)
    report = {
        "checkpoint": str(a.checkpoint), "videos": [str(v) for v in a.videos], "device": str(device),
        "steps": int(trainer.global_step), "stopped_by": _stop_reason(trainer, a),
        "best_heldout_loss": float(best.best_model_score) if best.best_model_score is not None else None,
        "heldout": {"before": before, "after": after}, "heldout_frames": sum(hi - lo for lo, hi in dm.val_ranges),
        "train_frames": sum(hi - lo for lo, hi in dm.train_ranges),
        "source_frames": {it["key"]: s for it, s in zip(dm.items, dm.sources)},
        "identity_backend": dm.manifest["embedding"]["backend"],
        "lr": a.lr, "learned_lr_scale": _spread(list(lr_scale.values())) if lr_scale is not None else None,
        "seconds": {"preprocess": round(t_pre, 1), "fine_tune": round(t_train, 1), "total": round(time.time() - t0, 1)},
    }
    atomic_write_json(paths["report"], report, indent=2)
    personalized = {"embedding": dm.embedding.astype(np.float32).tolist(), "steps": int(trainer.global_step),
                    "source_checkpoint": str(a.checkpoint)}
    # the learned rates travel on: personalizing this checkpoint again fine-tunes at them too
    rates = {INNER_LR_SCALE: lr_scale} if lr_scale is not None else {}
    save_checkpoint(generator_checkpoint(generator, cfg, id_dim, personalized=personalized, **rates),
                    paths["checkpoint"])
    shutil.rmtree(ckpt_dir, ignore_errors=True)  # finished: the resume state is no longer needed
    return report


def _spread(values: list[float]) -> dict:
    return {"min": round(min(values), 4), "median": round(float(np.median(values)), 4), "max": round(max(values), 4)}


def _stop_reason(trainer, a) -> str:
    if trainer.global_step >= a.steps:
        return "steps"
    if any(getattr(cb, "stopped_epoch", 0) for cb in trainer.callbacks if cb.__class__.__name__ == "EarlyStopping"):
        return "no held-out improvement"
    return "time budget" if a.time_budget else "interrupted"


