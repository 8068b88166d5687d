"""``gcapsnet``: the G-CapsNet classifiers of Chen et al. (Generalized CapsNets with trainable
routing) — fully connected, convolutional and multi-layer capsule networks and their CNN
baseline, with the paper's presets (see :mod:`capsgen.models.gcapsnet.config`)."""
