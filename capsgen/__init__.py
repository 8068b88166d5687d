"""capsgen: capsule-network generative models in PyTorch."""

__version__ = "0.1.0"
