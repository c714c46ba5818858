"""Config composition: precedence, struct errors, type checks, run folders and the train entry point."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from src import config as C
from src.errors import ConfigError
from tests.conftest import REPO


def test_every_stage_and_preset_composes():
    for stage in C.list_stages():
        for model in C.list_presets("model"):
            for trainer in C.list_presets("trainer"):
                cfg = C.compose(stage, [f"model={model}", f"trainer={trainer}"])
                assert cfg.stage == stage and cfg.presets.model == model
                assert not OmegaConf.missing_keys(cfg)


def test_precedence_default_stage_preset_cli():
    base = OmegaConf.load(C.CONFIG_DIR / "default.yaml")
    # default only
    assert C.compose("warp").optim.lr == base.optim.lr
    # the stage file beats the default
    assert C.compose("meta").optim.lr == pytest.approx(2e-5)
    # a preset beats the default and the stage's preset choice
    assert C.compose("warp").model.resolution == 128  # warp selects model=demo
    assert C.compose("warp", ["model=tiny"]).model.resolution == 64
    # the command line beats everything, in any order relative to the preset selection
    assert C.compose("warp", ["model.resolution=96", "model=tiny"]).model.resolution == 96
    assert C.compose("meta", ["optim.lr=1e-3"]).optim.lr == pytest.approx(1e-3)
    # the stage's own section exists only for that stage
    assert "meta" in C.compose("meta") and "meta" not in C.compose("warp")


def test_unknown_key_names_it_and_suggests():
    with pytest.raises(ConfigError) as e:
        C.compose("warp", ["trainer.max_epochz=1"])
    msg = str(e.value)
    assert "trainer.max_epochz" in msg and "trainer.max_epochs" in msg
    with pytest.raises(ConfigError, match="optim.lr"):
        C.compose("warp", ["lr=1"])
    # another stage's section is not a key of this stage
    with pytest.raises(ConfigError, match="meta.inner_steps"):
        C.compose("warp", ["meta.inner_steps=3"])


def test_type_mismatch_names_key_and_type():
    with pytest.raises(ConfigError, match=r"trainer\.max_epochs.*expects int"):
        C.compose("warp", ["trainer.max_epochs=abc"])
    with pytest.raises(ConfigError, match=r"trainer\.deterministic.*expects bool"):
        C.compose("warp", ["trainer.deterministic=3"])
    with pytest.raises(ConfigError, match=r"optim\.betas.*expects list"):
        C.compose("warp", ["optim.betas=0.9"])
    with pytest.raises(ConfigError, match=r"optim\.lr.*expects float"):
        C.compose("warp", ["optim.lr=fast"])


def test_values_are_coerced_losslessly():
    cfg = C.compose("warp", ["optim.lr=1", "optim.betas=[0.9,0.99]", "run_name=123", "warp.grad_clip_norm=0.5",
                             "trainer.max_steps=null"])
    assert isinstance(cfg.optim.lr, float) and cfg.optim.lr == 1.0
    assert list(cfg.optim.betas) == [0.9, 0.99]
    assert cfg.run_name == "123"
    assert cfg.warp.grad_clip_norm == 0.5  # null default accepts a value
    assert cfg.trainer.max_steps is None


def test_a_mistyped_choice_fails_at_compose_time_with_a_suggestion():
    with pytest.raises(ConfigError, match=r"'meta\.algorithm' must be one of reptile, fomaml, maml, got 'reptil'; "
                                          r"did you mean reptile\?"):
        C.compose("meta", ["meta.algorithm=reptil"])
    with pytest.raises(ConfigError, match="did you mean bicubic"):
        C.compose("sr", ["sr.lq=bicubik"])
    with pytest.raises(ConfigError, match="did you mean l1_msssim"):
        C.compose("warp", ["loss.perceptual=l1_mssim"])
    with pytest.raises(ConfigError, match="logger.wandb.mode"):
        C.compose("warp", ["logger.wandb.mode=sometimes"])
    # values that only work together are checked there too, before anything is built
    with pytest.raises(ConfigError, match="inner_optimizer=sgd"):
        C.compose("meta", ["meta.algorithm=maml", "loss.perceptual=vgg19"])
    with pytest.raises(ConfigError, match="query_tail"):
        C.compose("meta", ["meta.query_tail=1.5"])
    for bad in ("0", "2.5"):
        with pytest.raises(ConfigError, match="episodes_per_person"):
            C.compose("meta", [f"meta.episodes_per_person={bad}"])
    assert C.compose("meta", ["meta.episodes_per_person=4"]).meta.episodes_per_person == 4
    with pytest.raises(ConfigError, match="source_frame=typical"):
        C.compose("meta", ["meta.source_frame=typical"])  # the query from another clip (the default)
    with pytest.raises(ConfigError, match="must be one of"):
        C.compose("meta", ["meta.source_frame=first"])
    assert C.compose("meta", ["meta.source_frame=typical", "meta.query_from_other_clip=false"]).meta.source_frame == \
        "typical"
    with pytest.raises(ConfigError, match="model.sr.scale"):
        C.compose("sr", ["model.sr.scale=3"])


def test_data_resolution_follows_model_resolution():
    assert C.compose("warp", ["model=tiny"]).data.resolution == 64
    assert C.compose("refine", ["model=demo", "model.resolution=96"]).data.resolution == 96
    assert C.compose("sr", ["model=demo"]).data.resolution == 512 // 4  # SR's input: the base model's frames
    assert C.compose("warp", ["model=tiny", "data.resolution=64"]).data.resolution == 64  # agreeing is fine
    with pytest.raises(ConfigError, match="data.resolution=96 differs from model.resolution, 64"):
        C.compose("warp", ["model=tiny", "data.resolution=96"])


def test_every_stage_config_has_a_runner():
    from src.stages import STAGE_RUNNERS, stage_runner

    assert set(C.list_stages()) == set(STAGE_RUNNERS)
    assert all(callable(stage_runner(s)) for s in STAGE_RUNNERS)


def test_bad_preset_stage_and_argument():
    with pytest.raises(ConfigError, match="tiny"):
        C.compose("warp", ["model=tinyy"])
    with pytest.raises(ConfigError, match="did you mean warp"):
        C.compose("wrap")
    with pytest.raises(ConfigError, match="key=value"):
        C.compose("warp", ["trainer.max_epochs"])


def test_a_typo_inside_a_preset_file_is_caught(tmp_path, monkeypatch):
    cfg_dir = tmp_path / "lightning_configs"
    subprocess.run(["cp", "-r", str(C.CONFIG_DIR), str(cfg_dir)], check=True)
    (cfg_dir / "model" / "typo.yaml").write_text("model:\n  resolutoin: 64\n")
    monkeypatch.setattr(C, "CONFIG_DIR", cfg_dir)
    with pytest.raises(ConfigError, match=r"model\.resolutoin.*model/typo\.yaml.*model\.resolution"):
        C.compose("warp", ["model=typo"])


def test_run_name_is_stable_per_command():
    a = C.compose("warp", ["model=tiny", "trainer.max_epochs=2"])
    b = C.compose("warp", ["trainer.max_epochs=2", "model=tiny"])
    c = C.compose("warp", ["model=tiny", "trainer.max_epochs=3"])
    assert a.run_name == b.run_name != c.run_name
    assert a.run_name.startswith("tiny-")
    assert C.compose("warp").run_name == "demo"
    assert C.compose("warp", ["run_name=mine"]).run_name == "mine"
    assert C.run_dir_of(a) == Path("outputs") / "warp" / a.run_name


def test_save_config_keeps_an_earlier_different_config(tmp_path):
    cfg = C.compose("warp", ["model=tiny"])
    path = C.save_config(cfg, tmp_path)
    assert OmegaConf.load(path) == cfg
    C.save_config(cfg, tmp_path)  # same config: nothing to keep
    assert not (tmp_path / "config.1.yaml").exists()
    cfg.trainer.max_epochs = 5
    C.save_config(cfg, tmp_path)
    assert OmegaConf.load(tmp_path / "config.1.yaml").trainer.max_epochs == 1
    assert OmegaConf.load(path).trainer.max_epochs == 5


def _train_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "src.train", *args], cwd=REPO, capture_output=True, text=True)


def test_cli_mistyped_key_is_one_line_nonzero():
    r = _train_cli("warp", "trainer.max_epochz=1")
    assert r.returncode != 0
    assert "max_epochz" in r.stderr and "max_epochs" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_cli_help_lists_stages_and_presets():
    r = _train_cli("--help")
    assert r.returncode == 0
    for name in ["warp", "refine", "meta", "sr", "model=tiny", "model=full", "trainer=ddp", "logger=disabled"]:
        assert name in r.stdout


def test_cli_missing_data_and_unwritable_output(tmp_path, monkeypatch):
    from src import stages, train

    monkeypatch.setitem(stages.STAGE_RUNNERS, "warp", "tests.helpers:run_tiny")
    rc = train.main(["warp", "model=tiny", f"data.root={tmp_path / 'nope'}", f"output_root={tmp_path}"])
    assert rc == 2
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    rc = train.main(["warp", "model=tiny", f"data.root={tmp_path}", f"output_root={blocker / 'runs'}"])
    assert rc == 2
    err = _train_cli("warp", "model=tiny", f"data.root={tmp_path / 'nope'}").stderr
    assert "data.root" in err and "Traceback" not in err


def test_train_writes_resolved_config_and_logs(tmp_path, monkeypatch):
    """The whole entry point with a minimal LightningModule: run folder, config, seeds, CSV + wandb offline."""
    from src import stages, train

    monkeypatch.setitem(stages.STAGE_RUNNERS, "warp", "tests.helpers:run_tiny")
    monkeypatch.delenv("WANDB_MODE", raising=False)  # restored after the test
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc: `auto` must resolve to offline
    args = ["warp", "model=tiny", f"data.root={tmp_path}", f"output_root={tmp_path / 'runs'}",
            "trainer.max_epochs=3", "trainer.log_every_n_steps=1"]
    assert train.main(args) == 0
    cfg = C.compose("warp", args[1:])
    run_dir = tmp_path / "runs" / "warp" / cfg.run_name
    saved = OmegaConf.load(run_dir / "config.yaml")
    assert saved.trainer.max_epochs == 3 and saved.logger.wandb.mode == "offline"
    metrics = (run_dir / "csv" / "metrics.csv").read_text().splitlines()
    assert "train/loss" in metrics[0] and "val/loss" in metrics[0]
    assert list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()


def _probe_repeatedly(run_dir: str, n: int, start) -> None:
    from src.training import prepare_run_dir

    start.wait()  # both processes at once, as the ranks of a launch are
    for _ in range(n):
        prepare_run_dir(Path(run_dir))


def test_ranks_preparing_one_run_folder_at_once_do_not_trip_over_each_other(tmp_path):
    # every DDP rank runs src.train: with one shared probe name, one rank's unlink removed the other's probe and it
    # stopped with "cannot write the run folder" (seen once in a torchrun test run)
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    start = ctx.Barrier(2)
    procs = [ctx.Process(target=_probe_repeatedly, args=(str(tmp_path / "run"), 2000, start)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    assert list((tmp_path / "run").iterdir()) == []  # every probe removed


def test_only_the_launch_rank_zero_writes_the_config(monkeypatch):
    from src.training import is_launch_rank_zero

    for k in ("RANK", "NODE_RANK", "LOCAL_RANK", "SLURM_PROCID"):
        monkeypatch.delenv(k, raising=False)
    assert is_launch_rank_zero()
    for k, v in (("RANK", "0"), ("LOCAL_RANK", "1"), ("NODE_RANK", "1"), ("SLURM_PROCID", "3")):
        monkeypatch.setenv(k, v)
        assert is_launch_rank_zero() == (v == "0"), k
        monkeypatch.delenv(k)
