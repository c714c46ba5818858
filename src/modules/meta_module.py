"""MetaLearnerModule: meta-learning an initialisation of the generator that adapts to a new person fast.

One training step = one outer update from a batch of tasks (identities; `episodes` data: a source frame,
K support and Q query frames of one person). Per task, the inner loop adapts *fast weights* (a detached
copy of the generator's parameters, evaluated through `torch.func.functional_call`) on the support frames
with a fresh inner optimiser, each inner step on different support frames. The outer gradient is then
  reptile  theta - theta_adapted                         (first order, the original's algorithm)
  fomaml   d query_loss / d theta_adapted               (first-order MAML: the query set is used)
  maml     d query_loss(theta_adapted(theta)) / d theta  (second order; inner SGD kept in the graph)
averaged over tasks. With `meta.multi_step_loss` (fomaml/maml) the query loss is taken before and after every
inner step and averaged (MAML++'s multi-step loss), so the unadapted start and every early step count, not only
the last one. The outer step is Adam (the original's) or Reptile's plain SGD step, optionally annealed to zero.
With `meta.learn_inner_lr` the inner rate of every generator tensor is meta-learned too (MAML++'s per-layer rates):
theta_K - theta_0 is proportional to the tensor's rate, so to first order d query_loss / d log(rate) is
<d query_loss / d theta_K, theta_K - theta_0> for that tensor (exact for one SGD step); the rates are saved in
the checkpoint (`inner_lr_scale`) and `src.personalize` fine-tunes with them.
The outer gradient reaches the parameters through ONE `manual_backward` per step (a surrogate sum(theta * g)
for the first-order algorithms), so DDP all-reduces it exactly once and every rank applies the same outer
update; the inner loops never touch the DDP-wrapped parameters.

Validation adapts to each held-out identity for `meta.val_adapt_steps` and logs the query loss before
and after: `val/adapt_gain` > 0 is what meta-training should raise.
"""
from __future__ import annotations

import math

import lightning as L
import torch
from omegaconf import OmegaConf
from torch.func import functional_call

from src.losses.perceptual import build_perceptual
from src.models.generator import build_discriminator, build_generator
from src.modules.common import (
    NonFiniteGuard,
    ReconstructionMetrics,
    groups_by_rate,
    reconstruction_losses,
    step_uncounted,
    tensor_lr,
)


def task_frames(batch: dict, t: int, part: str, idx: list[int]) -> tuple[dict, dict]:
    """Generator inputs and targets for task t: the task's source driven by frames `idx` of `part`
    (support or query)."""
    n = len(idx)
    inputs = dict(source=batch["source"][t].expand(n, -1, -1, -1),
                  source_lmk=batch["source_lmk_img"][t].expand(n, -1, -1, -1),
                  driving_lmk=batch[f"{part}_lmk_img"][t, idx], identity=batch["embedding"][t].expand(n, -1),
                  gaze=batch[f"{part}_gaze"][t, idx], mouth_mask=batch[f"{part}_mouth_mask"][t, idx],
                  source_points=batch["source_landmarks"][t][None], driving_points=batch[f"{part}_landmarks"][t, idx])
    targets = dict(target=batch[part][t, idx], eye_mask=batch[f"{part}_eye_mask"][t, idx],
                   mouth_mask=batch[f"{part}_mouth_mask"][t, idx], lmk_img=batch[f"{part}_lmk_img"][t, idx])
    return inputs, targets


class MetaLearnerModule(L.LightningModule):
    def __init__(self, cfg: dict, id_dim: int):
        super().__init__()
        self.save_hyperparameters({"cfg": cfg, "id_dim": id_dim})
        self.cfg = OmegaConf.create(cfg)
        m = self.cfg.meta  # its choices and their combinations are checked when the config is composed
        self.automatic_optimization = False
        self.generator = build_generator(self.cfg.model, id_dim)
        self.param_names = [n for n, _ in self.generator.named_parameters()]
        # log of each generator tensor's multiplier of its inner rate (0: the configured rate), or none
        self.inner_log_lr = (torch.nn.Parameter(torch.zeros(len(self.param_names))) if m.learn_inner_lr else None)
        # A frozen stage-1 discriminator supplies the GAN terms when they are wanted in the inner loop.
        self.discriminator = build_discriminator(self.cfg.model).requires_grad_(False) if m.gan_in_inner_loop else None
        self.perceptual = build_perceptual(self.cfg.loss)
        self.guard = NonFiniteGuard(self)
        self.val_metrics = ReconstructionMetrics(scalars=("loss", "query_loss_before", "query_loss_after",
                                                          "adapt_gain"))

    # ---------------------------------------------------------------- losses on (fast) weights
    def task_loss(self, params: dict, batch: dict, t: int, part: str, idx: list[int], gan: bool = False):
        inputs, tg = task_frames(batch, t, part, idx)
        # eval mode: spectral norm then uses its stored power-iteration vectors instead of updating them in
        # place from fast weights, which would make those buffers depend on each rank's tasks under DDP
        mode = self.generator.training
        self.generator.eval()
        try:
            out = functional_call(self.generator, params, kwargs=inputs)
        finally:
            self.generator.train(mode)
        losses = reconstruction_losses(self.cfg.refine, self.perceptual, out, tg["target"], tg["eye_mask"],
                                       tg["mouth_mask"])
        if gan:
            from src.losses.gan import feature_matching_loss, lsgan_generator_loss

            fake, fake_feats = self.discriminator(out["output"], tg["lmk_img"])
            with torch.no_grad():
                _, real_feats = self.discriminator(tg["target"], tg["lmk_img"])
            losses["gan"] = self.cfg.refine.gan_weight * lsgan_generator_loss(fake)
            losses["feature_matching"] = self.cfg.refine.feature_matching_weight * feature_matching_loss(real_feats,
                                                                                                         fake_feats)
        return sum(losses.values()), out

    def _lr(self, name: str, base: float) -> float:
        return tensor_lr(name, base, self.cfg.optim.warp_lr_mult)

    def inner_lr_scale(self) -> dict[str, float]:
        """The learned multiplier of each generator tensor's inner rate (all 1 without meta.learn_inner_lr)."""
        if self.inner_log_lr is None:
            return {n: 1.0 for n in self.param_names}
        return dict(zip(self.param_names, self.inner_log_lr.detach().exp().tolist()))

    def inner_lrs(self, differentiable: bool = False) -> dict:
        """Each tensor's inner rate: floats, or (second order) tensors that keep the learned rates in the graph."""
        base = {n: self._lr(n, self.cfg.meta.inner_lr) for n in self.param_names}
        if differentiable and self.inner_log_lr is not None:
            scale = self.inner_log_lr.exp()
            return {n: base[n] * scale[i] for i, n in enumerate(self.param_names)}
        return {n: base[n] * s for n, s in self.inner_lr_scale().items()}

    def adapt(self, batch: dict, t: int, steps: int, second_order: bool = False, visit=None) -> tuple[dict,
                                                                                                      list[float]]:
        """Fast weights adapted to task t on its support frames, and the support loss of each inner step.
        First order: the fast weights are a detached copy; second order: they stay functions of theta.
        `visit(fast)` is called on the weights before every inner step and after the last (steps + 1 times)."""
        m = self.cfg.meta
        theta = dict(self.generator.named_parameters())
        fast = dict(theta) if second_order else {n: p.detach().clone().requires_grad_(True) for n, p in theta.items()}
        k = batch["support"].shape[1]
        b = min(m.inner_batch, k)
        lrs = self.inner_lrs(differentiable=second_order)
        opt = None
        if not second_order:
            groups = groups_by_rate(fast, lrs)
            opt = (torch.optim.Adam(groups, betas=tuple(self.cfg.optim.betas)) if m.inner_optimizer == "adam"
                   else torch.optim.SGD(groups))
        history = []
        for j in range(steps):
            if visit is not None:
                visit(fast)
            idx = [(j * b + i) % k for i in range(b)]  # walk through the support set: a new pair each step
            loss, _ = self.task_loss(fast, batch, t, "support", idx, gan=m.gan_in_inner_loop)
            history.append(float(loss.detach()))
            grads = torch.autograd.grad(loss, list(fast.values()), create_graph=second_order)
            if second_order:
                fast = {n: p - lrs[n] * g for (n, p), g in zip(fast.items(), grads)}
            else:
                for p, g in zip(fast.values(), grads):
                    p.grad = g
                opt.step()
        if visit is not None:
            visit(fast)
        return fast, history

    def query_loss(self, params: dict, batch: dict, t: int) -> tuple[torch.Tensor, dict]:
        return self.task_loss(params, batch, t, "query", list(range(batch["query"].shape[1])))

    # ---------------------------------------------------------------- training
    def outer_objective(self, batch: dict) -> tuple[torch.Tensor, dict]:
        """A scalar whose gradient with respect to the generator's parameters (and the learned inner rates) is this
        rank's outer gradient (mean over its tasks), and the step's statistics."""
        m = self.cfg.meta
        theta = dict(self.generator.named_parameters())
        theta0 = {n: p.detach() for n, p in theta.items()}
        n_tasks = batch["source"].shape[0]
        outer = {n: torch.zeros_like(p) for n, p in theta.items()}
        first_order_rates = self.inner_log_lr is not None and m.algorithm != "maml"
        rate_grad = torch.zeros_like(self.inner_log_lr) if first_order_rates else None
        objective = torch.zeros((), device=self.device)
        first, last, query, query_start = [], [], [], []
        # the query loss after the last inner step, or (multi_step_loss) its mean over the start and every step
        points = m.inner_steps + 1 if m.multi_step_loss else 1
        for t in range(n_tasks):
            task_query = []

            def on_query(fast: dict) -> None:
                nonlocal objective
                # called inside this iteration (adapt's callback): t and task_query are this task's
                loss_q, _ = self.query_loss(fast, batch, t)  # noqa: B023
                task_query.append(float(loss_q.detach()))  # noqa: B023
                if m.algorithm == "maml":  # the query loss differentiates through the inner updates back to theta
                    objective = objective + loss_q / (n_tasks * points)
                    return
                grads = torch.autograd.grad(loss_q, list(fast.values()))
                for i, (n, g) in enumerate(zip(fast, grads)):
                    if m.algorithm == "fomaml":
                        outer[n] += g / (n_tasks * points)
                    if first_order_rates:  # d loss / d log(rate_n) = <g_n, theta_n - theta0_n> (first order)
                        rate_grad[i] += (g * (fast[n].detach() - theta0[n])).sum() / (n_tasks * points)

            visit = on_query if m.multi_step_loss else None
            fast, hist = self.adapt(batch, t, m.inner_steps, second_order=m.algorithm == "maml", visit=visit)
            first.append(hist[0])
            last.append(hist[-1])
            if m.algorithm == "reptile":
                for n in theta:
                    outer[n] += (theta0[n] - fast[n].detach()) / n_tasks
            if not m.multi_step_loss and (m.algorithm != "reptile" or first_order_rates):
                on_query(fast)  # reptile takes the query gradient only for the learned rates
            if task_query:
                query.append(task_query[-1])
                query_start.append(task_query[0])
        if m.algorithm != "maml":
            # d/dtheta sum(theta * g) = g: the outer gradient, all-reduced by DDP in the one backward
            objective = sum((p * outer[n]).sum() for n, p in theta.items())
            if first_order_rates:
                objective = objective + (self.inner_log_lr * rate_grad).sum()
        stats = {"support_loss_first": sum(first) / n_tasks, "support_loss_last": sum(last) / n_tasks}
        if query:
            stats["query_loss"] = sum(query) / n_tasks
        if m.multi_step_loss:
            stats["query_loss_unadapted"] = sum(query_start) / n_tasks
        return objective, stats

    def training_step(self, batch: dict, batch_idx: int) -> None:
        opts = self.optimizers()
        opt, rate_opt = (opts[0], opts[1]) if isinstance(opts, list) else (opts, None)
        objective, stats = self.outer_objective(batch)
        if not self.guard.ok(torch.tensor(list(stats.values())).sum() + objective.detach().cpu()):
            return
        # every generator tensor, stepped or not (meta.outer_update=refiner): a grad left on the warper would add up
        self.generator.zero_grad(set_to_none=True)
        if rate_opt is not None:
            rate_opt.zero_grad(set_to_none=True)
        self.manual_backward(objective)
        if self.cfg.meta.grad_clip_norm:
            self.clip_gradients(opt, gradient_clip_val=self.cfg.meta.grad_clip_norm, gradient_clip_algorithm="norm")
        opt.step()
        if rate_opt is not None:
            step_uncounted(self, rate_opt)  # one outer step = one global step (trainer.max_steps, the lr schedule)
            with torch.no_grad():  # a bound keeps one noisy task from sending a rate where the inner loop diverges
                limit = math.log(self.cfg.meta.inner_lr_scale_max)
                self.inner_log_lr.clamp_(-limit, limit)
            scale = self.inner_log_lr.detach().exp()
            stats.update(inner_lr_scale_min=float(scale.min()), inner_lr_scale_median=float(scale.median()),
                         inner_lr_scale_max=float(scale.max()))
        if (sched := self.lr_schedulers()) is not None:
            sched.step()
        n = batch["source"].shape[0]
        self.log_dict({f"train/{k}": v for k, v in stats.items()}, sync_dist=True, batch_size=n)
        self.log("train/loss", stats.get("query_loss", stats["support_loss_last"]), prog_bar=True, sync_dist=True,
                 batch_size=n)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # plain floats by tensor name: what src.personalize reads (weights_only) to fine-tune at the learned rates
        if self.inner_log_lr is not None:
            checkpoint["inner_lr_scale"] = self.inner_lr_scale()

    # ---------------------------------------------------------------- validation: adapt, then measure
    def validation_step(self, batch: dict, batch_idx: int) -> None:
        n_tasks = batch["source"].shape[0]
        theta = {n: p.detach() for n, p in self.generator.named_parameters()}
        before, after = [], []
        with torch.enable_grad():
            for t in range(n_tasks):
                with torch.no_grad():
                    before.append(float(self.query_loss(theta, batch, t)[0]))
                fast, _ = self.adapt(batch, t, self.cfg.meta.val_adapt_steps)
                with torch.no_grad():
                    loss, out = self.query_loss({n: p.detach() for n, p in fast.items()}, batch, t)
                after.append(float(loss))
                q = batch["query"].shape[1]
                self.val_metrics.update(out["output"], batch["source"][t].expand(q, -1, -1, -1), batch["query"][t])
                if batch_idx == 0 and t == 0:
                    self.last_val_images = {"source": batch["source"][t].expand(q, -1, -1, -1),
                                            "driving": batch["query"][t],
                                            "driving_lmk_img": batch["query_lmk_img"][t],
                                            "warped": out["warped"].detach(), "output": out["output"].detach()}
        b, a = sum(before) / n_tasks, sum(after) / n_tasks
        self.val_metrics.update_scalars(n_tasks, query_loss_before=b, query_loss_after=a, adapt_gain=b - a, loss=a)

    def on_validation_epoch_end(self) -> None:
        self.val_metrics.log_to(self, prog_bar=("adapt_gain",))

    def configure_optimizers(self):
        o, m = self.cfg.optim, self.cfg.meta
        # outer_update=refiner: the warper stays at meta.init's weights (the inner loop still adapts it). Moving the
        # warp towards each person's adapted warp cost the unadapted start on new people (BENCHMARKS.md, meta section)
        warper = [] if m.outer_update == "refiner" else list(self.generator.warper.parameters())
        if m.outer_optimizer == "sgd":
            # Reptile's own form: theta <- theta + lr * mean(theta_adapted - theta); lr 1 = the mean adapted weights.
            # One rate for all: the inner loop already moved the warp parameters warp_lr_mult times less.
            opt = torch.optim.SGD([*self.generator.refiner.parameters(), *warper], lr=o.lr, weight_decay=o.weight_decay)
        else:
            groups = [{"params": list(self.generator.refiner.parameters()), "lr": o.lr}]
            if warper:
                groups.append({"params": warper, "lr": o.lr * o.warp_lr_mult})
            opt = torch.optim.Adam(groups, betas=tuple(o.betas), weight_decay=o.weight_decay)
        # the log-rates get Adam of their own: steps of about inner_lr_lr whatever the outer algorithm's scale
        opts = [opt] if self.inner_log_lr is None else [opt, torch.optim.Adam([self.inner_log_lr], lr=m.inner_lr_lr)]
        if m.outer_lr_decay == "constant":
            return opts
        # linear to zero over the run (Reptile's annealing): with a constant step the final weights lean towards
        # the last few tasks' adapted weights, which costs the start on every other person
        total = max(1, int(self.trainer.estimated_stepping_batches)) if self._trainer is not None else 1
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: max(0.0, 1.0 - step / total))
        return opts, [{"scheduler": sched, "interval": "step"}]
