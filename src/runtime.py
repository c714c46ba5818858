"""Where the networks run: in torch, or in onnxruntime on graphs exported from the checkpoints (src.export).

The per-frame work splits at the networks. What comes before them depends on the landmarks alone and has
data-dependent shapes (landmark images, gaze heat-maps, the mouth mask, the mesh flow's rasterisation); it stays
in torch. The networks have fixed shapes, and they are what a graph holds:

    source.onnx   the source crop (1, 3, R, R) -> the refiner's feature pyramid, once per video
    frame.onnx    a batch of B frames: source, guidance images, identity, mesh flow, pyramid (one per frame: a
                  still source's broadcast) -> frames (B, 3, R, R)
    sr.onnx       one SR window (1, T, 3, R, R) -> (1, T, 3, 2R, 2R)

A graph's batch is fixed when it is exported (the last batch of a video is padded by repeating its last frame,
as SR windows are): fixed shapes are what TensorRT engines want, and the exporter loses the channel counts of
the instance norms with a dynamic batch. OnnxGenerator and OnnxSR are nn.Modules with the call signatures of the
torch models, so src.inference runs either unchanged. manifest.json ties the graphs to the checkpoints they were
exported from (src.files.fingerprint), and loading them for another checkpoint is refused.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from src.errors import UserError

OPSET = 20  # affine_grid (the identity grid of every warp) needs 20; onnxruntime 1.20 runs up to 21
MANIFEST = "manifest.json"
FRAME_INPUTS = ("source", "source_lmk", "driving_lmk", "identity", "gaze", "mouth_mask")


# ------------------------------------------------------------------------------------------------- export
def _register_symbolics() -> None:
    """Two ops the TorchScript exporter cannot write as torch computes them:
    - antialiased bilinear resizing (every downscale of the guidance): ONNX Resize with antialias=1 and
      exclude_outside=1 is torch's filter, renormalised at the borders (measured equal to 1e-7);
    - instance norm without affine weights (AdaIN, SPADE): the stock symbolic needs the channel count, which
      shape inference loses after a Resize; the unit scale and zero bias are made from the input's shape."""
    from torch.onnx import register_custom_op_symbolic
    from torch.onnx import symbolic_helper as sh

    def resize_aa(g, x, output_size, align_corners, scales):
        if sh._maybe_get_const(align_corners, "b"):
            raise UserError("export: antialiased resizing with align_corners=True has no ONNX equivalent")
        batch_channels = g.op("Slice", g.op("Shape", x), g.op("Constant", value_t=torch.tensor([0])),
                              g.op("Constant", value_t=torch.tensor([2])))
        sizes = g.op("Concat", batch_channels, g.op("Cast", output_size, to_i=7), axis_i=0)  # 7: int64
        empty = g.op("Constant", value_t=torch.tensor([], dtype=torch.float32))
        return g.op("Resize", x, empty, empty, sizes, antialias_i=1, exclude_outside_i=1, mode_s="linear",
                    coordinate_transformation_mode_s="half_pixel")

    def instance_norm(g, x, weight, bias, running_mean, running_var, use_input_stats, momentum, eps, cudnn):
        if sh._is_none(weight) or sh._is_none(bias):
            channels = g.op("Slice", g.op("Shape", x), g.op("Constant", value_t=torch.tensor([1])),
                            g.op("Constant", value_t=torch.tensor([2])))
            if sh._is_none(weight):
                weight = g.op("ConstantOfShape", channels, value_t=torch.tensor([1.0]))
            if sh._is_none(bias):
                bias = g.op("ConstantOfShape", channels, value_t=torch.tensor([0.0]))
        return g.op("InstanceNormalization", x, weight, bias, epsilon_f=sh._get_const(eps, "f", "eps"))

    register_custom_op_symbolic("aten::_upsample_bilinear2d_aa", resize_aa, OPSET)
    register_custom_op_symbolic("aten::instance_norm", instance_norm, OPSET)


class SourceGraph(nn.Module):
    """source (1, 3, R, R) -> the refiner's pyramid, as a tuple (what the graph returns)."""

    def __init__(self, generator):
        super().__init__()
        self.generator = generator

    def forward(self, source: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.generator.source_features(source))


class FrameGraph(nn.Module):
    """The generator for a batch of frames, with every input a tensor in a fixed order: FRAME_INPUTS, then the
    prior's inputs (`prior_names`: the mesh flow, and mouth_unseen with the mouth prior), then the pyramid's levels."""

    def __init__(self, generator):
        super().__init__()
        self.generator = generator

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        named = dict(zip(FRAME_INPUTS, inputs))
        rest = inputs[len(FRAME_INPUTS):]
        priors = prior_names(self.generator.warper.cfg)
        named.update(zip(priors, rest))
        feats = list(rest[len(priors):])
        return self.generator(**named, source_feats=feats)["output"]


def prior_names(warp_cfg) -> tuple[str, ...]:
    """The frame graph's inputs that the mesh prior computes outside it (src.models.warping.prior_inputs)."""
    return ("mesh_flow",) * warp_cfg.mesh_prior + ("mouth_unseen",) * warp_cfg.mouth_prior


def _export(module: nn.Module, args: tuple, path: Path, input_names: list[str], output_names: list[str]) -> None:
    import warnings

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notices
        torch.onnx.export(module, args, str(path), opset_version=OPSET, dynamo=False, input_names=input_names,
                          output_names=output_names)


def frame_example(generator, batch: int, generator_seed: int = 0) -> dict[str, torch.Tensor]:
    """Inputs of the shapes FrameGraph takes (random values: tracing needs only the shapes)."""
    cfg = generator.warper.cfg
    r, fr = cfg.resolution, generator.warper.flow_res
    g = torch.Generator().manual_seed(generator_seed)
    x = {"source": torch.rand(batch, 3, r, r, generator=g), "source_lmk": torch.rand(batch, 3, r, r, generator=g),
         "driving_lmk": torch.rand(batch, 3, r, r, generator=g),
         "identity": torch.randn(batch, generator.refiner.cfg.id_dim, generator=g),
         "gaze": torch.rand(batch, 2, r, r, generator=g), "mouth_mask": torch.rand(batch, 1, r, r, generator=g)}
    if generator.mesh_prior:
        x["mesh_flow"] = torch.randn(batch, 2, fr, fr, generator=g) * 0.02
    if cfg.mouth_prior:
        x["mouth_unseen"] = torch.rand(batch, 1, fr, fr, generator=g)
    return x


def export_graphs(generator, folder: Path, batch: int, checkpoint: Path, sr=None, sr_window: int | None = None,
                  sr_checkpoint: Path | None = None) -> dict:
    """source.onnx and frame.onnx of `generator` (and sr.onnx of `sr`, windows of `sr_window` frames) written
    to `folder` with their manifest; the manifest."""
    from src.files import atomic_write_json, fingerprint

    _register_symbolics()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MANIFEST).unlink(missing_ok=True)  # written last: graphs half replaced are never taken for whole
    generator = generator.cpu().eval()
    r = generator.warper.cfg.resolution
    frame = frame_example(generator, batch)
    with torch.no_grad():
        feats = SourceGraph(generator)(frame["source"][:1])
    feat_names = [f"feat{i}" for i in range(len(feats))]
    _export(SourceGraph(generator), (frame["source"][:1],), folder / "source.onnx", ["source"], feat_names)
    # the frame graph takes a pyramid per frame: a still source's is broadcast, video-to-video gives one each
    feats = tuple(_padded(f, batch) for f in feats)
    _export(FrameGraph(generator), (*frame.values(), *feats), folder / "frame.onnx", [*frame, *feat_names],
            ["output"])
    manifest = {"format": 1, "opset": OPSET, "resolution": r, "batch": batch, "mesh_prior": generator.mesh_prior,
                "mouth_prior": generator.warper.cfg.mouth_prior,
                "id_dim": generator.refiner.cfg.id_dim, "flow_resolution": generator.warper.flow_res,
                "pyramid_levels": len(feats), "checkpoint": {"name": Path(checkpoint).name,
                                                              **fingerprint(checkpoint)}}
    if sr is not None:
        sr = sr.cpu().eval()
        window = torch.rand(1, sr_window, 3, sr.cfg.in_size, sr.cfg.in_size)
        _export(sr, (window,), folder / "sr.onnx", ["lq"], ["hq"])
        manifest["sr"] = {"window": sr_window, "in_size": sr.cfg.in_size, "out_size": sr.cfg.out_size,
                          "checkpoint": {"name": Path(sr_checkpoint).name, **fingerprint(sr_checkpoint)}}
    atomic_write_json(folder / MANIFEST, manifest)
    return manifest


# ------------------------------------------------------------------------------------------------- running
def read_manifest(folder: Path, checkpoint: Path, what: str = "checkpoint") -> dict:
    """The manifest of the graphs in `folder`, checked to come from `checkpoint` (a UserError otherwise)."""
    from src.files import read_json, unchanged

    folder = Path(folder)
    if not (folder / MANIFEST).is_file():
        raise UserError(f"--onnx {folder} has no {MANIFEST}: write the graphs with python -m src.export")
    manifest = read_json(folder / MANIFEST, hint="written by python -m src.export")
    if what == "sr" and "sr" not in manifest:
        raise UserError(f"--onnx {folder} has no SR graph: export with --sr-checkpoint {checkpoint}")
    recorded = manifest["sr"] if what == "sr" else manifest
    if not unchanged(checkpoint, recorded.get("checkpoint")):
        name = (recorded.get("checkpoint") or {}).get("name", "no checkpoint")
        raise UserError(f"--onnx {folder} holds graphs of {name}, not of {checkpoint}: export this checkpoint "
                        f"with python -m src.export --checkpoint {checkpoint} --output DIR")
    return manifest


def _session(path: Path, threads: int | None):
    import onnxruntime as ort

    if not path.is_file():
        raise UserError(f"{path} is missing: export the graphs again with python -m src.export")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
    return ort.InferenceSession(str(path), options, providers=providers)


def _run(session, feed: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    arrays = {k: np.ascontiguousarray(v.detach().float().cpu().numpy()) for k, v in feed.items()}
    return [torch.from_numpy(y) for y in session.run(None, arrays)]


def _padded(x: torch.Tensor, batch: int) -> torch.Tensor:
    """x broadcast (a batch of one) or padded with its last item to `batch` items."""
    if len(x) == batch:
        return x
    if len(x) == 1:
        return x.expand(batch, *x.shape[1:])
    return torch.cat([x, x[-1:].expand(batch - len(x), *x.shape[1:])])


class OnnxGenerator(nn.Module):
    """frame.onnx and source.onnx behind TalkingHeadGenerator's calls (source_features, forward -> {"output"}).
    The mesh flow is computed here in torch, as the torch generator computes it."""

    def __init__(self, folder: Path, checkpoint: Path, threads: int | None = None):
        super().__init__()
        from src.faces.mesh_flow import MeshFlow

        folder = Path(folder)
        self.manifest = read_manifest(folder, checkpoint)
        self.batch, self.flow_res = self.manifest["batch"], self.manifest["flow_resolution"]
        self.mesh_flow = MeshFlow() if self.manifest["mesh_prior"] else None
        self.mouth_prior = bool(self.manifest.get("mouth_prior", False))  # graphs exported before it have none
        self.source_session = _session(folder / "source.onnx", threads)
        self.frame_session = _session(folder / "frame.onnx", threads)

    @property
    def mesh_prior(self) -> bool:
        return self.mesh_flow is not None

    def source_features(self, source: torch.Tensor) -> list[torch.Tensor]:
        """The pyramid of each source image (the graph takes one at a time)."""
        levels = zip(*(_run(self.source_session, {"source": s[None]}) for s in source))
        return [torch.cat(level).to(source.device) for level in levels]

    def forward(self, source, source_lmk, driving_lmk, identity, gaze, mouth_mask, refine: bool = True,
                source_feats=None, source_points=None, driving_points=None, mesh_flow=None, mouth_unseen=None) -> dict:
        if not refine or source_feats is None:
            raise ValueError("the exported graph is the refined generator with the source's pyramid given")
        n = len(driving_lmk)
        if n > self.batch:
            raise ValueError(f"the graphs take batches of at most {self.batch} frames (export --batch-size)")
        feed = dict(zip(FRAME_INPUTS, (source, source_lmk, driving_lmk, identity, gaze, mouth_mask)))
        if self.mesh_flow is not None:
            if mesh_flow is None:  # computed in torch, as the torch generator computes them
                from src.models.warping import prior_inputs

                computed = prior_inputs(self.mesh_flow, source_points, driving_points, self.flow_res, self.mouth_prior)
                mesh_flow, mouth_unseen = computed["mesh_flow"], computed.get("mouth_unseen")
            feed["mesh_flow"] = mesh_flow
            if self.mouth_prior:
                feed["mouth_unseen"] = mouth_unseen
        feed.update({f"feat{i}": f for i, f in enumerate(source_feats)})
        feed = {k: _padded(v, self.batch) for k, v in feed.items()}
        return {"output": _run(self.frame_session, feed)[0][:n].to(driving_lmk.device)}


class OnnxSR(nn.Module):
    """sr.onnx behind TemporalSR's call: a window (1, T, 3, R, R) -> (1, T, 3, 2R, 2R); `cfg` has in_size."""

    def __init__(self, folder: Path, checkpoint: Path, threads: int | None = None):
        super().__init__()
        from types import SimpleNamespace

        manifest = read_manifest(folder, checkpoint, what="sr")
        self.cfg = SimpleNamespace(**{k: manifest["sr"][k] for k in ("window", "in_size", "out_size")})
        self.session = _session(Path(folder) / "sr.onnx", threads)

    def forward(self, lq: torch.Tensor) -> torch.Tensor:
        return _run(self.session, {"lq": lq})[0].to(lq.device)
