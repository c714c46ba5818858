"""wandb mode resolution and the CSV + wandb logger wiring."""
from __future__ import annotations

import numpy as np
import pytest

from src.config import compose
from src.errors import ConfigError
from src.loggers import build_loggers, configure_wandb_env, resolve_wandb_mode


@pytest.fixture
def no_wandb_key(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


def test_auto_mode_follows_the_api_key(no_wandb_key, monkeypatch):
    assert resolve_wandb_mode("auto") == "offline"
    (no_wandb_key / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password abc\n")
    (no_wandb_key / ".netrc").chmod(0o600)
    assert resolve_wandb_mode("auto") == "online"
    (no_wandb_key / ".netrc").unlink()
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert resolve_wandb_mode("auto") == "online"
    assert resolve_wandb_mode("disabled") == "disabled"
    with pytest.raises(ConfigError, match="logger.wandb.mode"):
        resolve_wandb_mode("sometimes")


def test_configure_sets_env_and_config(no_wandb_key):
    import os

    cfg = compose("warp", ["model=tiny"])
    assert configure_wandb_env(cfg) == "offline"
    assert os.environ["WANDB_MODE"] == "offline" and cfg.logger.wandb.mode == "offline"


def test_disabled_means_csv_only(tmp_path):
    cfg = compose("warp", ["model=tiny", "logger=disabled"])
    loggers = build_loggers(cfg, tmp_path)
    assert [type(logger).__name__ for logger in loggers] == ["CSVLogger"]


def test_offline_run_writes_wandb_and_csv(no_wandb_key, tmp_path):
    from tests.helpers import run_tiny

    cfg = compose("warp", ["model=tiny", "logger=offline", "trainer.max_epochs=2", "trainer.log_every_n_steps=1",
                              "optim.lr=0.1"])
    configure_wandb_env(cfg)
    run_dir = tmp_path / "run"
    run_tiny(cfg, run_dir)
    assert list((run_dir / "wandb").glob("offline-run-*/files"))
    header, *rows = (run_dir / "csv" / "metrics.csv").read_text().splitlines()
    col = header.split(",").index("train/loss")
    losses = [float(r.split(",")[col]) for r in rows if r.split(",")[col]]
    assert len(losses) == 16  # 2 epochs x 8 batches, every step logged
    assert np.mean(losses[-8:]) < 0.5 * np.mean(losses[:8])  # the tiny model learns


def test_each_run_gets_its_own_wandb_run(no_wandb_key, tmp_path):
    """Two stages in one process (as the stage orchestrator runs them) write two wandb runs."""
    from tests.helpers import run_tiny

    for name in ("first", "second"):
        cfg = compose("warp", ["model=tiny", "logger=offline", "trainer.max_epochs=1", f"run_name={name}"])
        configure_wandb_env(cfg)
        run_tiny(cfg, tmp_path / name)
        runs = list((tmp_path / name / "wandb").glob("offline-run-*"))
        assert len(runs) == 1 and runs[0].name.endswith(f"warp-{name}")


def test_wandb_starts_in_an_existing_folder_and_resumes_only_online(no_wandb_key, tmp_path):
    """wandb looks for git from its folder (and warns that a missing one "does not exist"); an offline run cannot
    be resumed, and wandb warns on every start when asked to."""
    from lightning.pytorch.loggers import WandbLogger

    cfg = compose("warp", ["model=tiny", "logger=offline"])
    run_dir = tmp_path / "stage1" / "run" / "warp"
    (wandb_logger,) = [lg for lg in build_loggers(cfg, run_dir) if isinstance(lg, WandbLogger)]
    assert run_dir.is_dir()
    assert wandb_logger._wandb_init["resume"] is None and wandb_logger._wandb_init["id"] == f"warp-{cfg.run_name}"
