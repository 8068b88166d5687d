"""Variational capsule networks (Huang et al.): config (``config``), networks (``nets``) and the
Task (``task``).

An encoder maps an image to one Gaussian capsule per entity — a class, or each state of a
binary attribute — whose KL divergence to the prior N(0, I) says whether the entity is present;
a decoder draws the image back from the masked, reparameterised capsules. The capsule maths
lives in :mod:`capsgen.nn.variational`.

The registry entry lists the union of what the Task class can do; a run does the class half
(classify, class-conditional) or the attribute half (attributes, attribute-conditional) by its
``model.mode``, and both generate (``VCapsTask.disabled_capabilities``).
"""
from capsgen.models.family import Family
from capsgen.models.vcaps.config import VCapsConfig


def _task():
    from capsgen.models.vcaps.task import VCapsTask

    return VCapsTask


FAMILY = Family("vcaps", "variational capsules: KL-to-prior capsules per class or attribute, masked decoder, "
                "optional LSGAN discriminator", VCapsConfig, _task,
                ("generate", "class-conditional", "attribute-conditional", "classify", "attributes", "encode"),
                paper="Huang et al.")
