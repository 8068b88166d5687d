"""Auxiliary-classifier GAN (Odena et al.) as Chen et al. (G-CapsNets) use it to draw MNIST-like
test digits: ``config.ACGANConfig`` (torch-free settings), ``nets`` (the class-conditional
generator, the discriminator with a source and a class head, and the AC-GAN losses) and
``task.ACGANTask`` (the alternating D/G step, samples of a chosen class, pictures, evaluation).

Its discriminator's class head makes a trained run a classifier too (``capsgen attack`` works on it).
"""
from capsgen.models.acgan.config import ACGANConfig
from capsgen.models.family import Family


def _task():
    from capsgen.models.acgan.task import ACGANTask

    return ACGANTask


FAMILY = Family("acgan", "AC-GAN: class-conditional generator vs a discriminator with source and class heads",
                ACGANConfig, _task, ("generate", "class-conditional", "classify", "discriminate"),
                paper="Odena et al.; Chen et al. (G-CapsNets)")
