"""One ``--set`` list for every model of an experiment: which pairs each model takes, and the one-line
refusal of a pair that no model has or that the experiment sets itself.

An experiment trains models of several families (capsnet and gcapsnet, a GAN and its twin, …); a
user's ``--set`` list serves them all, and each model takes the fields it has
(``model.primary_capsules`` is capsnet's, ``model.primary_caps`` gcapsnet's). A field the model's
other values make ineffective (``FamilyConfig.ineffective()``, e.g. routing iterations of a
one-capsule layer) or that its twin ignores (``CAPSULE_FIELDS`` on a twin) is left out for that
model only.
"""
from __future__ import annotations

from dataclasses import fields

from capsgen.config import TrainConfig, apply_overrides
from capsgen.errors import CapsgenError

# Train fields an experiment sets from its own options (a --set of them would undo the settings
# results.json records), with the option to use instead.
OWN_FLAGS = {"data": "--data", "data_dir": "--data-dir", "seed": "--seeds", "minutes": "--budget",
             "steps": "--budget", "epochs": "--budget"}


def field_names(cls: type) -> set[str]:
    return {f.name for f in fields(cls)} - {"family"}


def _key(pair: str) -> tuple[str, str]:
    section, _, name = pair.split("=", 1)[0].strip().rpartition(".")
    return section, name


def check_extra(extra: tuple[str, ...], families: list[str], own_flags: dict[str, str] = OWN_FLAGS) -> None:
    """Refuse, in one line, a pair without ``=``, one the experiment sets itself, or one no model has."""
    from capsgen.models import get_family

    train = field_names(TrainConfig)
    model = set().union(*(field_names(get_family(f).config_cls) for f in families))
    for pair in extra:
        if "=" not in pair:
            raise CapsgenError(f"--set expects key=value, got {pair!r}")
        section, name = _key(pair)
        key = f"{section}.{name}" if section else name
        if section in ("", "train") and name in own_flags:
            raise CapsgenError(f"--set {key}: the reproduction sets it; use {own_flags[name]}")
        known = {"": train | model, "train": train, "model": model}.get(section, set())
        if name not in known:
            raise CapsgenError(f"--set {key}: no model of this experiment has that field "
                               f"({', '.join(families)}; e.g. model.lr, train.threads)")


def applicable(family: str, base: list[str], extra: tuple[str, ...]) -> list[str]:
    """The pairs of ``extra`` that ``family`` has and that take effect on top of ``base`` (the
    model's own pairs, its preset's first)."""
    from capsgen.models import get_family

    cls = get_family(family).config_cls
    own = {"train": field_names(TrainConfig), "model": field_names(cls)}
    keep = []
    for pair in extra:
        section, name = _key(pair)
        if (section and name in own.get(section, ())) or (not section and (name in own["train"]) != (name in own["model"])):
            keep.append(pair)
    mcfg, tcfg = cls(), TrainConfig()
    apply_overrides({"train": tcfg, "model": mcfg}, base + keep)
    void = set(mcfg.ineffective())
    if mcfg.twin:
        void |= {f"model.{name}" for name in cls.CAPSULE_FIELDS}
    return [p for p in keep if (k := p.split("=", 1)[0].strip()) not in void and f"model.{k}" not in void]
