"""Run by tests/test_stage1.py: a 2-process CPU DDP (gloo) fast_dev_run of a stage-1 module; each rank
writes a hash of its final weights and the identities it trained on.
Usage: ddp_stage1.py SHARDS OUT warp|refine|meta [key=value ...]"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import lightning as L
from omegaconf import OmegaConf

from data_modules.voxceleb2 import VoxCeleb2DataModule
from src.config import compose


class WeightsHash(L.Callback):
    def __init__(self, out: str):
        self.out, self.identities = out, []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.identities += list(batch["identity"])

    def on_train_end(self, trainer, module):
        h = hashlib.sha1()
        for k, v in sorted(module.state_dict().items()):
            h.update(k.encode() + v.detach().float().cpu().numpy().tobytes())
        Path(self.out, f"rank{trainer.global_rank}.json").write_text(
            json.dumps({"hash": h.hexdigest(), "step": trainer.global_step, "world_size": trainer.world_size,
                        "identities": self.identities}))


if __name__ == "__main__":
    shards, out, stage, *extra = sys.argv[1:]
    cfg = compose(stage, ["model=tiny", f"data.root={shards}", "logger=disabled", *extra])
    dm = VoxCeleb2DataModule.from_config(cfg)
    if stage == "warp":
        from src.modules.warping_module import WarpingModule as Module
    elif stage == "refine":
        from src.modules.refiner_module import RefinerModule as Module
    else:
        from src.modules.meta_module import MetaLearnerModule as Module
    module = Module(OmegaConf.to_container(cfg, resolve=True), dm.id_dim)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", fast_dev_run=2, logger=False,
                        inference_mode=cfg.trainer.inference_mode,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[WeightsHash(out)])
    trainer.fit(module, datamodule=dm)
    from src.trainer import close_distributed

    close_distributed()  # as src.train does: gloo's group torn down before exit
