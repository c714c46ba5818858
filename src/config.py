"""Config composition with plain OmegaConf.

    default.yaml -> stages/<stage>.yaml -> presets (model/, trainer/, data/, logger/) -> command line

Later wins. Everything is merged in struct mode: a key that does not exist in default.yaml (or in the
stage's own section, e.g. `meta:` in stages/meta.yaml) is an error naming the key and the closest valid
ones. Command-line values are type-checked against the value they replace.

Command-line arguments are either preset selections (`model=tiny`, `trainer=ddp`) or dot-list overrides
(`trainer.max_epochs=3`, `optim.betas=[0.9,0.99]`).
"""
from __future__ import annotations

import difflib
import hashlib
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf

from src.errors import ConfigError
from src.files import atomic_write_text

CONFIG_DIR = Path(__file__).resolve().parent.parent / "lightning_configs"
PRESET_GROUPS = ("model", "trainer", "data", "logger")
_ABSENT = object()

# Every choice-valued key, declared once: compose refuses any other value, with a "did you mean".
CHOICES: dict[str, tuple[str, ...]] = {
    "data.mode": ("pairs", "episodes", "windows"),
    "loss.perceptual": ("vgg19", "l1_msssim"),
    "loss.identity_arch": ("r18", "r34", "r50", "r100"),
    "logger.wandb.mode": ("auto", "online", "offline", "disabled"),
    "meta.algorithm": ("reptile", "fomaml", "maml"),
    "meta.inner_optimizer": ("adam", "sgd"),
    "meta.outer_optimizer": ("adam", "sgd"),
    "meta.outer_lr_decay": ("constant", "linear"),
    "meta.outer_update": ("generator", "refiner"),
    "meta.source_frame": ("random", "typical"),
    "sr.lq": ("base", "bicubic"),
}
# Every numeric key with a range, declared once: compose refuses a value outside [low, high] (None: unbounded) or
# of another type; null stays allowed where the YAML default is null. Lightning's own -1 means "no limit".
RANGES: dict[str, tuple[float | None, float | None]] = {
    "seed": (0, None),
    "trainer.num_nodes": (1, None),
    "trainer.max_epochs": (-1, None),
    "trainer.max_steps": (-1, None),
    "trainer.limit_train_batches": (0, None),
    "trainer.limit_val_batches": (0, None),
    "trainer.num_sanity_val_steps": (-1, None),
    "trainer.val_check_interval": (1e-9, None),
    "trainer.check_val_every_n_epoch": (1, None),
    "trainer.log_every_n_steps": (1, None),
    "trainer.accumulate_grad_batches": (1, None),
    "checkpoint.every_minutes": (1e-9, None),
    "checkpoint.every_n_train_steps": (1, None),
    "checkpoint.keep_top_k": (-1, None),
    "data.batch_size": (1, None),
    "data.num_workers": (0, None),
    "data.samples_per_clip": (1, None),
    "model.resolution": (16, 4096),
    "optim.lr": (1e-12, 10),
    "optim.weight_decay": (0, None),
    "optim.warp_lr_mult": (0, None),
}
# YAML 1.1 (PyYAML) reads `1e-3` as a string; command lines use that notation all the time.
_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def list_stages() -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / "stages").glob("*.yaml"))


def list_presets(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def _load_yaml(path: Path) -> DictConfig:
    try:
        cfg = OmegaConf.load(path)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"{path} must hold a mapping of keys")
    return cfg


def all_keys(cfg: DictConfig, prefix: str = "") -> list[str]:
    """Every dotted key of cfg, interior nodes included (`trainer`, `trainer.max_epochs`, ...)."""
    keys = []
    for key in cfg.keys():
        dotted = f"{prefix}{key}"
        keys.append(dotted)
        node = cfg._get_node(key)
        if isinstance(node, DictConfig):
            keys.extend(all_keys(node, dotted + "."))
    return keys


def suggest(key: str, valid: Iterable[str], n: int = 3) -> list[str]:
    """Closest valid keys: full-key similarity first, then keys sharing the last component."""
    valid = list(valid)
    close = difflib.get_close_matches(key, valid, n=n, cutoff=0.6)
    leaf = key.rsplit(".", 1)[-1]
    leaves = {v.rsplit(".", 1)[-1]: v for v in valid}
    for match in difflib.get_close_matches(leaf, list(leaves), n=n, cutoff=0.75):
        if leaves[match] not in close:
            close.append(leaves[match])
    return close[:n]


def _unknown_key(key: str, cfg: DictConfig, where: str) -> ConfigError:
    hints = suggest(key, all_keys(cfg))
    hint = f"; did you mean {', '.join(hints)}?" if hints else "; `python -m src.train --help` lists the keys"
    return ConfigError(f"unknown config key '{key}' {where}{hint}")


def _merge_strict(cfg: DictConfig, other: DictConfig, where: str) -> None:
    """Merge `other` into cfg, refusing keys cfg does not have."""
    for key in all_keys(other):
        if OmegaConf.select(cfg, key, default=_ABSENT) is _ABSENT:
            raise _unknown_key(key, cfg, where)
    cfg.merge_with(other)


def _type_name(value: Any) -> str:
    if isinstance(value, (DictConfig, dict)):
        return "mapping"
    if isinstance(value, (ListConfig, list)):
        return "list"
    return type(value).__name__


def coerce(key: str, old: Any, new: Any) -> Any:
    """Check a command-line value against the value it replaces; return it converted where lossless."""
    if new is None or old is None:  # null clears a value; a null default accepts any type
        return new
    if isinstance(old, bool):
        ok = isinstance(new, bool)
    elif isinstance(old, int):
        ok = isinstance(new, int) and not isinstance(new, bool)
    elif isinstance(old, float):
        ok = isinstance(new, (int, float)) and not isinstance(new, bool)
        new = float(new) if ok else new
    elif isinstance(old, str):
        ok = not isinstance(new, (dict, list))
        new = str(new) if ok and not isinstance(new, bool) else (str(new).lower() if ok else new)
    elif isinstance(old, (ListConfig, list)):
        ok = isinstance(new, list)
    elif isinstance(old, (DictConfig, dict)):
        ok = isinstance(new, dict)
    else:
        ok = True
    if not ok:
        raise ConfigError(
            f"config key '{key}' expects {_type_name(old)} (default {old!r}), got {_type_name(new)} {new!r}"
        )
    return new


def parse_args(args: Iterable[str]) -> tuple[dict[str, str], list[tuple[str, Any]]]:
    """Split `key=value` arguments into preset selections and typed dot-list overrides."""
    selections: dict[str, str] = {}
    overrides: list[tuple[str, Any]] = []
    for arg in args:
        if "=" not in arg or arg.startswith("="):
            raise ConfigError(f"cannot read argument '{arg}': overrides look like key=value "
                              "(e.g. trainer.max_epochs=3)")
        key, raw = arg.split("=", 1)
        key = key.strip()
        if key in PRESET_GROUPS:
            selections[key] = raw
            continue
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        if isinstance(value, str) and _FLOAT.match(value.strip()):
            value = float(value)
        overrides.append((key, value))
    return selections, overrides


def compose(stage: str, args: Iterable[str] = ()) -> DictConfig:
    """The resolved-to-be config of `stage` with command-line `args` (preset selections and overrides)."""
    stages = list_stages()
    if stage not in stages:
        close = difflib.get_close_matches(stage, stages, n=2, cutoff=0.5)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        raise ConfigError(f"unknown stage '{stage}' (stages: {', '.join(stages)}){hint}")
    args = list(args)
    selections, overrides = parse_args(args)

    cfg = _load_yaml(CONFIG_DIR / "default.yaml")
    stage_cfg = _load_yaml(CONFIG_DIR / "stages" / f"{stage}.yaml")
    # A stage may add keys under its own section only; an orchestrating stage also gets the sections of
    # the stages it runs (`substages:`).
    for sub in list(stage_cfg.pop("substages", None) or []):
        cfg[sub] = _load_yaml(CONFIG_DIR / "stages" / f"{sub}.yaml").get(sub, {})
    own = stage_cfg.pop(stage, None)
    cfg[stage] = own if own is not None else {}
    OmegaConf.set_struct(cfg, True)
    cfg.stage = stage
    _merge_strict(cfg, stage_cfg, f"in lightning_configs/stages/{stage}.yaml")

    for group, name in selections.items():
        cfg.presets[group] = name
    for group in PRESET_GROUPS:
        name = cfg.presets[group]
        path = CONFIG_DIR / group / f"{name}.yaml"
        if not path.is_file():
            options = list_presets(group)
            close = difflib.get_close_matches(str(name), options, n=2, cutoff=0.5)
            hint = f"; did you mean {' or '.join(close)}?" if close else ""
            raise ConfigError(f"unknown {group} preset '{name}' (choose from {', '.join(options)}){hint}")
        _merge_strict(cfg, _load_yaml(path), f"in lightning_configs/{group}/{name}.yaml")

    for key, value in overrides:
        old = OmegaConf.select(cfg, key, default=_ABSENT, throw_on_missing=False)
        if old is _ABSENT:
            raise _unknown_key(key, cfg, "on the command line")
        OmegaConf.update(cfg, key, coerce(key, old, value), merge=False)

    cfg.run_name = default_run_name(cfg.presets.model, args) if cfg.run_name is None else str(cfg.run_name)
    try:
        OmegaConf.resolve(cfg)
    except Exception as exc:  # an interpolation pointing nowhere
        raise ConfigError(f"cannot resolve the config: {exc}") from None
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"these keys need a value: {', '.join(missing)} (pass them as key=value)")
    check_choices(cfg)
    check_ranges(cfg)
    check_rules(cfg)
    derive(cfg)
    return cfg


def check_choices(cfg: DictConfig) -> None:
    for key, options in CHOICES.items():
        value = OmegaConf.select(cfg, key, default=_ABSENT)
        if value is _ABSENT or value in options:
            continue
        close = difflib.get_close_matches(str(value), options, n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise ConfigError(f"config key '{key}' must be one of {', '.join(options)}, got '{value}'{hint}")


def check_ranges(cfg: DictConfig) -> None:
    for key, (low, high) in RANGES.items():
        value = OmegaConf.select(cfg, key, default=_ABSENT)
        if value is _ABSENT or value is None:
            continue
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not number or (low is not None and value < low) or (high is not None and value > high):
            bounds = f"<= {high:g}" if low is None else (f">= {low:g}" if high is None else f"in [{low:g}, {high:g}]")
            raise ConfigError(f"config key '{key}' must be a number {bounds}, got {value!r}")


def check_rules(cfg: DictConfig) -> None:
    """Values that only work together, checked once the config is composed (not when objects are built)."""
    from src.models.generator import check_model_choices

    try:
        check_model_choices(cfg.model.warp.mesh_prior, cfg.model.refiner.blend_warped, cfg.model.warp.mouth_prior)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    sr = cfg.model.sr
    if not (isinstance(sr.scale, int) and sr.scale >= 2 and sr.out_size % sr.scale == 0):
        raise ConfigError(f"model.sr.scale must be an integer >= 2 that divides model.sr.out_size={sr.out_size}, "
                          f"got {sr.scale}")
    want = lq_resolution(cfg) if cfg.stage == "sr" else cfg.model.resolution
    if cfg.data.resolution is not None and cfg.data.resolution != want:
        what = ("the SR model's input size (model.sr.out_size / model.sr.scale)" if cfg.stage == "sr"
                else "model.resolution")
        raise ConfigError(f"data.resolution={cfg.data.resolution} differs from {what}, {want}: leave data.resolution "
                          f"unset (null) and it follows")
    if "meta" in cfg:
        m = cfg.meta
        if m.algorithm == "maml" and m.inner_optimizer != "sgd":
            raise ConfigError("meta.algorithm=maml differentiates through the inner updates: it needs "
                              "meta.inner_optimizer=sgd")
        if m.algorithm == "maml" and cfg.loss.perceptual != "vgg19":
            # torchmetrics' MS-SSIM clamps with relu before a fractional power: its second derivative is NaN
            raise ConfigError("meta.algorithm=maml needs loss.perceptual=vgg19 (the L1 + MS-SSIM substitute is not "
                              "twice differentiable); use reptile or fomaml with the substitute")
        if m.multi_step_loss and m.algorithm == "reptile":
            raise ConfigError("meta.multi_step_loss weighs query losses, which reptile does not use: use fomaml "
                              "or maml")
        if m.learn_inner_lr and not (m.inner_lr_lr > 0 and m.inner_lr_scale_max >= 1):
            raise ConfigError("meta.learn_inner_lr needs meta.inner_lr_lr > 0 and meta.inner_lr_scale_max >= 1, got "
                              f"{m.inner_lr_lr} and {m.inner_lr_scale_max}")
        if not 0 <= m.query_tail < 1:
            raise ConfigError(f"meta.query_tail must be in [0, 1), got {m.query_tail}")
        if m.episodes_per_person is not None and not (isinstance(m.episodes_per_person, int)
                                                      and m.episodes_per_person >= 1):
            raise ConfigError(f"meta.episodes_per_person must be null or an integer >= 1, got {m.episodes_per_person}")
        if m.source_frame == "typical" and (m.query_from_other_clip or m.query_tail > 0):
            # the other episode kinds choose their own source (query_tail: already the typical frame)
            raise ConfigError("meta.source_frame=typical applies to episodes from one clip with the query anywhere in "
                              "it: it needs meta.query_from_other_clip=false and meta.query_tail=0")


def lq_resolution(cfg: DictConfig) -> int:
    """The SR model's input size: the frames the base generator renders."""
    return cfg.model.sr.out_size // cfg.model.sr.scale


def derive(cfg: DictConfig) -> None:
    """Fill the keys whose value follows from others (null in default.yaml), so the saved config says what ran."""
    if cfg.data.resolution is None:
        cfg.data.resolution = lq_resolution(cfg) if cfg.stage == "sr" else cfg.model.resolution
    if cfg.stage == "sr" and cfg.sr.lq_root is None:
        cfg.sr.lq_root = str(run_dir_of(cfg) / "lq_shards") if cfg.sr.lq == "base" else cfg.data.root


def default_run_name(model_preset: str, args: list[str]) -> str:
    """`<model preset>` or `<model preset>-<hash>`: the same command always lands in the same run folder,
    which is what lets a re-run resume instead of starting over."""
    relevant = sorted(a for a in args if not a.startswith("run_name="))
    if not relevant:
        return str(model_preset)
    digest = hashlib.sha1("\n".join(relevant).encode()).hexdigest()[:8]
    return f"{model_preset}-{digest}"


def run_dir_of(cfg: DictConfig) -> Path:
    return Path(cfg.output_root) / cfg.stage / cfg.run_name


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)


def save_config(cfg: DictConfig, run_dir: Path) -> Path:
    """Write the resolved config to run_dir/config.yaml (atomically). An earlier, different config in the
    same folder is kept as config.<n>.yaml rather than overwritten."""
    path = run_dir / "config.yaml"
    text = to_yaml(cfg)
    if path.exists() and path.read_text() != text:
        n = 1
        while (run_dir / f"config.{n}.yaml").exists():
            n += 1
        path.rename(run_dir / f"config.{n}.yaml")
    atomic_write_text(path, text)
    return path
