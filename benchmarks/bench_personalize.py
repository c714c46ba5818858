"""Adaptation curves: held-out loss vs fine-tuning steps on new people, from a meta checkpoint and from the
stage-1 checkpoint it was trained from, with the same data order, optimiser and budget.

    python -m benchmarks.bench_personalize --meta META.ckpt --stage1 REFINE.ckpt [--shards DIR] [--split test]

For every identity of the split: hold out the last 20 % of its frames, fine-tune with Adam (the
personalize defaults) for --steps steps, and measure the held-out loss after every one of the first
--fine-until steps (where a faster-adapting start would show) and then every --eval-every steps. Printed
(JSON): the mean curves, the loss the stage-1 initialisation reaches at --steps, the first measured step
at which the meta initialisation reaches it, and their ratio. The goal is a ratio of at most 0.25.
Also printed: the first step at which the stage-1 initialisation itself gets there, and the loss of both
at step 0, because a ratio of 0.25 means little when the stage-1 curve is already flat by then.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from benchmarks.common import save


def curve(init: str, shards: str, identity: str, a) -> list[float]:
    import lightning as L

    from data_modules.personal import PersonalVideoDataModule
    from src.modules.personalize_module import PersonalizeModule, load_generator
    from src.personalize import heldout_loss

    gen, cfg, id_dim = load_generator(init)
    dm = PersonalVideoDataModule(shards, resolution=cfg["model"]["resolution"], batch_size=a.batch_size,
                                 heldout_fraction=0.2, samples_per_epoch=a.steps * a.batch_size, id_dim=id_dim,
                                 seed=a.seed, identities=[identity])
    dm.setup()
    L.seed_everything(a.seed, verbose=False)  # the same batches for both initialisations
    module = PersonalizeModule(cfg, id_dim, a.lr, gen)
    opt = module.configure_optimizers()
    device = torch.device("cpu")
    losses = [heldout_loss(module, dm, device)]
    batches, measure = iter(dm.train_dataloader()), set(eval_steps(a))
    for step in range(1, a.steps + 1):
        batch = dm.on_after_batch_transfer(next(batches), 0)
        loss, _ = module.model_step(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step in measure:
            losses.append(heldout_loss(module, dm, device))
    return losses


def eval_steps(a) -> list[int]:
    """The steps at which the held-out loss is measured (0 = before fine-tuning)."""
    return sorted({*range(min(a.fine_until, a.steps) + 1), *range(0, a.steps + 1, a.eval_every), a.steps})


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--meta", required=True)
    p.add_argument("--stage1", required=True)
    p.add_argument("--shards", default="outputs/bench/shards_fixtures")
    p.add_argument("--split", default="test")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--eval-every", type=int, default=5)
    p.add_argument("--fine-until", type=int, default=5, help="also measure after each of the first N steps")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default="personalize_curves")
    a = p.parse_args(argv)
    import json
    from pathlib import Path

    manifest = json.loads((Path(a.shards) / "manifest.json").read_text())
    identities = manifest["splits"][a.split]["identities"]
    t0 = time.time()
    curves = {"stage1": [], "meta": []}
    for ident in identities:
        for name, init in (("stage1", a.stage1), ("meta", a.meta)):
            curves[name].append(curve(init, a.shards, ident, a))
            print(f"{ident} {name}: held-out loss {curves[name][-1][0]:.4f} -> {curves[name][-1][-1]:.4f}", file=sys.stderr)
    mean = {k: np.mean(v, axis=0) for k, v in curves.items()}
    steps = eval_steps(a)
    save(a.name, {
        "command": "python -m benchmarks.bench_personalize " + " ".join(argv if argv is not None else sys.argv[1:]),
        "identities": len(identities), "optimiser": f"Adam lr {a.lr} (warp x0.1), batch {a.batch_size}",
        **summarise(steps, mean["stage1"], mean["meta"], a.steps),
        "curve_steps": steps,
        "stage1_curve": [round(float(v), 4) for v in mean["stage1"]],
        "meta_curve": [round(float(v), 4) for v in mean["meta"]],
        # the mean can be dominated by one person whose loss is on another scale: each person's curves too
        "per_identity": {ident: {name: [round(float(v), 4) for v in curves[name][i]] for name in curves}
                         for i, ident in enumerate(identities)},
        "seconds": round(time.time() - t0, 1),
    })


def summarise(steps: list[int], stage1: list[float], meta: list[float], budget: int) -> dict:
    """The step counts of the goal, read off the two mean curves."""
    target = float(stage1[-1])
    first = lambda curve: next((s for s, v in zip(steps, curve) if v <= target), None)  # noqa: E731
    meta_steps, stage1_steps = first(meta), first(stage1)
    return {
        "stage1_steps": budget, "stage1_loss_at_budget": round(target, 4),
        "meta_steps_to_reach_it": meta_steps if meta_steps is not None else f"not within {budget}",
        "ratio": round(meta_steps / budget, 3) if meta_steps is not None else None,
        "goal_ratio_at_most": 0.25,
        "stage1_steps_to_reach_it": stage1_steps,
        "loss_at_step0": {"stage1": round(float(stage1[0]), 4), "meta": round(float(meta[0]), 4)},
        "meta_faster_than_stage1": meta_steps is not None and meta_steps < stage1_steps,
        # the early part of the curves, where a faster-adapting start shows first
        "loss_at_steps": {s: {"stage1": round(float(v1), 4), "meta": round(float(v2), 4)}
                          for s, v1, v2 in zip(steps, stage1, meta) if s in (1, 2, 5, 10, 25)},
    }


if __name__ == "__main__":
    main()
