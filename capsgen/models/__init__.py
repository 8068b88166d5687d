"""Model families: one folder each (config, networks, Task), one registry line each.

Adding a family: make ``capsgen/models/<family>/`` with a torch-free ``config.py`` and an
``__init__.py`` that defines ``FAMILY`` (see :class:`~capsgen.models.family.Family`), then add
one line below. Nothing else in capsgen needs to change (docs/architecture.md).
"""
from __future__ import annotations

from capsgen.errors import ConfigError
from capsgen.models import acgan, capsnet, classifier, gan, gcapsnet, poe, vcaps
from capsgen.models.family import Family

FAMILIES: dict[str, Family] = {f.name: f for f in (
    capsnet.FAMILY,
    classifier.FAMILY,
    gan.DCGAN,
    gan.CAPSULEGAN,
    acgan.FAMILY,
    gcapsnet.FAMILY,
    vcaps.FAMILY,
    poe.FAMILY,
)}


def get_family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; choose one of: {', '.join(sorted(FAMILIES))}") from None
