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
An interrupted run resumes from OUT.work/checkpoints/last.ckpt when re-run with the same arguments, and goes on
with the batches it had not yet seen: it ends with the weights an uninterrupted run would have.
Nothing is written under OUT's names until the end, and an existing OUT is kept unless --overwrite. A video
replaced or changed at the same path since an earlier run is preprocessed again (the work folder records each
input's size, time and a hash of its ends); a damaged video (fewer frames than its container declares) is used
with a warning that gives the numbers.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from data_modules.shards import SOURCE_FRAMES
from src.arguments import Parser, bounded, count, fraction, positive_float, positive_int
from src.config import CHOICES
from src.errors import cli_entry
from src.faces.identity import BACKENDS
from src.personalization import PersonalizeOptions, personalize


def parse_args(argv=None) -> argparse.Namespace:
    d = PersonalizeOptions(Path("in.ckpt"), [], Path("out.ckpt"))  # the defaults
    p = Parser(prog="python -m src.personalize", description=__doc__.split("\n\n")[0],
               formatter_class=argparse.RawDescriptionHelpFormatter,
               epilog="\n\n".join(__doc__.split("\n\n")[2:]))
    p.add_argument("--checkpoint", required=True, type=Path,
                   help="generator checkpoint (stage1/refine, meta or personalize)")
    p.add_argument("--video", required=True, nargs="+", type=Path, help="video(s) of the person")
    p.add_argument("--output", required=True, type=Path, help="personalized checkpoint to write (OUT.ckpt)")
    p.add_argument("--steps", type=positive_int, default=d.steps,
                   help="most optimisation steps, >= 1 (default %(default)s)")
    p.add_argument("--time-budget", type=positive_float, default=d.time_budget,
                   help="most seconds of fine-tuning, > 0 (default: none)")
    p.add_argument("--device", default=d.device, help="auto (cuda when available) | cpu | cuda | cuda:N")
    p.add_argument("--batch-size", type=positive_int, default=d.batch_size, help=">= 1 (default %(default)s)")
    p.add_argument("--lr", type=bounded(float, 0, 1, low_open=True), default=d.lr,
                   help="learning rate, in (0, 1] (warp parameters at optim.warp_lr_mult of it)")
    p.add_argument("--learned-lr", action=argparse.BooleanOptionalAction, default=d.learned_lr,
                   help="apply the per-tensor rate multipliers a meta checkpoint learned (meta.learn_inner_lr), "
                        "when it has them")
    p.add_argument("--heldout-fraction", type=fraction, default=d.heldout_fraction,
                   help="tail of every clip kept for validation, in (0, 1) (default %(default)s)")
    p.add_argument("--source-frame", choices=SOURCE_FRAMES, default=d.source_frame,
                   help="held-out frames are driven from this frame of each clip: typical (the training frame nearest "
                        "the clip's median landmarks, default) or first")
    p.add_argument("--eval-every", type=positive_int, default=d.eval_every,
                   help="steps between held-out evaluations, >= 1 (default %(default)s)")
    p.add_argument("--patience", type=positive_int, default=d.patience,
                   help="stop after this many steps without held-out improvement, >= 1 (default %(default)s)")
    p.add_argument("--max-eval-frames", type=positive_int, default=d.max_eval_frames,
                   help="held-out frames used per evaluation, >= 1 (default %(default)s)")
    p.add_argument("--identity-backend", default=d.identity_backend, choices=BACKENDS,
                   help="must give the embedding dimension the checkpoint was trained with")
    p.add_argument("--perceptual", choices=CHOICES["loss.perceptual"], default=d.perceptual,
                   help="fine-tuning loss (default: the checkpoint's own)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    p.add_argument("--seed", type=count, default=d.seed)
    return p.parse_args(argv)


def parse_options(argv=None) -> PersonalizeOptions:
    a = vars(parse_args(argv))
    a["videos"] = a.pop("video")
    return PersonalizeOptions(**a)


@cli_entry
def main(argv=None) -> int:
    options = parse_options(argv)
    report = personalize(options)
    b, f = report["heldout"]["before"], report["heldout"]["after"]
    print(f"personalized in {report['steps']} steps ({report['seconds']['fine_tune']} s fine-tuning, stopped by "
          f"{report['stopped_by']}): held-out PSNR {b['psnr']:.2f} -> {f['psnr']:.2f} dB, SSIM {b['ssim']:.3f} -> "
          f"{f['ssim']:.3f}; wrote {options.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
