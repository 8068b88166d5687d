"""What ``capsgen reproduce twins`` compares and how (torch-free): the model pairs, the settings
that decide the results, and the headline metric of every capability.

A *pair* is a capsule model (a family and one of its presets, or its defaults) and its matched
non-capsule twin (``--twin``: the same network, loss, data, budget and tuning with the capsule part
replaced; ``capsgen models`` says what replaces it). Three runs per pair and seed:

- ``capsule``: the capsule model for ``budget`` minutes of wall clock (or, with ``steps``, for
  exactly that many steps);
- ``twin-time``: the twin for the same wall clock (the minutes, or the seconds the capsule run took);
- ``twin-steps``: the twin for exactly the steps the capsule run reached (equal steps).

Equal wall clock on a shared machine depends on what else runs; equal steps does not. With
``steps`` the step count is the fixed axis and the wall clock follows the capsule run.

A family whose config fixes the length of a run (``fixed_steps()``, e.g. poe's stages) trains
both arms for that length: equal steps by construction, and ``twin-time`` is that same run.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# family[:preset] of every pair, in report order; the default is every pair whose family has a twin.
PAIRS = ("capsulegan:trunk-hinge", "capsnet", "gcapsnet:fc-recon", "vcaps", "poe")
ARMS = ("capsule", "twin-time", "twin-steps")

# (name, path into capsgen.eval.run_eval.evaluate_run's result, lower is better, decimals, label)
METRICS: tuple[tuple[str, tuple[str, ...], bool, int, str], ...] = (
    ("test_error", ("classify", "test_error"), True, 4, "test error"),
    ("fid", ("generate", "samples", "fid"), True, 2, "FID"),
    ("precision", ("generate", "samples", "precision"), False, 3, "precision"),
    ("recall", ("generate", "samples", "recall"), False, 3, "recall"),
    ("coverage", ("generate", "samples", "coverage"), False, 3, "coverage"),
    ("class_fidelity", ("class-conditional", "mean"), False, 3, "conditional fidelity"),
    ("attribute_accuracy", ("attributes", "mean"), False, 3, "attribute accuracy"),
    ("attribute_fidelity", ("attribute-conditional", "all_equal"), False, 3, "attribute fidelity (all equal)"),
)


def split_pair(name: str) -> tuple[str, str | None]:
    """"capsulegan:trunk-hinge" -> ("capsulegan", "trunk-hinge"); "capsnet" -> ("capsnet", None)."""
    family, _, preset = name.partition(":")
    return family, preset or None


def headline(result: dict[str, Any]) -> dict[str, float]:
    """The METRICS present in one evaluate_run result, by name."""
    out = {}
    for name, path, _, _, _ in METRICS:
        node: Any = result
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, (int, float)):
            out[name] = float(node)
    return out


@dataclass
class Settings:
    data: str
    budget: float | None                       # minutes of wall clock per capsule run (and twin-time run)
    out: str
    steps: int | None = None                   # instead of budget: steps per capsule run (and twin-steps run)
    data_dir: str | None = None
    seeds: tuple[int, ...] = (0, 1, 2)
    pairs: tuple[str, ...] = ()
    n: int = 2000                              # test images / samples per evaluation
    extra: tuple[str, ...] = ()                # --set pairs, each applied to the families that have it
    command: str = ""
    grids: bool = True
    notes: list[str] = field(default_factory=list)

    def identity(self) -> dict[str, Any]:
        """The settings that decide the results (a folder is only continued with the same ones)."""
        return {"data": self.data, "budget": self.budget, "steps": self.steps, "seeds": list(self.seeds),
                "pairs": list(self.pairs),
                "n": self.n, "extra": list(self.extra), "data_dir": self.data_dir}
