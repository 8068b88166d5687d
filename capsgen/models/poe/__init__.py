"""Products of expert capsules trained by contrastive divergence, mixed by dynamic routing (Hauser).

``config.PoEConfig`` (torch-free settings, the schedule of stages), ``nets`` (the convolutional
autoencoder front end, the capsule encoder W and decoder U, sampling from full or restricted pose
domains, and the negative-image measure) and ``task.PoETask`` (the three phases as one resumable
run, sampling by capsule, evaluation per stage, Hauser's figure-2 grids), and ``twin`` (the
non-capsule twin, ``--twin``: the same autoencoder with a PPCA mixture fitted by EM, one component
per code capsule). The CD maths itself lives in :mod:`capsgen.nn.contrastive`, the mixture's EM in
:mod:`capsgen.nn.twins_poe`.
"""
from capsgen.models.family import Family
from capsgen.models.poe.config import PoEConfig


def _task():
    from capsgen.models.poe.task import PoETask

    return PoETask


FAMILY = Family("poe", "products of expert capsules: conv autoencoder, capsule encoder W by contrastive "
                "divergence, decoder U; samples per code capsule", PoEConfig, _task, ("generate", "encode"),
                paper="Hauser")
