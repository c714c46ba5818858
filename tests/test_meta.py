"""Meta-learning: the inner/outer loops of MetaLearnerModule, the `meta` stage runner, DDP."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf

from data_modules.voxceleb2 import VoxCeleb2DataModule
from src import train
from src.config import compose
from src.errors import UserError
from src.modules.meta_module import MetaLearnerModule
from tests.conftest import REPO


def _meta(shards, *extra):
    cfg = compose("meta", ["model=tiny", f"data.root={shards}", "logger=disabled", *extra])
    dm = VoxCeleb2DataModule.from_config(cfg)
    dm.setup("fit")
    torch.manual_seed(0)
    module = MetaLearnerModule(OmegaConf.to_container(cfg, resolve=True), dm.id_dim)
    batch = dm.on_after_batch_transfer(next(iter(dm.val_dataloader())), 0)
    return module, batch


def _outer_grads(module, batch):
    module.generator.zero_grad(set_to_none=True)
    objective, stats = module.outer_objective(batch)
    objective.backward()
    return {n: p.grad.clone() for n, p in module.generator.named_parameters()}, stats


def _adapted_query_loss(module, batch) -> float:
    total = 0.0
    for t in range(batch["source"].shape[0]):
        fast, _ = module.adapt(batch, t, module.cfg.meta.inner_steps)
        with torch.no_grad():
            total += float(module.query_loss(fast, batch, t)[0])
    return total


def test_reptile_outer_gradient_is_theta_minus_adapted(shards):
    # inner SGD: Adam's first steps divide near-zero gradients by their own magnitude, which turns the ~1e-9
    # run-to-run noise of CPU convolution gradients into visible differences, and this test compares two runs
    module, batch = _meta(shards, "meta.algorithm=reptile", "meta.inner_optimizer=sgd", "meta.inner_lr=0.001")
    assert batch["source"].shape[0] == 2 and batch["support"].shape[1] == 4
    grads, stats = _outer_grads(module, batch)
    theta = {n: p.detach().clone() for n, p in module.generator.named_parameters()}
    expected = {n: torch.zeros_like(p) for n, p in theta.items()}
    for t in range(2):
        fast, hist = module.adapt(batch, t, module.cfg.meta.inner_steps)
        assert len(hist) == module.cfg.meta.inner_steps
        # adapting lowers the loss on the task's support frames (each inner step sees other frames, so the
        # history compares different frames: under the mesh prior their losses differ more than a step changes)
        every = list(range(batch["support"].shape[1]))
        with torch.no_grad():
            assert module.task_loss(fast, batch, t, "support", every)[0] < module.task_loss(theta, batch, t, "support",
                                                                                            every)[0]
        for n in theta:
            expected[n] += (theta[n] - fast[n].detach()) / 2
    assert sum(float(g.abs().sum()) for g in grads.values()) > 0
    for n in theta:
        assert torch.allclose(grads[n], expected[n], rtol=1e-4, atol=1e-9), n
    # an outer SGD step moves theta towards the mean of the adapted weights
    mean_fast = {n: theta[n] - expected[n] for n in theta}
    dist = lambda a: sum(float((a[n] - mean_fast[n]).pow(2).sum()) for n in theta) ** 0.5  # noqa: E731
    stepped = {n: theta[n] - 0.5 * grads[n] for n in theta}
    assert dist(stepped) == pytest.approx(0.5 * dist(theta), rel=1e-4)


def test_reptile_with_outer_sgd_at_lr_1_lands_on_the_mean_adapted_weights(shards):
    module, batch = _meta(shards, "meta.algorithm=reptile", "meta.inner_optimizer=sgd", "meta.inner_lr=0.001",
                          "meta.outer_optimizer=sgd", "optim.lr=1.0")
    (opt,) = module.configure_optimizers()
    assert isinstance(opt, torch.optim.SGD)
    theta = {n: p.detach().clone() for n, p in module.generator.named_parameters()}
    mean_fast = {n: torch.zeros_like(p) for n, p in theta.items()}
    for t in range(2):
        fast, _ = module.adapt(batch, t, module.cfg.meta.inner_steps)
        for n in theta:
            mean_fast[n] += fast[n].detach() / 2
    opt.zero_grad(set_to_none=True)
    module.outer_objective(batch)[0].backward()
    opt.step()
    moved = 0.0
    for n, p in module.generator.named_parameters():
        assert torch.allclose(p.detach(), mean_fast[n], rtol=1e-4, atol=1e-7), n
        moved += float((p.detach() - theta[n]).abs().sum())
    assert moved > 0
    with pytest.raises(UserError, match="outer_optimizer"):
        _meta(shards, "meta.outer_optimizer=rmsprop")


@pytest.mark.parametrize("outer", ["sgd", "adam"])
def test_outer_update_refiner_leaves_the_warper_at_its_start(shards, outer):
    # the inner loop still adapts the warper (the outer gradient reaches it), but the outer step does not move it
    module, batch = _meta(shards, "meta.algorithm=reptile", "meta.inner_optimizer=sgd", "meta.inner_lr=0.001",
                          f"meta.outer_optimizer={outer}", "optim.lr=0.5", "meta.outer_update=refiner")
    (opt,) = module.configure_optimizers()
    stepped = {id(p) for g in opt.param_groups for p in g["params"]}
    assert stepped == {id(p) for p in module.generator.refiner.parameters()}
    before = {n: p.detach().clone() for n, p in module.generator.named_parameters()}
    module.generator.zero_grad(set_to_none=True)
    module.outer_objective(batch)[0].backward()
    assert float(module.generator.warper.flow_head.weight.grad.abs().sum()) > 0  # the warper was adapted
    opt.step()
    after = dict(module.generator.named_parameters())
    assert all(torch.equal(after[n], v) for n, v in before.items() if n.startswith("warper."))
    assert any(not torch.equal(after[n], v) for n, v in before.items() if n.startswith("refiner."))
    with pytest.raises(UserError, match="outer_update"):
        _meta(shards, "meta.outer_update=warper")


def test_linear_outer_lr_decay_reaches_zero_at_the_last_step(shards):
    from types import SimpleNamespace

    module, _ = _meta(shards, "meta.outer_optimizer=sgd", "meta.outer_lr_decay=linear", "optim.lr=0.5")
    module._trainer = SimpleNamespace(estimated_stepping_batches=4)  # what a Trainer with max_steps=4 reports
    (opt,), (sched,) = module.configure_optimizers()
    module._trainer = None
    sched = sched["scheduler"]
    lrs = []
    for _ in range(5):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.5, 0.375, 0.25, 0.125, 0.0])
    with pytest.raises(UserError, match="outer_lr_decay"):
        _meta(shards, "meta.outer_lr_decay=cosine")


def test_fomaml_gradient_depends_on_the_query_and_lowers_the_adapted_query_loss(shards):
    module, batch = _meta(shards, "meta.algorithm=fomaml")
    grads, stats = _outer_grads(module, batch)
    assert "query_loss" in stats
    # the query set matters: other query frames give another outer gradient (the original never used it)
    other = dict(batch)
    for key in [k for k in batch if k.startswith("query") and torch.is_tensor(batch[k])]:
        other[key] = batch[key].flip(1)[:, :2]
    grads_other, _ = _outer_grads(module, other)
    diff = sum(float((grads[n] - grads_other[n]).abs().sum()) for n in grads)
    assert diff > 1e-3 * sum(float(g.abs().sum()) for g in grads.values())
    # a small step along -g lowers the query loss reached after adaptation
    before = _adapted_query_loss(module, batch)
    with torch.no_grad():
        for n, p in module.generator.named_parameters():
            p -= 1e-3 * grads[n]
    assert _adapted_query_loss(module, batch) < before


def test_multi_step_loss_averages_the_query_gradient_over_the_start_and_every_inner_step(shards):
    module, batch = _meta(shards, "meta.algorithm=fomaml", "meta.multi_step_loss=true", "meta.inner_steps=1",
                          "meta.inner_optimizer=sgd", "meta.inner_lr=0.001")
    grads, stats = _outer_grads(module, batch)
    assert stats["query_loss_unadapted"] != stats["query_loss"]
    theta = {n: p.detach().clone() for n, p in module.generator.named_parameters()}
    expected = {n: torch.zeros_like(p) for n, p in theta.items()}
    for t in range(2):
        adapted, _ = module.adapt(batch, t, 1)
        for weights in (theta, adapted):  # the start, then after the one inner step
            w = {n: p.detach().clone().requires_grad_(True) for n, p in weights.items()}
            loss, _ = module.query_loss(w, batch, t)
            for n, g in zip(w, torch.autograd.grad(loss, list(w.values()))):
                expected[n] += g / 4
    for n in theta:
        assert torch.allclose(grads[n], expected[n], rtol=1e-3, atol=1e-8), n
    with pytest.raises(UserError, match="multi_step_loss"):
        _meta(shards, "meta.algorithm=reptile", "meta.multi_step_loss=true")


@pytest.mark.parametrize("generator", [["model.warp.mesh_prior=false", "model.refiner.blend_warped=false"],
                                       ["model.warp.mesh_prior=true", "model.refiner.blend_warped=true"]],
                         ids=["learned_only", "mesh_prior"])
def test_learned_inner_rate_gradient_is_the_derivative_of_the_adapted_query_loss(shards, generator):
    # one inner SGD step: theta_1 = theta_0 - rate * g_0 with g_0 independent of the rate, so the first-order
    # formula <dL_q/dtheta_1, theta_1 - theta_0> is the exact derivative in log(rate): checked by finite differences
    # in float64. On the prior the rate gradients are ~100x smaller, so the check needs the loss itself in float64:
    # with the MS-SSIM term in float32 its rounding (~1e-7) read as a 15 % disagreement
    module, batch = _meta(shards, "meta.algorithm=fomaml", "meta.inner_optimizer=sgd", "meta.inner_lr=0.05",
                          "meta.inner_steps=1", "meta.learn_inner_lr=true", *generator)
    module.double()
    batch = {k: v.double() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in batch.items()}
    assert module.inner_log_lr.shape == (len(module.param_names),
                                         ) and float(module.inner_log_lr.detach().abs().sum()) == 0
    objective, _ = module.outer_objective(batch)
    objective.backward()
    grad = module.inner_log_lr.grad.clone()
    assert float(grad.abs().sum()) > 0
    for i in grad.abs().topk(2).indices.tolist():  # the two rates that matter most
        losses = []
        for eps in (1e-3, -1e-3):
            with torch.no_grad():
                module.inner_log_lr[i] = eps
            fast = [module.adapt(batch, t, 1)[0] for t in range(2)]
            with torch.no_grad():
                losses.append(sum(float(module.query_loss(f, batch, t)[0]) for t, f in enumerate(fast)) / 2)
        with torch.no_grad():
            module.inner_log_lr[i] = 0.0
        assert grad[i].item() == pytest.approx((losses[0] - losses[1]) / 2e-3, rel=2e-3), module.param_names[i]


def test_learned_rates_are_stepped_bounded_saved_and_read_back(shards, tmp_path):
    from src.checkpoints import learned_lr_scales, save_checkpoint
    from src.modules.personalize_module import PersonalizeModule

    module, batch = _meta(shards, "meta.algorithm=reptile", "meta.inner_optimizer=sgd", "meta.inner_lr=0.001",
                          "meta.learn_inner_lr=true", "meta.inner_lr_lr=0.5", "meta.inner_lr_scale_max=1.2")
    opt, rate_opt = module.configure_optimizers()
    assert rate_opt.param_groups[0]["params"] == [module.inner_log_lr]
    theta = {n: p.detach().clone() for n, p in module.generator.named_parameters()}
    module.outer_objective(batch)[0].backward()
    assert module.inner_log_lr.grad is not None and float(module.inner_log_lr.grad.abs().sum()) > 0
    # reptile's own outer gradient is unchanged by the rates' query term
    rate_opt.step()
    with torch.no_grad():  # what training_step does after the step
        module.inner_log_lr.clamp_(-torch.log(torch.tensor(1.2)), torch.log(torch.tensor(1.2)))
    scale = module.inner_lr_scale()
    assert max(scale.values()) <= 1.2 + 1e-6 and min(scale.values()) >= 1 / 1.2 - 1e-6
    assert len(set(round(v, 6) for v in scale.values())) > 1  # Adam's first step: +-0.5, clamped to +-log 1.2
    # the inner loop runs at the learned rates: one SGD step moves each tensor rate * scale * gradient
    fast, _ = module.adapt(batch, 0, 1)
    start = {n: v.clone().requires_grad_(True) for n, v in theta.items()}
    loss, _ = module.task_loss(start, batch, 0, "support", [0, 1])
    grads = dict(zip(theta, torch.autograd.grad(loss, list(start.values()))))
    for n in (module.param_names[0], module.param_names[-1]):  # a warp tensor (warp_lr_mult) and a refiner one
        lr = module._lr(n, module.cfg.meta.inner_lr) * scale[n]
        assert torch.allclose(fast[n].detach(), theta[n] - lr * grads[n], rtol=1e-4, atol=1e-8), n
    # saved as plain floats by name (weights_only), read back by personalization, applied on top of its rate
    ckpt = {"state_dict": {f"generator.{k}": v for k, v in module.generator.state_dict().items()},
            "hyper_parameters": dict(module.hparams)}
    module.on_save_checkpoint(ckpt)
    save_checkpoint(ckpt, tmp_path / "meta.ckpt")
    read = learned_lr_scales(tmp_path / "meta.ckpt")
    assert read == pytest.approx(scale)
    pm = PersonalizeModule(module.hparams["cfg"], module.hparams["id_dim"], 2e-4, module.generator, read)
    lr_of = {id(p): g["lr"] for g in pm.configure_optimizers().param_groups for p in g["params"]}
    for n, p in module.generator.named_parameters():
        assert lr_of[id(p)] == pytest.approx(module._lr(n, 2e-4) * scale[n]), n
    save_checkpoint({"state_dict": ckpt["state_dict"]}, tmp_path / "stage1.ckpt")
    assert learned_lr_scales(tmp_path / "stage1.ckpt") is None  # a checkpoint without rates: the plain rate
    with pytest.raises(UserError, match="do not name"):  # a meta run of another config
        PersonalizeModule(module.hparams["cfg"], module.hparams["id_dim"], 2e-4, module.generator,
                          {"x": 1.0}).param_lrs()
    with pytest.raises(UserError, match="inner_lr_scale_max"):
        _meta(shards, "meta.learn_inner_lr=true", "meta.inner_lr_scale_max=0.5")


def test_one_outer_step_is_one_global_step_with_learned_rates(shards):
    """Two optimizers (weights, rates) step per batch; Lightning would count both (issue #17958), which ended
    trainer.max_steps at half the outer steps with the linear decay only half way down."""
    import lightning as L

    cfg = compose("meta", ["model=tiny", f"data.root={shards}", "logger=disabled", "meta.learn_inner_lr=true",
                           "meta.inner_steps=1", "meta.outer_optimizer=sgd", "meta.outer_lr_decay=linear",
                           "optim.lr=0.5"])
    dm = VoxCeleb2DataModule.from_config(cfg)
    module = MetaLearnerModule(OmegaConf.to_container(cfg, resolve=True), dm.id_dim)
    batches = []
    counter = L.Callback()
    counter.on_train_batch_end = lambda trainer, *_: batches.append(trainer.global_step)
    trainer = L.Trainer(accelerator="cpu", max_steps=3, max_epochs=-1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, limit_val_batches=0, enable_model_summary=False,
                        inference_mode=False, callbacks=[counter])
    trainer.fit(module, datamodule=dm)
    assert batches == [1, 2, 3] and trainer.global_step == 3
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.0)  # the decay reached zero at the end
    assert float(module.inner_log_lr.detach().abs().sum()) > 0  # the rates' optimizer stepped too
    assert trainer.optimizers[1].state[module.inner_log_lr]["step"] == 3


def test_maml_is_second_order_and_needs_inner_sgd(shards, tmp_path):
    with pytest.raises(UserError, match="inner_optimizer=sgd"):
        _meta(shards, "meta.algorithm=maml")
    with pytest.raises(UserError, match="loss.perceptual=vgg19"):
        _meta(shards, "meta.algorithm=maml", "meta.inner_optimizer=sgd")
    # VGG19 features in torchvision's format (random weights: this checks the calculus, not the features)
    from src.losses.perceptual import VGG19_FILE, vgg19_features

    vgg = tmp_path / VGG19_FILE
    torch.save({f"features.{k}": v for k, v in vgg19_features().state_dict().items()}, vgg)
    # the calculus is the generator's, whatever its warp: checked on the learned-only one, where the first-order
    # term does not dwarf the Hessian term (on the mesh prior the flow head's large gradient does: cos 0.99999)
    module, batch = _meta(shards, "meta.algorithm=maml", "meta.inner_optimizer=sgd", "meta.inner_lr=1e-4",
                          "loss.perceptual=vgg19", f"loss.vgg19_weights={vgg}", "loss.perceptual_scales=[1.0]",
                          "model.warp.mesh_prior=false", "model.refiner.blend_warped=false")
    g2, _ = _outer_grads(module, batch)
    module.cfg.meta.algorithm = "fomaml"
    g1, _ = _outer_grads(module, batch)
    flat = lambda g: torch.cat([v.flatten() for v in g.values()])  # noqa: E731
    a, b = flat(g2), flat(g1)
    assert torch.isfinite(a).all()
    cos = float(a @ b / (a.norm() * b.norm()))
    assert 0.5 < cos < 0.999  # close to the first-order gradient, but not equal: the Hessian term is there


def test_validation_adapts_and_logs_the_gain(shards, tmp_path):
    module, batch = _meta(shards, "meta.val_adapt_steps=3", "optim.lr=1e-3")
    logged = {}
    module.log = lambda name, value, **kw: logged.__setitem__(name, value)  # noqa: E731
    module.validation_step(batch, 0)
    module.on_validation_epoch_end()  # the running means are reduced and logged here
    assert logged["val/query_loss_after"] < logged["val/query_loss_before"]
    assert logged["val/adapt_gain"] == pytest.approx(logged["val/query_loss_before"] - logged["val/query_loss_after"],
                                                     rel=1e-4)  # float32 means


def test_meta_stage_starts_from_the_latest_stage1_run_and_records_lineage(shards, tmp_path):
    common = ["model=tiny", "logger=disabled", f"data.root={shards}", f"output_root={tmp_path}",
              "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "trainer.enable_progress_bar=false"]
    assert train.main(["stage1", *common, "stage1.warp_epochs=1", "stage1.refine_epochs=1", "run_name=s1"]) == 0
    assert train.main(["meta", *common, "trainer.max_epochs=1", "run_name=m"]) == 0
    record = json.loads((tmp_path / "meta" / "m" / "stages.json").read_text())
    assert list(record["stages"]) == ["warp", "refine", "meta"]
    assert record["stages"]["meta"]["init"] == record["stages"]["refine"]["checkpoint"]
    assert record["stages"]["meta"]["status"] == "done"
    ckpt = torch.load(record["stages"]["meta"]["checkpoint"], weights_only=True)
    assert ckpt["global_step"] > 0 and any(k.startswith("generator.") for k in ckpt["state_dict"])
    # done: a re-run does not train again
    assert train.main(["meta", *common, "trainer.max_epochs=1", "run_name=m"]) == 0
    with pytest.raises(UserError, match="no finished refine"):
        from src.lineage import latest_checkpoint

        latest_checkpoint(tmp_path / "nothing", ("refine",))


@pytest.mark.slow
@pytest.mark.parametrize("algorithm,extra", [("reptile", ["meta.learn_inner_lr=true"]), ("fomaml", []),
                                             ("reptile", ["meta.learn_inner_lr=true", "meta.outer_update=refiner"])])
def test_ddp_meta_keeps_ranks_identical(shards, tmp_path, algorithm, extra):
    # the hash covers the whole module state: with learned rates, those are the same on both ranks too
    r = subprocess.run([sys.executable, str(REPO / "tests" / "scripts" / "ddp_stage1.py"), str(shards), str(tmp_path),
                        "meta", f"meta.algorithm={algorithm}", *extra], cwd=REPO, capture_output=True, text=True,
                        timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{i}.json").read_text()) for i in range(2)]
    assert ranks[0]["world_size"] == 2 and ranks[0]["step"] > 0
    assert set(ranks[0]["identities"]).isdisjoint(ranks[1]["identities"])  # the ranks adapted to different people
    assert ranks[0]["hash"] == ranks[1]["hash"]  # yet the outer update was the same on both
