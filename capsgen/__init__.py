"""capsgen: capsule-network generative models in PyTorch.

``capsgen.load_run(path)`` and ``capsgen.train(family, data=..., out=..., **overrides)`` are the
Python API (:mod:`capsgen.api`). They are looked up on first use, so ``import capsgen`` (and the
command line's ``--help``) does not import torch.
"""
import types

__version__ = "0.1.0"
__all__ = ["load_run", "train", "__version__"]


class _CallableTrainPackage(types.ModuleType):
    """``capsgen.train`` is the package of the loop (``capsgen.train.loop``, …) and, called,
    :func:`capsgen.api.train`: a subpackage's name on its parent is the module itself once it is
    imported, so the function cannot simply sit beside it."""

    def __call__(self, *args, **kwargs):
        from capsgen import api   # imports torch: only now that a function needs it

        return api.train(*args, **kwargs)


from capsgen import train  # noqa: E402  (torch-free package __init__)

train.__class__ = _CallableTrainPackage


def __getattr__(name: str):
    if name in ("load_run", "Run"):
        from capsgen import api

        return getattr(api, name)
    raise AttributeError(f"module 'capsgen' has no attribute {name!r}")
