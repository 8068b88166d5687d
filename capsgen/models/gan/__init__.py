"""The GAN families ``dcgan`` and ``capsulegan``: one Task (generator vs discriminator) whose
config picks the discriminator — convolutional (DCGAN, Radford et al.) or a CapsNet (CapsuleGAN:
Karmakar's BCE discriminator, Jaiswal et al. 2018's margin-loss capsule). They share this folder
because they share every line but their defaults and presets."""
from capsgen.models.family import Family
from capsgen.models.gan.config import CapsuleGANConfig, DCGANConfig


def _task():
    from capsgen.models.gan.task import GANTask

    return GANTask


DCGAN = Family("dcgan", "DCGAN: convolutional generator and discriminator", DCGANConfig, _task,
               ("generate", "discriminate"), paper="Radford et al. 2015")
CAPSULEGAN = Family("capsulegan", "CapsuleGAN: DCGAN generator vs a CapsNet discriminator", CapsuleGANConfig,
                    _task, ("generate", "discriminate"), paper="Karmakar; Jaiswal et al. 2018")
