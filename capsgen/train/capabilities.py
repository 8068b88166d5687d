"""What a trained run can do besides training, declared by the Task class that implements it.

A family's Task inherits the capability classes it provides; commands ask
``isinstance(task, Generative)`` (or :func:`capabilities_of`) and never probe attributes. Every
image goes in and comes out as float [N, C, H, W] in [0, 1] on the CPU, whatever device the
model is on; methods run in eval mode and change no state. ``generator`` is a CPU
``torch.Generator``: the same seed gives the same images on any device.

The names (``CAPABILITIES``) are also what a family's registry entry lists, so ``capsgen models``
can show them without importing torch; a test keeps the two in step.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import torch


class Generative(ABC):
    """Draws images from the model's prior."""

    @abstractmethod
    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """n images [n, C, H, W] in [0, 1]."""

    @abstractmethod
    def interpolate(self, rows: int, cols: int, generator: torch.Generator) -> torch.Tensor:
        """rows x cols images [rows * cols, C, H, W]: each row walks between two encodings/latents."""


class ClassConditional(ABC):
    """Draws images of a requested class."""

    @abstractmethod
    def sample_classes(self, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """One image per entry of labels [n] (int64 in [0, K)) -> [n, C, H, W] in [0, 1]."""


class AttributeConditional(ABC):
    """Draws images with requested binary attributes."""

    @abstractmethod
    def sample_attributes(self, attributes: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """One image per row of attributes [n, A] in {0, 1} -> [n, C, H, W] in [0, 1]."""


class Classifying(ABC):
    """Scores the classes of an image: test error, and the target of adversarial attacks."""

    @abstractmethod
    def class_scores(self, images: torch.Tensor) -> torch.Tensor:
        """Class scores [B, K] (higher = more likely) for images [B, C, H, W] in [0, 1] on
        ``self.device``; differentiable with respect to the images (attacks need the gradient)."""


class AttributePredicting(ABC):
    """Predicts binary attributes of an image."""

    @abstractmethod
    def attribute_probs(self, images: torch.Tensor) -> torch.Tensor:
        """P(attribute present) [B, A] for images [B, C, H, W] in [0, 1]."""


class Discriminating(ABC):
    """Tells real from generated images (a GAN's discriminator)."""

    @abstractmethod
    def discriminate(self, images: torch.Tensor) -> torch.Tensor:
        """P(real) [N] for images [N, C, H, W] in [0, 1]."""


class Encoding(ABC):
    """Maps images to the model's capsules and capsules back to images (an autoencoding capsule
    model): ``decode_capsules(encode_capsules(x))`` is the model's reconstruction of x."""

    @abstractmethod
    def encode_capsules(self, images: torch.Tensor) -> torch.Tensor:
        """Capsules [N, *caps, D] (the family's layout, on the CPU) of images [N, C, H, W] in [0, 1]."""

    @abstractmethod
    def decode_capsules(self, capsules: torch.Tensor) -> torch.Tensor:
        """Images [N, C, H, W] in [0, 1] from capsules laid out as :meth:`encode_capsules` returns them."""


class CapsuleSampling(ABC):
    """A refinement of :class:`Generative` for models whose prior is a set of code capsules
    (Hauser's products of expert capsules): draw from one chosen capsule, on the whole pose
    sphere or on the half visited in training. Not a capability name of its own — such a run
    lists "generate"; ``capsgen sample --capsule/--domain`` asks ``isinstance`` of this class."""

    @abstractmethod
    def num_capsules(self) -> int:
        """How many code capsules can be chosen (indices 0..num_capsules() - 1)."""

    @abstractmethod
    def sample_capsules(self, n: int, capsule: int | None, domain: str | None,
                        generator: torch.Generator) -> torch.Tensor:
        """n images [n, C, H, W] in [0, 1] from ``capsule`` (None: uniform over capsules) on
        ``domain`` "full" or "restricted" (None: the run's default). Bad choices raise a one-line
        CapsgenError."""


CAPABILITIES: dict[str, type] = {
    "generate": Generative,
    "class-conditional": ClassConditional,
    "attribute-conditional": AttributeConditional,
    "classify": Classifying,
    "attributes": AttributePredicting,
    "discriminate": Discriminating,
    "encode": Encoding,
}


def capabilities_of(task) -> list[str]:
    """The capability names ``task`` provides, in :data:`CAPABILITIES` order.

    A Task whose capabilities depend on its config (e.g. a variational capsule net in class or
    attribute mode) narrows the inherited set by defining ``disabled_capabilities()``.
    """
    disabled = set(task.disabled_capabilities())
    return [name for name, cls in CAPABILITIES.items() if isinstance(task, cls) and name not in disabled]


def has(task, name: str) -> bool:
    return name in capabilities_of(task)
