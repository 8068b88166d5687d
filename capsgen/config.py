"""Run configuration: the generic training settings plus a family's own dataclass.

Configs are plain dataclasses so they serialise to ``config.json`` and come back exactly;
``--set key=value`` overrides are checked against their fields, and an unknown key gets one
line listing the valid ones.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, fields
from typing import Any, get_type_hints

from capsgen.errors import ConfigError


@dataclass
class TrainConfig:
    """Settings of the generic loop, shared by every model family."""

    family: str = "capsnet"
    data: str = "fashion-mnist"
    data_dir: str | None = None
    seed: int = 0
    batch_size: int = 100
    steps: int | None = None          # total optimisation steps; wins over epochs
    epochs: float | None = None       # used when steps is None (default 1 epoch)
    minutes: float | None = None      # wall-clock budget (training + evaluation); with neither
                                      # steps nor epochs, train until it is spent
    log_every: int = 20               # steps between metrics.jsonl / TensorBoard rows
    eval_every: int = 0               # steps between test evaluations; 0 = once per epoch
    eval_limit: int | None = None     # evaluate on the first N test images (None = all)
    checkpoint_every: int = 100       # steps between atomic 'last' checkpoints
    threads: int | None = None        # torch intra-op threads (None = torch default)


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


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(cls: type, data: dict) -> Any:
    """Rebuild a dataclass from JSON, turning lists back into tuples where the type says so."""
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise ConfigError(f"config has unknown keys {sorted(unknown)} for {cls.__name__}; "
                          "was it written by a newer capsgen?")
    kwargs = {}
    for k, v in data.items():
        if isinstance(v, list) and str(hints[k]).startswith("tuple"):
            v = tuple(v)
        kwargs[k] = v
    return cls(**kwargs)


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True)
