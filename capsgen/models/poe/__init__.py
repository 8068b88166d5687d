"""Products of expert capsules trained by contrastive divergence, mixed by dynamic routing (Hauser).

``config.PoEConfig`` (torch-free settings) and ``nets`` (the convolutional autoencoder front end,
the capsule encoder W and decoder U, sampling from full or restricted pose domains, and the
negative-image measure). The CD maths itself lives in :mod:`capsgen.nn.contrastive`.
"""
