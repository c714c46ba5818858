"""The checkpoint format: every read and write of a checkpoint of this project goes through here.

A checkpoint is a Lightning checkpoint dict, loaded with `weights_only=True` (tensors, numbers, strings, lists
and dicts only: nothing in it is executed). Its `state_dict` keys are prefixed by the LightningModule attribute
that holds the network (below); `hyper_parameters` holds the resolved config (`cfg`) and `id_dim`. A meta run
with learned rates adds `inner_lr_scale` (generator tensor name -> rate multiplier); a personalized one adds
`personalized`; an SR run's EMA weights sit in the EMA callback's state (`shadow`).
"""
from __future__ import annotations

from pathlib import Path
from pickle import UnpicklingError  # what torch.load(weights_only=True) raises for an object it refuses to build

import torch
from omegaconf import OmegaConf

from src.errors import UserError
from src.files import partial_file

GENERATOR = "generator."          # the talking-head generator (refine, meta, personalize)
WARPER = "warper."                # the warping generator of the warp stage (inside a generator: generator.warper.)
DISCRIMINATOR = "discriminator."
SR_NET = "net."                   # TemporalSR
INNER_LOG_LR = "inner_log_lr"     # meta.learn_inner_lr: the log-multipliers as trained
INNER_LR_SCALE = "inner_lr_scale"  # ... and as multipliers, for fine-tuning


def read_checkpoint(path: str | Path, mmap: bool = False, what: str = "checkpoint") -> dict:
    """The checkpoint dict at `path`, weights only, or a one-line UserError naming the file (as `what`: the flag
    or key it came from) and what is wrong with it."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what} {path} is a folder, not a checkpoint file")
    if not path.is_file():
        raise UserError(f"{what} {path} does not exist")
    if path.stat().st_size == 0:
        raise UserError(f"{what} {path} is empty (0 bytes): not a checkpoint")
    with open(path, "rb") as f:
        zipped = f.read(2) == b"PK"  # torch.save's format
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except UnpicklingError:
        why = ("holds objects that safe loading (weights_only) refuses, such as pickled code; nothing was run"
               if zipped else "is not a torch checkpoint, or holds objects that safe loading refuses")
        raise UserError(f"{what} {path} {why}") from None
    except Exception as exc:  # a torn zip, a truncated file, another format
        why = "is truncated or damaged" if zipped else "is not a torch checkpoint"
        detail = (str(exc).splitlines() or [""])[0].split(". ")[0][:120]  # torch's first sentence, not its advice
        raise UserError(f"{what} {path} {why} ({type(exc).__name__}: {detail})") from None
    if not isinstance(state, dict):
        raise UserError(f"{what} {path} holds a {type(state).__name__}, not a checkpoint (a dict)")
    return state


def check_resumable(path: str | Path) -> int:
    """The training step `path`, a Lightning checkpoint a run resumes from, was saved at, or a one-line error saying
    what is wrong with it and that deleting it restarts from the beginning (a corrupt resume state is never silently
    dropped: it is work)."""
    try:
        state = read_checkpoint(path, mmap=True, what="the resume checkpoint")
        if not isinstance(state.get("state_dict"), dict) or not isinstance(state.get("global_step"), int):
            raise UserError(f"the resume checkpoint {path} is not a Lightning training checkpoint")
    except UserError as exc:
        raise UserError(f"{exc}; move it away to start over from the beginning") from None
    return state["global_step"]


def save_checkpoint(state: dict, path: str | Path) -> Path:
    """Write a checkpoint dict atomically (a killed job never leaves a torn checkpoint under the final name)."""
    with partial_file(path) as tmp:
        torch.save(state, tmp)
    return Path(path)


def generator_checkpoint(generator: torch.nn.Module, cfg: dict, id_dim: int, **extra) -> dict:
    """A generator checkpoint that load_generator reads (what personalize writes; tests build them too)."""
    return {"state_dict": {GENERATOR + k: v.detach().cpu() for k, v in generator.state_dict().items()},
            "hyper_parameters": {"cfg": cfg, "id_dim": int(id_dim)}, **extra}


def prefixed(state: dict, prefix: str) -> dict:
    """The state_dict entries under `prefix`, with the prefix removed."""
    return {k[len(prefix):]: v for k, v in section(state, "state_dict").items()
            if isinstance(k, str) and k.startswith(prefix) and isinstance(v, torch.Tensor)}


def section(state: dict, key: str) -> dict:
    """state[key] when it is a dict, else {} (a crafted or foreign checkpoint is refused by its loader's checks,
    not by an AttributeError)."""
    value = state.get(key)
    return value if isinstance(value, dict) else {}


# ------------------------------------------------------------------------------------------ the warp's priors
# model.warp choices a checkpoint must be run as it was trained with, and that checkpoints written before they
# existed were trained without
PRIORS = ("mesh_prior", "mouth_prior")


def prior_of(cfg: dict, prior: str = "mesh_prior") -> bool:
    """Whether a checkpoint's config has model.warp.<prior> on; checkpoints written before it existed do not."""
    return bool(((cfg.get("model") or {}).get("warp") or {}).get(prior, False))


def require_prior(path: Path, trained_cfg: dict, wanted: bool, hint: str = "", prior: str = "mesh_prior") -> None:
    """An error unless the checkpoint at `path` (its config `trained_cfg`) has `prior` as `wanted`: a residual flow
    trained on the mesh prior means nothing without it, weights of a learned-only flow run under it as a model nobody
    trained, and the mouth prior (no weights of its own) changes the occlusion a model was trained with."""
    had = prior_of(trained_cfg, prior)
    if had != wanted:
        raise UserError(f"{path} was trained {'with' if had else 'without'} the {prior.replace('_', ' ')} "
                        f"(model.warp.{prior}={str(had).lower()}); it cannot be run {'without' if had else 'with'} "
                        f"it{hint}")


# ------------------------------------------------------------------------------------------ generators
def load_generator(checkpoint: str | Path, mesh_prior: bool | None = None, what: str = "checkpoint"):
    """(generator with the checkpoint's weights, its config, id_dim) from a refine/meta/personalize checkpoint.
    `mesh_prior`: None takes the checkpoint as it was trained; True or False requires it (an error otherwise).
    `what`: the flag or config key it came from, for the messages."""
    from src.config import CONFIG_DIR
    from src.models.generator import build_generator

    path = Path(checkpoint)
    state = read_checkpoint(path, what=what)
    hp = section(state, "hyper_parameters")
    weights = prefixed(state, GENERATOR)
    if not weights or not isinstance(section(hp, "cfg").get("model"), dict) or not isinstance(hp.get("id_dim"), int):
        kind = ("a warp-stage checkpoint (no refiner)" if prefixed(state, WARPER) else "not a generator checkpoint")
        raise UserError(f"{what} {path} is {kind}: give a checkpoint of the refine, stage1, meta or personalize stage")
    cfg, id_dim = hp["cfg"], int(hp["id_dim"])
    if mesh_prior is not None:
        require_prior(path, cfg, mesh_prior)
    warp = cfg["model"].setdefault("warp", {})
    for prior in PRIORS:  # off where the checkpoint predates them, whatever today's default
        warp[prior] = prior_of(cfg, prior)
    # keys added to the model section after the checkpoint was written take their defaults
    defaults = OmegaConf.load(CONFIG_DIR / "default.yaml").model
    try:
        cfg["model"] = OmegaConf.to_container(OmegaConf.merge(defaults, cfg["model"]), resolve=True)
        generator = build_generator(OmegaConf.create(cfg["model"]), id_dim)
    except Exception as exc:  # a crafted or damaged config: refused, with what failed
        raise UserError(f"{path}: its model config cannot be built ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0][:100] if str(exc) else ''})") from None
    target = generator.state_dict()
    bad = sorted(set(target) ^ set(weights)) + sorted(k for k in set(target) & set(weights)
                                                      if target[k].shape != weights[k].shape)
    if bad:
        raise UserError(f"{path}: generator weights do not fit its own config ({', '.join(bad[:4])} ...)")
    generator.load_state_dict(weights)
    return generator, cfg, id_dim


def learned_lr_scales(checkpoint: str | Path) -> dict[str, float] | None:
    """{generator tensor name: multiplier of the fine-tuning rate} learned by meta-training, or None when the
    checkpoint has none (stage 1, or meta without meta.learn_inner_lr)."""
    scales = read_checkpoint(checkpoint, mmap=True).get(INNER_LR_SCALE)  # mmap: no copy of the weights
    if scales is None:
        return None
    if not isinstance(scales, dict) or not all(isinstance(v, float) and v > 0 for v in scales.values()):
        raise UserError(f"{checkpoint}: {INNER_LR_SCALE} is not a map of positive rate multipliers")
    return {str(k): float(v) for k, v in scales.items()}


def check_lr_scale(generator: torch.nn.Module, lr_scale: dict[str, float] | None) -> None:
    """Learned multipliers must name exactly the generator's tensors (a meta run of this generator's config)."""
    if lr_scale is not None and set(lr_scale) != {n for n, _ in generator.named_parameters()}:
        raise UserError(f"the checkpoint's learned rate multipliers ({INNER_LR_SCALE}) do not name this generator's "
                        "tensors")


# ------------------------------------------------------------------------------------------ super-resolution
def load_sr(checkpoint: str | Path):
    """(TemporalSR with the checkpoint's EMA weights when present, its config)."""
    from src.models.temporal_sr import build_sr

    path = Path(checkpoint)
    state = read_checkpoint(path)
    weights = prefixed(state, SR_NET)
    cfg = section(section(state, "hyper_parameters"), "cfg")
    if not weights or "sr" not in section(cfg, "model"):
        raise UserError(f"{path} is not a super-resolution checkpoint (the sr stage writes them)")
    net = build_sr(OmegaConf.create(cfg["model"]))
    weights.update(ema_weights(state))
    net.load_state_dict(weights)
    return net.eval(), cfg


def load_sr_prior(decoder: torch.nn.Module, path: str | Path) -> int:
    """GFPGAN v1.3 / StyleGAN2 weights (sr.prior) into the SR decoder; how many tensors."""
    from src.models.stylegan2 import load_prior_state

    path = Path(path)
    if not path.exists():
        raise UserError(f"sr.prior={path} does not exist (GFPGANv1.3.pth or a StyleGAN2-clean state dict)")
    return load_prior_state(decoder, read_checkpoint(path, what="sr.prior"), path)


def load_face_recognition(path: str | Path, arch: str = "r50"):
    """The frozen arcface_torch IResNet of the identity loss, from its backbone.pth."""
    from src.models.iresnet import load_iresnet_state

    path = Path(path)
    if not path.exists():
        raise UserError(f"face-recognition weights {path} do not exist (arcface_torch's backbone.pth, "
                        f"architecture {arch}; see README, 'Identity loss')")
    return load_iresnet_state(read_checkpoint(path, what="face-recognition weights"), path, arch)


def ema_weights(state: dict) -> dict:
    """The averaged weights the EMA callback (callbacks/ema.py) keeps in a checkpoint, or {} without it."""
    for cb in section(state, "callbacks").values():
        if isinstance(cb, dict) and cb.get("shadow"):
            return dict(cb["shadow"])
    return {}


# ------------------------------------------------------------------------------------------ warm starts
def load_weights(module: torch.nn.Module, checkpoint: str | Path, src_prefix: str, dst_prefix: str = "",
                 missing_ok: bool = False, what: str = "checkpoint") -> int:
    """Copy the weights under `src_prefix` of a checkpoint into `module` (under `dst_prefix`). Missing,
    unexpected or mis-shaped keys are an error that names them; a checkpoint with no weights under `src_prefix`
    at all is one too, unless missing_ok (then nothing is copied and 0 returned). `what`: the key it came from."""
    path = Path(checkpoint)
    state = read_checkpoint(path, what=what)
    if "state_dict" not in state:
        raise UserError(f"{path} is not a Lightning checkpoint (no state_dict)")
    check_priors(module, state, path)
    source = {dst_prefix + k: v for k, v in prefixed(state, src_prefix).items()}
    target = {k: v for k, v in module.state_dict().items() if k.startswith(dst_prefix)}
    if not source and missing_ok:
        return 0
    if not source:
        raise UserError(f"{path} has no '{src_prefix}*' weights: is it a checkpoint of another stage?")
    missing = sorted(set(target) - set(source))
    unexpected = sorted(set(source) - set(target))
    shapes = sorted(k for k in set(source) & set(target) if source[k].shape != target[k].shape)
    if missing or unexpected or shapes:
        detail = "; ".join(f"{name}: {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}"
                           for name, keys in (("missing", missing), ("unexpected", unexpected),
                                              ("shape mismatch",
                                               [f"{k} {tuple(source[k].shape)} vs {tuple(target[k].shape)}"
                                                                  for k in shapes])) if keys)
        raise UserError(f"{path} does not fit this model ({detail}); was it trained with another model preset?")
    module.load_state_dict(source, strict=False)
    return len(source)


def check_priors(module: torch.nn.Module, state: dict, path: Path) -> None:
    """A warm start must run with the warp's priors its checkpoint was trained with, or it would run, silently, as a
    model nobody trained."""
    cfg = getattr(module, "cfg", None)
    trained = section(state, "hyper_parameters").get("cfg")
    if cfg is None or not isinstance(trained, dict) or "model" not in cfg:
        return
    for prior in PRIORS:
        had = str(prior_of(trained, prior)).lower()
        require_prior(path, trained, bool(cfg.model.warp.get(prior, False)),
                      f": pass model.warp.{prior}={had} to continue from it, or start from a checkpoint trained like "
                      "this run", prior)
