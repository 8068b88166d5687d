"""A complete, tiny model family in the shape docs/architecture.md asks of every family.

A softmax-regression classifier that also keeps a running mean image per class as *extra state*
(neither a module nor an optimizer), to prove such state is checkpointed and resumed. Adding it
to capsgen touches: this folder (config, task, FAMILY) and one line in FAMILIES — the tests do the
latter with ``monkeypatch.setitem(FAMILIES, …)``.
"""
from capsgen.models.family import Family
from tests.example_family.config import ExampleConfig


def _task():
    from tests.example_family.task import ExampleTask

    return ExampleTask


FAMILY = Family("example", "softmax regression with running class means (test family)", ExampleConfig,
                _task, ("classify",))
