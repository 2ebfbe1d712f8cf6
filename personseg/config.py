"""Training configuration: one typed dataclass, YAML recipes hold overrides only, `--set` wins last.

    cfg = load_config("configs/smoke.yaml", ["optim.lr=3e-4", "data.sources.0.weight=2"])

The defaults below *are* the seed recipe (`configs/default.yaml` only spells out the data), so reading
this file tells you what a run does. Values are parsed with `yaml.safe_load` ("[320, 180]" -> list),
then checked against the field types: ints and strings like "3e-4" become floats where a float is
expected, lists become tuples, and `off` (YAML's False) stays "off" for `amp`.
"""
from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


@dataclass
class ModelConfig:
    name: str = "unet_mobilenet_v2"  # a name from personseg.models.list_models()
    kwargs: dict = field(default_factory=dict)  # passed to create_model (e.g. alpha, encoder_weights)
    init: str = ""  # a personseg checkpoint to start from (its weights; e.g. the float model to fine-tune with qat)
    freeze_bn: bool = False  # BatchNorm layers keep their running statistics (for small or correlated batches: clips)
    freeze: list[str] = field(default_factory=list)  # modules whose parameters do not train (e.g. [encoder, decoder, head])


@dataclass
class SourceConfig:
    """One training/validation source; `path` is relative to `data.root` unless absolute."""
    name: str = ""  # key in logs and metrics ("portraits")
    kind: str = "folder"  # folder (images/ + masks/) | labelmaps (ccp) | coco | composites | copypaste
    path: str = ""
    weight: float = 1.0  # relative sampling weight in the training mix (0 = validation only)
    augment: str = "mild"  # mild (real photos) | strong (synthetic) | none
    limit: int = 0  # use only the first N files of each split (0 = all); for smoke runs
    annotations: str = ""  # coco: annotation json, relative to the source path
    length: int = 1000  # composites: samples per epoch (its validation set has length // 10)
    people: tuple[int, int] = (1, 4)  # composites: cut-outs per scene, min and max; (0, 0) = person-free scenes
    decoys: tuple[int, int] = (0, 0)  # composites: non-person objects pasted among them, min and max
    backgrounds: list[str] = field(default_factory=list)  # copypaste: person-free image folders to paste onto


def _default_sources() -> list[SourceConfig]:
    return [
        SourceConfig("portraits", "folder", "portraits", weight=1.0),
        SourceConfig("ccp", "labelmaps", "ccp", weight=1.0),
        SourceConfig("hsd", "folder", "hsd", weight=1.0),
        SourceConfig("composites", "composites", "composites", weight=0.5, augment="strong"),
    ]


@dataclass
class DataConfig:
    root: str = ""  # "" -> $PERSONSEG_DATA -> ../shared/data
    sources: list[SourceConfig] = field(default_factory=_default_sources)
    input_size: tuple[int, int] = (320, 180)  # (W, H), 16:9
    val_every: int = 10  # the split rule: every 10th file (sorted by name) of a folder is validation
    samples_per_epoch: int = 0  # 0 = the sum of the training sources' sizes
    clip_length: int = 0  # > 0: train on moving clips of this many frames made from the stills (recurrent models)
    clip_jitter: float = 0.0  # clips: strength of independent per-frame brightness, contrast, noise and blur
    tall_share: float = 0.0  # share of batches at input_size transposed (portrait); > 0 also validates tall
    # pictures in portrait orientation (one picture per batch)
    num_workers: int = 4
    val_limit: int = 0  # cap validation samples per source (0 = all); for smoke runs


@dataclass
class OptimConfig:
    lr: float = 1e-3  # AdamW
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    batch_size: int = 12  # per process and micro-step
    grad_accum: int = 8  # micro-steps per optimizer step: effective batch 12 * 8 = 96 (times world size)
    grad_clip: float = 0.0  # max grad norm, 0 = off
    warmup_steps: int = 0  # linear lr warmup (optimizer steps)


@dataclass
class LossConfig:
    bce_weight: float = 0.6
    region_weight: float = 0.4
    region: str = "tversky"  # tversky | gdl | dice | lovasz
    boundary_weight: float = 0.0  # initial weight of the boundary loss
    boundary_step: float = 0.01  # added at the end of each epoch once val IoU has plateaued
    boundary_max: float = 1.0
    parts_weight: float = 0.5  # multi-task models: cross-entropy of the body-part head (samples with part labels)
    parts_class_weights: list[float] = field(default_factory=list)  # per part class; empty = all 1
    keypoints_weight: float = 1.0  # multi-task models: focal loss of the keypoint heatmaps (losses.heatmap_focal_loss)


@dataclass
class ScheduleConfig:
    """The seed schedule ("plateau"): constant lr until val IoU has not improved for `patience`
    evaluations, then lr -> `lr_after_plateau` and the boundary loss enters (+`loss.boundary_step`
    per epoch). "reduce_on_plateau" multiplies lr by `factor` at every plateau; "cosine" decays
    lr to `min_lr` over the run. The boundary loss follows the plateau detector in all three."""
    scheduler: str = "plateau"  # plateau | reduce_on_plateau | cosine
    patience: int = 5  # evaluations without val IoU improvement (one per epoch by default)
    min_delta: float = 1e-4  # smaller IoU gains do not count as improvement
    lr_after_plateau: float = 3e-4
    factor: float = 0.3  # reduce_on_plateau
    min_lr: float = 1e-5  # cosine floor and reduce_on_plateau floor


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    epochs: int = 100
    max_steps: int = 0  # optimizer steps; > 0 overrides epochs
    time_budget: float = 0.0  # minutes of training (evaluations excluded), then a final evaluation; 0 = none
    eval_every: int = 0  # optimizer steps between evaluations; 0 = at the end of every epoch
    log_every: int = 10  # optimizer steps between log.jsonl / TensorBoard loss records
    amp: str = "auto"  # auto | bf16 | fp16 | off; auto = bf16 (or fp16) on GPU, off on CPU
    channels_last: bool = True  # more than doubles CPU training speed for the MobileNet models
    seed: int = 0
    threads: int = 0  # torch CPU threads, 0 = torch's default; 1 on a busy CPU (spinning threads crawl there)
    tensorboard: bool = True
    qat: bool = False  # quantization-aware training (fake int8, personseg.qat); usually with model.init


AMP_MODES = ("auto", "bf16", "fp16", "off")
SCHEDULERS = ("plateau", "reduce_on_plateau", "cosine")
AUGMENTS = ("mild", "strong", "none")


def data_root(cfg: TrainConfig) -> Path:
    """`data.root`, else $PERSONSEG_DATA, else ../shared/data (relative to the working directory)."""
    return Path(cfg.data.root or os.environ.get("PERSONSEG_DATA") or "../shared/data")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Defaults, then the YAML file's overrides (after those of its `base:` recipe, recursively), then
    `overrides` ("a.b=value", applied in order)."""
    cfg = TrainConfig()
    if path is not None:
        _apply_recipe(cfg, Path(path), [])
    for item in overrides or []:
        key, sep, text = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r}: expected key=value, e.g. optim.lr=3e-4")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            raise ValueError(f"override {item!r}: the value is not valid YAML; quote it, e.g. key='text'") from None
        _set(cfg, key.strip(), value)
    validate(cfg)
    return cfg


def _apply_recipe(cfg: TrainConfig, path: Path, chain: list[Path]) -> None:
    """Apply `path`'s keys to `cfg`; first those of the recipe its `base:` names (relative to its folder)."""
    if path.resolve() in chain:
        raise ValueError(f"{path}: `base:` goes round in a circle ({' -> '.join(p.name for p in chain + [path])})")
    with open(path) as f:
        try:
            data = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise ValueError(f"{path}: not valid YAML{where} ({problem}); fix the recipe there") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of config keys at the top level")
    base = data.pop("base", None)
    if base is not None:
        _apply_recipe(cfg, path.parent / base, chain + [path.resolve()])
    for key, value in _flatten(data):
        _set(cfg, key, value)


def validate(cfg: TrainConfig) -> None:
    """Check the string choices, so a typo fails at start-up and not hours into a run."""
    from personseg.data import SOURCES  # the source registry: data.py's register_source
    from personseg.losses import REGION_LOSSES

    choices = [("amp", cfg.amp, AMP_MODES), ("schedule.scheduler", cfg.schedule.scheduler, SCHEDULERS),
               ("loss.region", cfg.loss.region, tuple(REGION_LOSSES))]
    for name, value, allowed in choices:
        if value not in allowed:
            raise ValueError(f"{name}={value!r}: choose one of {', '.join(allowed)}")
    for i, src in enumerate(cfg.data.sources):
        if src.kind not in SOURCES or src.augment not in AUGMENTS or not src.name:
            raise ValueError(f"data.sources.{i} ({src.name or 'no name'}): needs a name, kind in {tuple(SOURCES)}, "
                             f"augment in {AUGMENTS}")
        for key in ("people", "decoys"):
            low_high = getattr(src, key)
            if len(low_high) != 2 or not 0 <= low_high[0] <= low_high[1]:
                raise ValueError(f"data.sources.{i}.{key}={list(low_high)}: expected [min, max] with 0 <= min <= max")
    if len(cfg.data.input_size) != 2 or not all(v >= 16 for v in cfg.data.input_size):
        raise ValueError(f"data.input_size={list(cfg.data.input_size)}: expected [W, H], each at least 16 pixels")
    counts = [("threads", cfg.threads, 0), ("max_steps", cfg.max_steps, 0), ("epochs", cfg.epochs, 1),
              ("eval_every", cfg.eval_every, 0), ("log_every", cfg.log_every, 1),
              ("data.samples_per_epoch", cfg.data.samples_per_epoch, 0), ("data.num_workers", cfg.data.num_workers, 0),
              ("optim.batch_size", cfg.optim.batch_size, 1), ("optim.grad_accum", cfg.optim.grad_accum, 1)]
    for name, value, low in counts:
        if value < low:
            raise ValueError(f"{name}={value}: expected {low} or more")
    if cfg.data.clip_jitter < 0:
        raise ValueError(f"data.clip_jitter={cfg.data.clip_jitter}: expected a strength >= 0")
    if not 0 <= cfg.data.tall_share <= 1:
        raise ValueError(f"data.tall_share={cfg.data.tall_share}: expected a share between 0 and 1")


def to_dict(cfg: Any) -> Any:
    """Plain dicts/lists/scalars (tuples become lists), safe for YAML, JSON and torch.load(weights_only)."""
    return _plain(dataclasses.asdict(cfg))


def _plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def _flatten(data: dict, prefix: str = ""):
    """{"optim": {"lr": 1}} -> ("optim.lr", 1); lists and free-form dicts (model.kwargs) are leaves.
    A mapping under data.sources patches sources by name: {negatives: {weight: 2}} ->
    ("data.sources.negatives.weight", 2); a new name adds a source, `null` drops one."""
    for key, value in data.items():
        full = f"{prefix}{key}"
        if isinstance(value, dict) and full != "model.kwargs":
            yield from _flatten(value, full + ".")
        else:
            yield full, value


def _set(cfg: Any, key: str, value: Any) -> None:
    parts = key.split(".")
    obj, done = cfg, []
    for part in parts[:-1]:
        obj = _child(obj, part, done)
        done.append(part)
    last = parts[-1]
    if isinstance(obj, dict):  # free-form: model.kwargs.alpha=0.35
        obj[last] = value
        return
    if isinstance(obj, list):
        if value is None and not last.isdigit():  # data.sources.NAME: null drops that source
            del obj[_index(obj, last, done)]
            return
        if done == ["data", "sources"] and not last.isdigit() and isinstance(value, dict):
            source = obj[_named_source(obj, last)]  # data.sources.NAME={field: value, ...} patches (or adds) it
            for field_name, field_value in value.items():
                _set(source, field_name, field_value)
            return
        index = _index(obj, last, done)
        obj[index] = _coerce(value, type(obj[index]), key)
        return
    hints = _hints(type(obj))
    if last not in hints:
        raise KeyError(_unknown(last, obj, done))
    setattr(obj, last, _coerce(value, hints[last], key))


def _child(obj: Any, part: str, done: list[str]) -> Any:
    if isinstance(obj, list):
        if done == ["data", "sources"] and not part.isdigit():
            return obj[_named_source(obj, part)]
        return obj[_index(obj, part, done)]
    if isinstance(obj, dict):
        return obj.setdefault(part, {})
    if part not in _hints(type(obj)):
        raise KeyError(_unknown(part, obj, done))
    return getattr(obj, part)


def _named_source(sources: list, name: str) -> int:
    """The position of the source called `name`, appending a new SourceConfig of that name if none is."""
    names = [s.name for s in sources]
    if name not in names:
        sources.append(SourceConfig(name=name))
        return len(sources) - 1
    return names.index(name)


def _index(obj: list, part: str, done: list[str]) -> int:
    """A list position: a number, or for named items (data.sources) a name."""
    names = [getattr(item, "name", None) for item in obj]
    if part in names:
        return names.index(part)
    if not part.isdigit() or int(part) >= len(obj):
        named = f" or one of the names {', '.join(map(str, names))}" if any(names) else ""
        raise KeyError(f"config key {'.'.join(done + [part])!r}: expected an index below {len(obj)}{named}")
    return int(part)


def _unknown(part: str, obj: Any, done: list[str]) -> str:
    where = ".".join(done) or "the top level"
    valid = ", ".join(f.name for f in dataclasses.fields(obj))
    return f"unknown config key {'.'.join(done + [part])!r}; valid keys under {where}: {valid}"


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check `value` against a field's type; ints become floats, lists become tuples, dicts become dataclasses."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if not isinstance(value, dict):
            raise TypeError(f"{key}: expected a mapping of {hint.__name__} fields, got {value!r}")
        obj = hint()
        for k, v in value.items():
            _set(obj, k, v)
        return obj
    if origin is list:
        if not isinstance(value, list):
            raise TypeError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, args[0], f"{key}.{i}") for i, v in enumerate(value)] if args else value
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise TypeError(f"{key}: expected a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, f"{key}.{i}") for i, (v, a) in enumerate(zip(value, args)))
    if hint is dict or origin is dict:
        if not isinstance(value, dict):
            raise TypeError(f"{key}: expected a mapping, got {value!r}")
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):  # PyYAML reads "3e-4" (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if hint is str and value is False:  # YAML 1.1 reads a bare `off` as False
        return "off"
    if hint in (int, float, str, bool) and (type(value) is not hint):
        raise TypeError(f"{key}: expected {hint.__name__}, got {value!r} ({type(value).__name__})")
    return value
