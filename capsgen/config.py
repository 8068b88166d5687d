"""Run configuration: the generic training settings plus a family's own dataclass.

Configs are plain dataclasses so they serialise to ``config.json`` and come back exactly;
``--set key=value`` overrides are checked against their fields, and an unknown key gets one
line listing the valid ones.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, get_type_hints

from capsgen.errors import ConfigError


def opt(default: Any, *, min: float | None = None, max: float | None = None, gt: float | None = None,
        choices: tuple | None = None) -> Any:
    """A config field with its valid range, checked by :func:`check_config` before anything runs.

    ``min``/``max`` are inclusive bounds, ``gt`` an exclusive lower bound, ``choices`` the allowed
    values; for a tuple field they apply to every element. ``None`` (where the type allows it)
    always passes.
    """
    meta = {k: v for k, v in (("min", min), ("max", max), ("gt", gt), ("choices", choices)) if v is not None}
    return field(default=default, metadata=meta)


@dataclass
class FamilyConfig:
    """Base of every family's config dataclass (torch-free, so ``capsgen models`` stays fast).

    ``PRESETS`` maps a preset name to ``--set`` pairs applied before the user's own.

    ``twin`` (``capsgen train FAMILY --twin``) builds the family's matched non-capsule twin: the
    same network, loss, data and budget with only the capsule part replaced, so that a comparison
    measures the capsules and nothing else. ``TWIN`` says what the twin replaces the capsules with;
    empty: the family has no capsule part and no twin (``twin=True`` is refused). ``CAPSULE_FIELDS``
    are the fields only the capsule part reads: a twin ignores them, so setting one beside
    ``--twin`` is refused as a conflict (:func:`twin_conflicts`).
    """

    PRESETS: ClassVar[dict[str, tuple[str, ...]]] = {}
    TWIN: ClassVar[str] = ""
    CAPSULE_FIELDS: ClassVar[tuple[str, ...]] = ()

    twin: bool = False

    def validate(self) -> None:
        """Raise ValueError (one line) for combinations of values that cannot work."""

    def ineffective(self) -> dict[str, str]:
        """``{"model.field": why}`` for fields that cannot take effect with the other values
        (e.g. routing iterations with one parent capsule); setting one of them is refused."""
        return {}

    def fixed_steps(self) -> tuple[int, str] | None:
        """``(steps, "how they add up")`` when the family's config fixes the length of a run (a
        schedule of stages, e.g. poe's autoencoder, W and U steps); None: the train budget
        (--steps/--epochs/--minutes) decides. See :func:`fit_train_budget`."""
        return None


@dataclass
class TrainConfig:
    """Settings of the generic loop, shared by every model family."""

    family: str = "capsnet"
    data: str = "fashion-mnist"
    data_dir: str | None = None
    image_size: int | None = opt(None, min=4)     # centre-crop and resize every image to this square size
    seed: int = opt(0, min=0)
    batch_size: int = opt(100, min=1)
    steps: int | None = opt(None, min=1)          # total optimisation steps; wins over epochs
    epochs: float | None = opt(None, gt=0)        # used when steps is None (default 1 epoch)
    minutes: float | None = opt(None, gt=0)       # wall-clock budget (training + evaluation); with
                                                  # neither steps nor epochs, train until it is spent
    log_every: int = opt(20, min=1)               # steps between metrics.jsonl / TensorBoard rows
    eval_every: int = opt(0, min=0)               # steps between test evaluations; 0 = once per epoch
    eval_limit: int | None = opt(None, min=1)     # evaluate on the first N test images (None = all)
    checkpoint_every: int = opt(100, min=1)       # steps between atomic 'last' checkpoints
    threads: int | None = opt(None, min=1)        # torch intra-op threads (None = torch default)
    precision: str = opt("fp32", choices=("fp32", "bf16"))   # bf16: autocast around train_step
    world_size: int = opt(1, min=1)               # processes (torchrun); a resume must use as many
    max_memory_gb: float | None = opt(None, gt=0)  # refuse a run whose estimated step needs more (GiB);
                                                  # None = the device's free memory (capsgen.train.memory)


def fit_train_budget(tcfg: TrainConfig, mcfg: Any) -> None:
    """For a family whose config fixes the run's length: steps = that length, in place.

    A different ``steps`` or any ``epochs`` is refused with one line (the stages would not add
    up); ``minutes`` still caps the wall clock, and a capped run is finished by resuming it.
    """
    fixed = mcfg.fixed_steps() if isinstance(mcfg, FamilyConfig) else None
    if fixed is None:
        return
    total, how = fixed
    if tcfg.epochs is not None or (tcfg.steps is not None and tcfg.steps != total):
        given = f"--epochs {tcfg.epochs:g}" if tcfg.epochs is not None else f"--steps {tcfg.steps}"
        raise ConfigError(f"a {tcfg.family} run trains exactly {total} steps ({how}); change those fields "
                          f"instead of {given} (--minutes still caps the time)")
    tcfg.steps = total


def _parse_value(raw: str, annotation: Any, key: str) -> Any:
    """Parse a ``--set`` value according to the field's annotation (str form of the type)."""
    ann = annotation.__name__ if isinstance(annotation, type) else str(annotation)
    if raw.lower() in ("none", "null") and "None" in ann:
        return None
    try:
        if ann.startswith("tuple") or ann.startswith("list"):
            inner = int if "int" in ann else float
            return tuple(inner(p) for p in raw.split(",") if p != "")
        if "bool" in ann:
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if "int" in ann and "float" not in ann:
            return int(raw)
        if "float" in ann:
            return float(raw)
    except ValueError:
        raise ConfigError(f"--set {key}={raw}: not a valid {ann}") from None
    return raw


def apply_overrides(configs: dict[str, Any], pairs: list[str]) -> None:
    """Apply ``key=value`` strings to a dict of dataclass instances, in place.

    Keys are ``section.field`` (e.g. ``model.routing_iterations``, ``train.batch_size``) or a
    bare field name when only one section has it.
    """
    valid: dict[str, tuple[str, str]] = {}
    for section, cfg in configs.items():
        for f in fields(cfg):
            if f.name == "family":  # chosen on the command line, not a tunable
                continue
            valid[f"{section}.{f.name}"] = (section, f.name)
    bare: dict[str, list[str]] = {}
    for full, (_, name) in valid.items():
        bare.setdefault(name, []).append(full)
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--set expects key=value, got {pair!r}")
        key, raw = pair.split("=", 1)
        key = key.strip()
        if key not in valid and len(bare.get(key, [])) == 1:
            key = bare[key][0]
        if key not in valid:
            raise ConfigError(f"unknown --set key {key!r}; valid keys: {', '.join(sorted(valid))}")
        section, name = valid[key]
        cfg = configs[section]
        hints = get_type_hints(type(cfg))
        setattr(cfg, name, _parse_value(raw.strip(), hints[name], key))


def _type_ok(value: Any, ann: str) -> bool:
    """Does ``value`` fit the annotation string ``ann`` (``int``, ``float | None``, ``tuple[int, ...]``…)?"""
    options = [a.strip() for a in ann.split("|")]
    for a in options:
        if a == "None" and value is None:
            return True
        if a == "bool" and isinstance(value, bool):
            return True
        if a == "int" and isinstance(value, int) and not isinstance(value, bool):
            return True
        if a == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
            return math.isfinite(value)
        if a == "str" and isinstance(value, str):
            return True
        if a.startswith("tuple[") and isinstance(value, (tuple, list)):
            inner = a[len("tuple["):].split(",")[0].strip()
            return all(_type_ok(v, inner) for v in value)
    return False


def check_config(cfg: Any, section: str = "") -> None:
    """Refuse a value of the wrong type or outside its field's range (one line per problem found).

    Runs before any file is written, on configs from the command line and from config.json alike.
    """
    hints = get_type_hints(type(cfg))
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        key = f"{section}.{f.name}" if section else f.name
        h = hints[f.name]
        ann = h.__name__ if isinstance(h, type) else str(h).replace("typing.", "")
        if not _type_ok(value, ann):
            raise ConfigError(f"{key} = {value!r} is not a valid {ann}")
        if value is None:
            continue
        items = value if isinstance(value, (tuple, list)) else (value,)
        m = f.metadata
        for v in items:
            if "choices" in m and v not in m["choices"]:
                raise ConfigError(f"{key} = {v!r}; choose one of: {', '.join(map(str, m['choices']))}")
            if "min" in m and v < m["min"]:
                raise ConfigError(f"{key} = {v!r} must be >= {m['min']:g}")
            if "max" in m and v > m["max"]:
                raise ConfigError(f"{key} = {v!r} must be <= {m['max']:g}")
            if "gt" in m and not v > m["gt"]:
                raise ConfigError(f"{key} = {v!r} must be > {m['gt']:g}")
    if isinstance(cfg, FamilyConfig):
        if cfg.twin and not type(cfg).TWIN:
            raise ConfigError(f"{section + '.' if section else ''}twin: this model has no capsule part, so no "
                              "twin (capsgen models lists the families that have one)")
        try:
            cfg.validate()
        except ValueError as exc:
            raise ConfigError(f"{section + ': ' if section else ''}{exc}") from None


def twin_conflicts(cfg: FamilyConfig, user_keys: set[str]) -> None:
    """Refuse (one line) a ``--set`` of a capsule-only field on a twin: the twin would ignore it."""
    if not cfg.twin:
        return
    for name in type(cfg).CAPSULE_FIELDS:
        if f"model.{name}" in user_keys or name in user_keys:
            raise ConfigError(f"--set model.{name} conflicts with --twin: only the capsule part reads it, and "
                              "the twin has none (capsgen models says what replaces it)")


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(cls: type, data: dict) -> Any:
    """Rebuild a dataclass from JSON, turning lists back into tuples where the type says so."""
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    if not isinstance(data, dict):
        raise ConfigError(f"expected a JSON object for {cls.__name__}, got {type(data).__name__}")
    unknown = set(data) - known
    if unknown:
        raise ConfigError(f"config has unknown keys {sorted(unknown)} for {cls.__name__}; "
                          "was it written by a newer capsgen?")
    kwargs = {}
    for k, v in data.items():
        if isinstance(v, list) and str(hints[k]).startswith("tuple"):
            v = tuple(v)
        kwargs[k] = v
    cfg = cls(**kwargs)
    check_config(cfg)
    return cfg


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True)
