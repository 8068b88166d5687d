"""``gcapsnet``: the G-CapsNet classifiers of Chen et al. (Generalized CapsNets with trainable
routing) — fully connected, convolutional and multi-layer capsule networks and their CNN
baseline, with the paper's presets (see :mod:`capsgen.models.gcapsnet.config`)."""
from capsgen.models.family import Family
from capsgen.models.gcapsnet.config import GCapsNetConfig


def _task():
    from capsgen.models.gcapsnet.task import GCapsNetTask

    return GCapsNetTask


FAMILY = Family("gcapsnet", "G-CapsNet classifiers with trainable routing (FC, conv, multi-layer) and their "
                "CNN baseline", GCapsNetConfig, _task, ("classify",), paper="Chen et al. (G-CapsNets)")
