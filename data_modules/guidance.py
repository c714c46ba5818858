"""The DataModule base every stage's data shares: batches reach the device as uint8, become float there, and get
their landmark guidance (landmark images, gaze heat-maps, eye and mouth masks) rendered on that device."""
from __future__ import annotations

import lightning as L
import torch


class GuidanceDataModule(L.LightningDataModule):
    """Renders landmark guidance on the device the batch was moved to (GPU in training, CPU in tests)."""

    render: bool = True
    edges: str = "contours"
    _renderer = None

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        to_float(batch)
        if self.render:
            render_guidance(batch, self.renderer(batch), self.spec.resolution)
        return batch

    def to_device(self, batch: dict, device: torch.device) -> dict:
        """A loader batch on `device`, ready for the model, as the Trainer hands it over (for loops outside one)."""
        return self.on_after_batch_transfer(self.transfer_batch_to_device(batch, device, 0), 0)

    def renderer(self, batch: dict):
        from src.faces.render import LandmarkRenderer

        device = next(v.device for v in batch.values() if torch.is_tensor(v))
        if self._renderer is None:
            self._renderer = LandmarkRenderer(self.edges)
        return self._renderer.to(device)


def to_float(batch: dict) -> dict:
    """uint8 image tensors -> float in [0, 1], in place, on whatever device they are."""
    for k, v in batch.items():
        if torch.is_tensor(v) and v.dtype == torch.uint8:
            batch[k] = v.float().div_(255.0)
    return batch


def render_guidance(batch: dict, renderer, size: int) -> dict:
    """Add `<name>_lmk_img` for every `<name>_landmarks` (flattening frame axes), and gaze maps and eye/mouth
    masks of the driving (pairs) or query (episodes) frames."""
    from src.faces.render import gaze_heatmaps, region_masks

    for key in [k for k in batch if k.endswith("_landmarks")]:
        lm = batch[key]
        flat = lm.reshape(-1, *lm.shape[-2:])
        name = key[: -len("_landmarks")]
        batch[f"{name}_lmk_img"] = renderer(flat, size).reshape(*lm.shape[:-2], 3, size, size)
        if name in ("driving", "query", "support"):
            gaze = gaze_heatmaps(flat, size)
            eyes, mouth = region_masks(flat, size)
            batch[f"{name}_gaze"] = gaze.reshape(*lm.shape[:-2], 2, size, size)
            batch[f"{name}_eye_mask"] = eyes.reshape(*lm.shape[:-2], 1, size, size)
            batch[f"{name}_mouth_mask"] = mouth.reshape(*lm.shape[:-2], 1, size, size)
    return batch


def collate(samples: list[dict]) -> dict:
    out = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        out[key] = torch.stack(values) if torch.is_tensor(values[0]) else values
    return out
