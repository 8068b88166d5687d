"""The latent code of a ``vcaps`` run: Huang et al.'s variational capsules (:class:`CapsuleCode`)
or its twin's one Gaussian latent (:class:`TwinCode`, ``model.twin``).

The Task speaks to both through masks [B, *caps] — which entity is present: a class's capsule, or
per attribute its absent (0) / present (1) capsule, as :func:`capsgen.nn.variational.target_mask`
makes them — and through the decoder input a latent and a mask make. Everything else in the Task
(noise per global batch, the LSGAN path, sampling, figures, evaluation) is shared, so the two
differ in exactly the capsule part:

=====================  =======================================  =======================================
                       capsules (Huang et al.)                  twin (conditional VAE)
=====================  =======================================  =======================================
latent                 P capsules [B, *caps, D]                 one Gaussian [B, P * D]
KL to N(0, I)          per capsule [B, *caps]                   of the latent [B]
prediction             least-KL capsule                         argmax (class) / logit > 0 (attribute)
                                                                of the class head
encoder loss           KL margin loss, eq. 3 (the present       KL + cross-entropy of the class head
                       capsule's KL + lambda * hinge on the     (binary, summed over attributes),
                       absent ones' below m)                    both weight 1 as in eq. 3's T_k KL_k
decoder input          the capsules, masked (+ presence         [latent, condition]: the one-hot
                       vectors)                                 class or the attribute vector
=====================  =======================================  =======================================

In both, ``train_mask`` says what the decoder is told while training: "min-kl" the encoder's own
prediction (the least-KL capsule; the twin's class head), "label" the true class / attributes.
Reconstruction, alpha, the discriminator, batch and rates are the Task's, the same for both.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from capsgen.nn.variational import (capsule_kl, kl_margin_loss, min_kl_mask, predict_from_kl, target_mask,
                                    training_mask)


@dataclass
class Posterior:
    """q(latent | x) of a batch. mu, logvar: [B, *caps, D] (capsules) or [B, P * D] (twin); kl
    (float32): per capsule [B, *caps] or of the one latent [B]; logits: the twin's class head [B, G]."""

    mu: torch.Tensor
    logvar: torch.Tensor
    kl: torch.Tensor
    logits: torch.Tensor | None = None


class CapsuleCode:
    """Variational capsules: a KL per capsule says which entity is present (the capsule model)."""

    def __init__(self, ae: torch.nn.Module, caps: tuple[int, ...], dim: int, kl_margin: float, kl_lambda: float):
        self.ae, self.caps, self.dim = ae, caps, dim
        self.kl_margin, self.kl_lambda = kl_margin, kl_lambda
        self.latent_shape = (*caps, dim)

    def read(self, out: tuple[torch.Tensor, ...]) -> Posterior:
        """The encoder's (mu, logvar) -> Posterior (KL in float32)."""
        mu, logvar = out
        return Posterior(mu, logvar, capsule_kl(mu.float(), logvar.float()))

    def predict(self, post: Posterior) -> torch.Tensor:
        """Classes [B] or attribute vectors [B, A]: the least-KL capsule."""
        return predict_from_kl(post.kl)

    def predicted_mask(self, post: Posterior) -> torch.Tensor:
        return min_kl_mask(post.kl)

    def training_mask(self, post: Posterior, targets: torch.Tensor, kind: str) -> torch.Tensor:
        return training_mask(post.kl, targets, kind)

    def decoder_input(self, latent: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Capsules [B, *caps, D] zeroed but where mask [B, *caps] is 1 (+ the presence vectors)."""
        return self.ae.masked(latent, mask)

    def loss(self, post: Posterior, targets: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """L_c, the KL margin loss (eq. 3), and its figures."""
        l_c = kl_margin_loss(post.kl, targets, self.kl_margin, self.kl_lambda)
        return l_c, {"kl_margin": l_c}

    def figures(self, post: Posterior, targets: torch.Tensor) -> dict[str, float]:
        """Mean KL of the true entities' capsules (the ones decoded with the label) and of the others."""
        kl = post.kl
        tm = target_mask(targets, kl.shape, kl.dtype)
        return {"kl_active": ((kl * tm).sum() / tm.sum()).item(),
                "kl_inactive": ((kl * (1 - tm)).sum() / (1 - tm).sum().clamp_min(1)).item()}

    def decoded_kl(self, post: Posterior, mask: torch.Tensor) -> float:
        """Mean KL of a decoded (masked-in) capsule."""
        return ((post.kl * mask).sum() / mask.sum()).item()

    def class_scores(self, out: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """-KL of every class capsule [B, K]: the argmax is the least KL."""
        return -capsule_kl(*out)

    def attribute_probs(self, out: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """sigmoid(KL_absent - KL_present) [B, A]: > 1/2 exactly when "present" has the smaller KL."""
        kl = capsule_kl(*out)
        return torch.sigmoid(kl[..., 0] - kl[..., 1])

    def swap(self, a: torch.Tensor, b: torch.Tensor, count: int) -> torch.Tensor:
        """Decoder inputs a, b [R, A, 2, D] -> [R, count, A, 2, D]: a with attribute j's capsule pair
        (mask and mean) taken from b, j = 0..count-1."""
        out = a.unsqueeze(1).repeat(1, count, *([1] * (a.dim() - 1)))
        j = torch.arange(count)
        out[:, j, j] = b[:, j]
        return out


class TwinCode:
    """The twin: one Gaussian latent of P * D dimensions and a class head (a conditional VAE)."""

    def __init__(self, ae: torch.nn.Module, caps: tuple[int, ...], dim: int):
        self.ae, self.caps, self.dim = ae, caps, dim
        self.latent_dim = ae.encoder.posterior.latent_dim
        self.latent_shape = (self.latent_dim,)
        self.attributes = len(caps) == 2     # (A, 2); else (K,)

    def read(self, out: tuple[torch.Tensor, ...]) -> Posterior:
        """The encoder's (mu, logvar, logits) -> Posterior (KL in float32)."""
        mu, logvar, logits = out
        return Posterior(mu, logvar, capsule_kl(mu.float(), logvar.float()), logits)

    def predict(self, post: Posterior) -> torch.Tensor:
        """Classes [B] (argmax of the class head) or attribute vectors [B, A] (logit > 0)."""
        return (post.logits > 0).long() if self.attributes else post.logits.argmax(1)

    def predicted_mask(self, post: Posterior) -> torch.Tensor:
        return target_mask(self.predict(post), (len(post.logits), *self.caps), post.kl.dtype)

    def training_mask(self, post: Posterior, targets: torch.Tensor, kind: str) -> torch.Tensor:
        if kind == "label":
            return target_mask(targets, (len(targets), *self.caps), post.kl.dtype)
        return self.predicted_mask(post)    # "min-kl": decode what the encoder predicts

    def condition(self, mask: torch.Tensor) -> torch.Tensor:
        """The decoder's condition: the one-hot class [B, K], or the present bits [B, A] of the pairs."""
        return mask[..., 1] if self.attributes else mask

    def decoder_input(self, latent: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[latent [B, L], condition [B, G]] -> [B, L + G]."""
        return torch.cat([latent, self.condition(mask).to(latent.device, latent.dtype)], 1)

    def loss(self, post: Posterior, targets: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """KL of the latent (batch mean) + the class head's cross-entropy, and the latter as a figure."""
        logits = post.logits.float()
        if self.attributes:
            ce = F.binary_cross_entropy_with_logits(logits, targets.float(), reduction="none").sum(1).mean()
        else:
            ce = F.cross_entropy(logits, targets)
        return post.kl.mean() + ce, {"class_loss": ce}

    def figures(self, post: Posterior, targets: torch.Tensor) -> dict[str, float]:
        """Mean KL of the latent, the counterpart of the capsule model's decoded capsule (kl_active)."""
        return {"kl_active": post.kl.mean().item()}

    def decoded_kl(self, post: Posterior, mask: torch.Tensor) -> float:
        return post.kl.mean().item()

    def class_scores(self, out: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """The class head's logits [B, K]."""
        return out[2]

    def attribute_probs(self, out: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """sigmoid of the attribute head's logits [B, A]."""
        return torch.sigmoid(out[2])

    def swap(self, a: torch.Tensor, b: torch.Tensor, count: int) -> torch.Tensor:
        """Decoder inputs a, b [R, L + A] -> [R, count, L + A]: a with attribute j's condition bit
        taken from b (the latent is not split by attribute, so it stays a's), j = 0..count-1."""
        out = a.unsqueeze(1).repeat(1, count, 1)
        j = torch.arange(count)
        out[:, j, self.latent_dim + j] = b[:, self.latent_dim + j]
        return out


__all__ = ["Posterior", "CapsuleCode", "TwinCode"]
