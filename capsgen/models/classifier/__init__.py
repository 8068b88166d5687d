"""``classifier``: a small CNN classifier — the evaluator network behind the sample metrics."""
from capsgen.models.classifier.config import ClassifierConfig
from capsgen.models.family import Family


def _task():
    from capsgen.models.classifier.task import ClassifierTask

    return ClassifierTask


FAMILY = Family("classifier", "small CNN classifier; the evaluator network of the sample metrics",
                ClassifierConfig, _task, ("classify",))
