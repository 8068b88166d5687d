"""``capsgen reproduce EXPERIMENT``: a paper's experiments end to end, into one report folder.

Each experiment is a package ``capsgen/reproduce/<experiment>/`` whose ``__init__`` (torch-free)
gives ``DESCRIPTION``, ``add_arguments(parser, dataset_names)`` and ``main(args, command) ->
{"report": path, ...}``; it trains its models, evaluates them and writes ``report.md`` /
``report.html`` beside the papers' own numbers. Stages are resumable: a finished stage's result
is kept in the folder's ``results.json``, so running the same command again after an interruption
continues where it stopped instead of starting over. Register an experiment with one line below.
"""
from __future__ import annotations

from types import ModuleType

from capsgen.reproduce import capsulegan, gcapsnet, poe, twins, vcaps

EXPERIMENTS: dict[str, ModuleType] = {
    "capsulegan": capsulegan,
    "gcapsnet": gcapsnet,
    "poe": poe,
    "twins": twins,
    "vcaps": vcaps,
}
