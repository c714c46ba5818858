"""Adaptation curves: held-out loss vs fine-tuning steps on new people, from a meta checkpoint and from the
stage-1 checkpoint it was trained from (and optionally a control), with the same data order, optimiser
and budget.

    python -m benchmarks.bench_personalize --meta META.ckpt --stage1 REFINE.ckpt [--control CKPT]
                                           [--shards DIR] [--split test] [--seeds 3]

For every identity of the split: hold out the last 20 % of its frames, fine-tune with Adam (the
personalize defaults) for --steps steps, and measure the held-out loss after every one of the first
--fine-until steps (where a faster-adapting start would show) and then every --eval-every steps. Each
(identity, seed) pair is one fine-tuning run; every initialisation sees the same batches for a given seed.
Printed (JSON): the mean curves, the loss the stage-1 initialisation reaches at --steps, the first measured
step at which the meta initialisation reaches it, and their ratio (the goal: at most 0.25). Also printed:
the first step at which the stage-1 initialisation itself gets there, both losses at step 0, and the same
step count for the control. The control answers "is it meta-learning or just more training?": give the
stage-1 model trained on for as long as meta-training took (same data, its own objective). A checkpoint that
carries learned per-tensor rate multipliers (meta.learn_inner_lr) is fine-tuned at them, as src.personalize
does (--no-learned-lr: every start at the plain rate).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import save
from data_modules.shards import HELDOUT_FRACTION, SOURCE_FRAMES


def curve(init: str, lr_scale: dict | None, shards: str, identity: str, seed: int, a,
          device: torch.device) -> list[float]:
    """Held-out loss at each of `eval_steps(a)` while fine-tuning `init` (at `lr_scale`'s learned per-tensor
    multipliers of the rate, when given) to one person."""
    import lightning as L

    from data_modules.personal import PersonalVideoDataModule
    from src.checkpoints import load_generator
    from src.modules.personalize_module import PersonalizeModule
    from src.personalization import heldout_loss

    gen, cfg, id_dim = load_generator(init)
    dm = PersonalVideoDataModule(shards, resolution=cfg["model"]["resolution"], batch_size=a.batch_size,
                                 heldout_fraction=HELDOUT_FRACTION, samples_per_epoch=a.steps * a.batch_size,
                                 id_dim=id_dim,
                                 seed=seed, identities=[identity], source_frame=a.source_frame)
    dm.setup()
    L.seed_everything(seed, verbose=False)  # the same batches for every initialisation
    module = PersonalizeModule(cfg, id_dim, a.lr, gen, lr_scale).to(device)
    opt = module.configure_optimizers()
    losses = [heldout_loss(module, dm, device)]
    batches, measure = iter(dm.train_dataloader()), set(eval_steps(a))
    for step in range(1, a.steps + 1):
        batch = dm.to_device(next(batches), device)
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


def first_step_at_or_below(steps: list[int], curve, target: float) -> int | None:
    return next((s for s, v in zip(steps, curve) if v <= target), None)


def summarise(steps: list[int], mean: dict[str, np.ndarray], budget: int) -> dict:
    """The step counts of the goal, read off the mean curves (keys: stage1, meta, optionally control)."""
    target = float(mean["stage1"][-1])
    reach = {name: first_step_at_or_below(steps, c, target) for name, c in mean.items()}
    meta_steps = reach["meta"]
    out = {
        "stage1_steps": budget, "stage1_loss_at_budget": round(target, 4),
        "meta_steps_to_reach_it": meta_steps if meta_steps is not None else f"not within {budget}",
        "ratio": round(meta_steps / budget, 3) if meta_steps is not None else None,
        "goal_ratio_at_most": 0.25,
        "stage1_steps_to_reach_it": reach["stage1"],
        "meta_faster_than_stage1": meta_steps is not None and meta_steps < reach["stage1"],
        "loss_at_step0": {k: round(float(c[0]), 4) for k, c in mean.items()},
        # the early part of the curves, where a faster-adapting start shows first
        "loss_at_steps": {s: {k: round(float(c[i]), 4) for k, c in mean.items()}
                          for i, s in enumerate(steps) if s in (1, 2, 5, 10, 25, 50, budget)},
    }
    if "control" in mean:
        c = reach["control"]
        out["control_steps_to_reach_it"] = c if c is not None else f"not within {budget}"
        out["meta_faster_than_control"] = meta_steps is not None and (c is None or meta_steps < c)
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n",
                                                                                                           2)[2])
    p.add_argument("--meta", required=True, help="meta checkpoint (python -m src.train meta)")
    p.add_argument("--stage1", required=True, help="the stage-1 (refine) checkpoint the meta run started from")
    p.add_argument("--control", default=None,
                   help="optional third start, e.g. stage 1 trained on for the meta run's time")
    p.add_argument("--shards", default="outputs/bench/shards_fixtures")
    p.add_argument("--split", default="test")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--eval-every", type=int, default=5)
    p.add_argument("--fine-until", type=int, default=5, help="also measure after each of the first N steps")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--learned-lr", action=argparse.BooleanOptionalAction, default=True,
                   help="fine-tune a checkpoint that carries learned rate multipliers (meta.learn_inner_lr) at them, "
                        "as src.personalize does")
    p.add_argument("--source-frame", choices=SOURCE_FRAMES, default="typical",
                   help="the frame every held-out frame is driven from (as src.personalize; 'first' was the protocol "
                        "before 2026-11-25)")
    p.add_argument("--seeds", type=int, default=1, help="data orders per identity (curves are averaged)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--name", default="personalize_curves")
    a = p.parse_args(argv)

    from src.checkpoints import learned_lr_scales

    manifest = json.loads((Path(a.shards) / "manifest.json").read_text())
    identities = manifest["splits"][a.split]["identities"]
    inits = {"stage1": a.stage1, "meta": a.meta, **({"control": a.control} if a.control else {})}
    # as src.personalize: a start that carries a meta run's learned rates is fine-tuned at them
    scales = {name: learned_lr_scales(init) if a.learned_lr else None for name, init in inits.items()}
    device = torch.device(a.device)
    t0 = time.time()
    curves: dict[str, dict[str, list[list[float]]]] = {name: {i: [] for i in identities} for name in inits}
    for ident in identities:
        for seed in range(a.seeds):
            for name, init in inits.items():
                c = curve(init, scales[name], a.shards, ident, seed, a, device)
                curves[name][ident].append(c)
                print(f"{ident} seed {seed} {name}: held-out loss {c[0]:.4f} -> {c[-1]:.4f}", file=sys.stderr)
    # mean over seeds per person, then over people (every person weighs the same)
    per_person = {name: {i: np.mean(v, axis=0) for i, v in by_id.items()} for name, by_id in curves.items()}
    mean = {name: np.mean(list(by_id.values()), axis=0) for name, by_id in per_person.items()}
    steps = eval_steps(a)
    save(a.name, {
        "command": "python -m benchmarks.bench_personalize " + " ".join(argv if argv is not None else sys.argv[1:]),
        "identities": len(identities), "seeds": a.seeds, "source_frame": a.source_frame,
        "optimiser": f"Adam lr {a.lr} (warp x0.1), batch {a.batch_size}",
        # which starts fine-tuned at learned per-tensor multipliers of that rate (median multiplier)
        "learned_lr_scale_median": {name: round(float(np.median(list(s.values()))), 3) for name,
                                    s in scales.items() if s},
        **summarise(steps, mean, a.steps),
        "curve_steps": steps,
        **{f"{name}_curve": [round(float(v), 4) for v in c] for name, c in mean.items()},
        # the mean can be dominated by one person whose loss is on another scale: each person's curves too,
        # and the step at which each person's own stage-1 step-budget loss is reached
        "per_identity": {i: {name: [round(float(v),
                                          4) for v in per_person[name][i]] for name in inits} for i in identities},
        "per_identity_steps_to_stage1_budget_loss": {
            i: {name: first_step_at_or_below(steps, per_person[name][i],
                                             float(per_person["stage1"][i][-1])) for name in inits}
            for i in identities},
        "seconds": round(time.time() - t0, 1),
    })


if __name__ == "__main__":
    main()
