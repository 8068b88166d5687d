"""Variational capsule networks (Huang et al.): config (``config``) and networks (``nets``).

An encoder maps an image to one Gaussian capsule per entity — a class, or each state of a
binary attribute — whose KL divergence to the prior N(0, I) says whether the entity is present;
a decoder draws the image back from the masked, reparameterised capsules. The capsule maths
lives in :mod:`capsgen.nn.variational`.
"""
