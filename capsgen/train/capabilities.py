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
from dataclasses import dataclass

import torch

from capsgen.errors import CapsgenError


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
    sphere or on the half visited in training. Not in :data:`CAPABILITIES` — such a run
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


    @abstractmethod
    def capsule_poses(self, n: int, capsule: int, domain: str | None,
                      generator: torch.Generator) -> torch.Tensor:
        """The capsule values behind :meth:`sample_capsules`: [n, K, D] (K = num_capsules()), zero
        except capsule ``capsule``; ``decode_poses`` of them with that capsule active gives the
        images. Bad choices raise a one-line CapsgenError."""


# -- what ``capsgen explore`` shows ---------------------------------------------------------------
@dataclass(frozen=True)
class PoseLayout:
    """The capsules a :class:`PoseDecoding` model decodes from: K capsules of D values each.

    ``pairs`` False: exactly one capsule is active (decoded) per image, e.g. the class capsule.
    ``pairs`` True: capsules 2a and 2a+1 are attribute a's "absent" and "present" capsules and
    exactly one of each pair is active (Huang et al.'s attribute mode). ``bound``: the range
    [-bound, bound] a user may set a value in (the squash keeps every value in (-1, 1); a
    Gaussian prior's values lie in [-4, 4] but for 1 in 15,000).
    """

    names: tuple[str, ...]
    dim: int
    bound: float
    pairs: bool = False

    def check(self, poses: torch.Tensor, active: torch.Tensor) -> None:
        """Refuse poses [N, K, D] and active [N, K] (bool) that do not fit, in one line."""
        K, D = len(self.names), self.dim
        if poses.dim() != 3 or tuple(poses.shape[1:]) != (K, D):
            raise CapsgenError(f"poses must be [N, {K}, {D}], got {list(poses.shape)}")
        if tuple(active.shape) != (len(poses), K) or active.dtype != torch.bool:
            raise CapsgenError(f"active must be [N, {K}] booleans, got {list(active.shape)}")
        if not bool(torch.isfinite(poses).all()):
            raise CapsgenError("poses must be finite numbers")
        worst = float(poses.abs().max()) if poses.numel() else 0.0
        if worst > self.bound:
            raise CapsgenError(f"a capsule value {worst:.3g} lies outside [-{self.bound:g}, {self.bound:g}]")
        per = active.view(len(poses), K // 2, 2).sum(-1) if self.pairs else active.sum(-1, keepdim=True)
        if not bool((per == 1).all()):
            raise CapsgenError("exactly one capsule of each attribute pair must be active" if self.pairs
                               else "exactly one capsule must be active")


class PoseDecoding(ABC):
    """Decodes images from capsule values a user may edit (Sabour et al.'s figure 4, live)."""

    @abstractmethod
    def pose_layout(self) -> PoseLayout:
        """The capsules, their size and the range of their values."""

    @abstractmethod
    def decode_poses(self, poses: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        """Images [N, C, H, W] in [0, 1] from poses [N, K, D], keeping only the capsules where
        active [N, K] (bool) is True; poses that do not fit :meth:`pose_layout` raise CapsgenError."""


class PoseEncoding(ABC):
    """Encodes images into the capsules :class:`PoseDecoding` decodes."""

    @abstractmethod
    def encode_poses(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(poses [N, K, D], scores [N, K] (higher = more present), active [N, K] bool: the
        capsules the model itself would decode) for images [N, C, H, W] in [0, 1]."""


class PosePrior(ABC):
    """Draws capsule values from the model's prior."""

    @abstractmethod
    def sample_poses(self, active: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Poses [N, K, D] drawn from the prior for the active capsules [N, K] (bool), values
        clipped to the layout's bound; the inactive capsules are zero."""


class RoutingMaps(ABC):
    """Shows where in the image the routing sent each class capsule's input from."""

    @abstractmethod
    def encode_with_routing(self, images: torch.Tensor
                            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`PoseEncoding.encode_poses`' (poses, scores, active) and, from the same forward
        pass, maps [N, K, h, w]: for each class capsule k, the coupling coefficient c_ik of the
        primary capsules i at each position of the h x w primary grid, averaged over capsule types."""


class LatentWalking(ABC):
    """Generates from given latents, so a user can walk between two of them."""

    @abstractmethod
    def latent_size(self) -> int:
        """The length L of a latent vector."""

    @abstractmethod
    def walk(self, start: torch.Tensor, end: torch.Tensor, t: torch.Tensor,
             labels: torch.Tensor | None) -> torch.Tensor:
        """Images [N, C, H, W] in [0, 1] at fractions t [N] of the family's path from latent
        start [L] to end [L]; labels [N] for a class-conditional model, None otherwise.
        Arguments that do not fit raise CapsgenError (:func:`check_walk`)."""


def check_walk(size: int, start: torch.Tensor, end: torch.Tensor, t: torch.Tensor,
               labels: torch.Tensor | None, num_classes: int | None) -> None:
    """Refuse a :meth:`LatentWalking.walk`'s arguments that do not fit, in one line. ``num_classes``
    None: the generator takes no class, so labels must be None."""
    if tuple(start.shape) != (size,) or tuple(end.shape) != (size,):
        raise CapsgenError(f"latents must have {size} values, got {list(start.shape)} and {list(end.shape)}")
    if t.dim() != 1 or not bool(((t >= 0) & (t <= 1)).all()):
        raise CapsgenError("walk fractions must be a list of numbers in [0, 1]")
    if num_classes is None:
        if labels is not None:
            raise CapsgenError("this generator takes no class")
    elif labels is None or tuple(labels.shape) != tuple(t.shape) or not bool(((labels >= 0) &
                                                                             (labels < num_classes)).all()):
        raise CapsgenError(f"give one class in 0..{num_classes - 1} per walk fraction")


CAPABILITIES: dict[str, type] = {
    "generate": Generative,
    "class-conditional": ClassConditional,
    "attribute-conditional": AttributeConditional,
    "classify": Classifying,
    "attributes": AttributePredicting,
    "discriminate": Discriminating,
    "encode": Encoding,
}


#: What ``capsgen explore`` can show of a run. Kept apart from :data:`CAPABILITIES`, which are
#: what a run can *do* (``capsgen models``/``eval`` list those); ``disabled_capabilities()``
#: narrows these too.
EXPLORABLE: dict[str, type] = {
    "decode-poses": PoseDecoding,
    "encode-poses": PoseEncoding,
    "pose-prior": PosePrior,
    "capsule-sampling": CapsuleSampling,
    "routing-maps": RoutingMaps,
    "latent-walk": LatentWalking,
}


def explorable_of(task) -> list[str]:
    """The :data:`EXPLORABLE` names ``task`` provides, in that order."""
    disabled = set(task.disabled_capabilities())
    return [name for name, cls in EXPLORABLE.items() if isinstance(task, cls) and name not in disabled]


def capabilities_of(task) -> list[str]:
    """The capability names ``task`` provides, in :data:`CAPABILITIES` order.

    A Task whose capabilities depend on its config (e.g. a variational capsule net in class or
    attribute mode) narrows the inherited set by defining ``disabled_capabilities()``.
    """
    disabled = set(task.disabled_capabilities())
    return [name for name, cls in CAPABILITIES.items() if isinstance(task, cls) and name not in disabled]


def has(task, name: str) -> bool:
    return name in capabilities_of(task)
