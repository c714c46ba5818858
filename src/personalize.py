"""Personalize a trained generator to one person from a short video.

    python -m src.personalize --checkpoint CKPT --video VIDEO [VIDEO ...] --output OUT.ckpt
                              [--steps N] [--time-budget SECONDS] [--device auto|cpu|cuda]

1. The videos go through the preprocessing pipeline (face crop, MediaPipe landmarks, identity embedding)
   into OUT.work/shards (resumable: a re-run reuses what is there).
2. The last --heldout-fraction of every clip is held out; the generator (a stage-1 or meta checkpoint) is
   fine-tuned on the rest, with the held-out loss measured every --eval-every steps. Training stops at
   --steps, at --time-budget, or when the held-out loss has not improved for --patience steps; the weights
   with the best held-out loss are kept. A meta checkpoint trained with meta.learn_inner_lr carries a learned
   multiplier of the rate for every tensor; they are applied on top of --lr (--no-learned-lr ignores them).
3. Written: OUT.ckpt (a generator checkpoint that animate/evaluate/personalize read), OUT.report.json
   (held-out PSNR, SSIM and identity similarity before and after, steps, wall time) and
   OUT.preview.mp4 (held-out frames: real | before | after).
An interrupted run resumes from OUT.work/checkpoints/last.ckpt when re-run with the same arguments.
Nothing is written under OUT's names until the end, and an existing OUT is kept unless --overwrite.
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from data_modules.shards import HELDOUT_FRACTION, SOURCE_FRAMES
from src.errors import UserError, cli_entry


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m src.personalize", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n\n".join(__doc__.split("\n\n")[2:]))
    p.add_argument("--checkpoint", required=True, type=Path, help="generator checkpoint (stage1/refine, meta or personalize)")
    p.add_argument("--video", required=True, nargs="+", type=Path, help="video(s) of the person")
    p.add_argument("--output", required=True, type=Path, help="personalized checkpoint to write (OUT.ckpt)")
    p.add_argument("--steps", type=int, default=300, help="most optimisation steps (default 300)")
    p.add_argument("--time-budget", type=float, default=None, help="most seconds of fine-tuning (default: none)")
    p.add_argument("--device", default="auto", help="auto (cuda when available) | cpu | cuda | cuda:N")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=2e-4, help="learning rate (warp parameters at optim.warp_lr_mult of it)")
    p.add_argument("--learned-lr", action=argparse.BooleanOptionalAction, default=True,
                   help="apply the per-tensor rate multipliers a meta checkpoint learned (meta.learn_inner_lr), when it has them")
    p.add_argument("--heldout-fraction", type=float, default=HELDOUT_FRACTION, help="tail of every clip kept for validation")
    p.add_argument("--source-frame", choices=SOURCE_FRAMES, default="typical",
                   help="held-out frames are driven from this frame of each clip: typical (the training frame nearest "
                        "the clip's median landmarks, default) or first")
    p.add_argument("--eval-every", type=int, default=25, help="steps between held-out evaluations")
    p.add_argument("--patience", type=int, default=100, help="stop after this many steps without held-out improvement")
    p.add_argument("--max-eval-frames", type=int, default=32, help="held-out frames used per evaluation")
    p.add_argument("--identity-backend", default="auto", choices=["auto", "insightface", "dlib"],
                   help="must give the embedding dimension the checkpoint was trained with")
    p.add_argument("--perceptual", choices=["vgg19", "l1_msssim"], default=None,
                   help="fine-tuning loss (default: the checkpoint's own)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if a.steps < 1 or a.eval_every < 1 or a.batch_size < 1:
        p.error("--steps, --eval-every and --batch-size must be positive")
    return a


def output_paths(out: Path) -> dict[str, Path]:
    stem = out.with_suffix("")
    return {"checkpoint": out, "report": Path(f"{stem}.report.json"), "preview": Path(f"{stem}.preview.mp4"),
            "work": Path(f"{stem}.work")}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA device is available here (use --device cpu)")
    return torch.device(name)


def preprocess_videos(videos: list[Path], work: Path, backend: str) -> Path:
    """The person's videos through the project's preprocessing into work/shards (resumable)."""
    from src.preprocess import run as preprocess

    import hashlib

    inputs = work / "videos"
    inputs.mkdir(parents=True, exist_ok=True)
    wanted = {}
    for video in videos:
        if not video.is_file():
            raise UserError(f"--video {video} does not exist")
        tag = hashlib.sha1(str(video.resolve()).encode()).hexdigest()[:10]  # one name per source file
        wanted[f"{video.stem}-{tag}{video.suffix.lower()}"] = video.resolve()
    for link in inputs.iterdir():  # videos of an earlier call that are not part of this one
        if link.name not in wanted:
            link.unlink()
    for name, target in wanted.items():
        if not (inputs / name).is_symlink():
            (inputs / name).symlink_to(target)
    shards = work / "shards"
    manifest = preprocess(["--input", str(inputs), "--output", str(shards), "--splits", "person",
                           "--identity-backend", backend, "--workers", "1", "--quiet"])
    if not manifest or not sum(s["clips"] for s in manifest["splits"].values()):
        reasons = [json.loads(line)["reason"] for line in (shards / "rejects.jsonl").read_text().splitlines() if line]
        raise UserError(f"no usable face video among {', '.join(map(str, videos))}: {'; '.join(reasons) or 'all rejected'}")
    return shards


@torch.no_grad()
def evaluate(generator, dm, device, embedder=None, max_frames: int = 32, keep_frames: bool = False) -> dict:
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
                o_np = (o[0].permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
                d_np = (d[0].permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
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


def _atomic_save(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def personalize(a: argparse.Namespace) -> dict:
    import lightning as L
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    from data_modules.personal import PersonalVideoDataModule
    from src.faces.identity import make_embedder
    from src.modules.personalize_module import PersonalizeModule, check_lr_scale, learned_lr_scales, load_generator

    paths = output_paths(a.output)
    existing = [str(p) for k, p in paths.items() if k != "work" and p.exists()]
    if existing and not a.overwrite:
        raise UserError(f"{', '.join(existing)} already exist(s): pass --overwrite to replace, or another --output")
    try:
        a.output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the --output folder {a.output.parent}: {exc.strerror}") from None
    device = resolve_device(a.device)
    generator, cfg, id_dim = load_generator(a.checkpoint)  # checked before any long work
    lr_scale = learned_lr_scales(a.checkpoint) if a.learned_lr else None
    check_lr_scale(generator, lr_scale)
    if a.perceptual:
        cfg["loss"]["perceptual"] = a.perceptual
    t0 = time.time()

    work = paths["work"]
    work.mkdir(exist_ok=True)
    print(f"preprocessing {len(a.video)} video(s) into {work / 'shards'} ...")
    shards = preprocess_videos(a.video, work, a.identity_backend)
    dm = PersonalVideoDataModule(str(shards), resolution=cfg["model"]["resolution"], batch_size=a.batch_size,
                                 heldout_fraction=a.heldout_fraction, samples_per_epoch=a.steps * a.batch_size,
                                 id_dim=id_dim, seed=a.seed, source_frame=a.source_frame)
    dm.setup()
    t_pre = time.time() - t0
    embedder = make_embedder(dm.manifest["embedding"]["backend"].split("-")[0])  # the backend of the shards
    L.seed_everything(a.seed, verbose=False)
    generator.to(device)
    before = evaluate(generator, dm, device, embedder, a.max_eval_frames, keep_frames=True)

    module = PersonalizeModule(cfg, id_dim, a.lr, generator, lr_scale)
    ckpt_dir = work / "checkpoints"
    best = ModelCheckpoint(dirpath=str(ckpt_dir), filename="best", monitor="val/loss", mode="min", save_top_k=1,
                           save_last=True)
    val_batches = max(1, math.ceil(a.max_eval_frames / a.batch_size))
    trainer = L.Trainer(accelerator="gpu" if device.type == "cuda" else "cpu", devices=1, max_steps=a.steps,
                        max_time={"seconds": a.time_budget} if a.time_budget else None,
                        val_check_interval=min(a.eval_every, a.steps), check_val_every_n_epoch=None,
                        limit_val_batches=val_batches, num_sanity_val_steps=0, logger=CSVLogger(str(work), name="logs"),
                        callbacks=[best, EarlyStopping("val/loss", patience=max(1, a.patience // a.eval_every),
                                                       check_finite=True)],
                        enable_model_summary=False, deterministic=False)
    last = ckpt_dir / "last.ckpt"
    t1 = time.time()
    trainer.fit(module, datamodule=dm, ckpt_path=str(last) if last.exists() else None, weights_only=True)
    t_train = time.time() - t1
    if best.best_model_path:  # the weights with the lowest held-out loss
        state = torch.load(best.best_model_path, map_location="cpu", weights_only=True)["state_dict"]
        module.load_state_dict(state)
    generator = module.generator.to(device)
    after = evaluate(generator, dm, device, embedder, a.max_eval_frames, keep_frames=True)

    # outputs: preview, report, then the checkpoint, each written under a temporary name first
    from src.video_io import write_video

    frames = [np.concatenate([d, b, o], axis=1) for (d, b), (_, o) in zip(before.pop("_frames"), after.pop("_frames"))]
    if frames:
        write_video(paths["preview"], frames, fps=10.0)
    report = {
        "checkpoint": str(a.checkpoint), "videos": [str(v) for v in a.video], "device": str(device),
        "steps": int(trainer.global_step), "stopped_by": _stop_reason(trainer, a),
        "best_heldout_loss": float(best.best_model_score) if best.best_model_score is not None else None,
        "heldout": {"before": before, "after": after}, "heldout_frames": sum(hi - lo for lo, hi in dm.val_ranges),
        "train_frames": sum(hi - lo for lo, hi in dm.train_ranges),
        "source_frames": {it["key"]: s for it, s in zip(dm.items, dm.sources)}, "identity_backend": dm.manifest["embedding"]["backend"],
        "lr": a.lr, "learned_lr_scale": _spread(list(lr_scale.values())) if lr_scale is not None else None,
        "seconds": {"preprocess": round(t_pre, 1), "fine_tune": round(t_train, 1), "total": round(time.time() - t0, 1)},
    }
    tmp = paths["report"].with_name(paths["report"].name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2))
    tmp.replace(paths["report"])
    _atomic_save({"state_dict": {f"generator.{k}": v.cpu() for k, v in generator.state_dict().items()},
                  "hyper_parameters": {"cfg": cfg, "id_dim": id_dim},
                  "personalized": {"embedding": dm.embedding.astype(np.float32).tolist(), "steps": int(trainer.global_step),
                                   "source_checkpoint": str(a.checkpoint)},
                  # the learned rates travel on: personalizing this checkpoint again fine-tunes at them too
                  **({"inner_lr_scale": lr_scale} if lr_scale is not None else {})}, paths["checkpoint"])
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


@cli_entry
def main(argv=None) -> int:
    a = parse_args(argv)
    report = personalize(a)
    b, f = report["heldout"]["before"], report["heldout"]["after"]
    print(f"personalized in {report['steps']} steps ({report['seconds']['fine_tune']} s fine-tuning, stopped by "
          f"{report['stopped_by']}): held-out PSNR {b['psnr']:.2f} -> {f['psnr']:.2f} dB, SSIM {b['ssim']:.3f} -> "
          f"{f['ssim']:.3f}; wrote {a.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
