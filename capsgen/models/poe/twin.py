"""The poe family's non-capsule twin: the same autoencoder, with a Gaussian mixture in place of the capsules.

Hauser's capsule part reads the autoencoder's features as 576 primary capsules, mixes them by
routing through W into J code capsules of q = code_dim pose dimensions, decodes a code with U, and
samples by switching ONE code capsule on with a Gaussian pose. The twin keeps the autoencoder, its
training, the data and the schedule of stages, and replaces all of that by a mixture of J
probabilistic-PCA components (:mod:`capsgen.nn.twins_poe`) on the same features, flattened and
centred, D = F h w (4,608 for 28 x 28): component j is mu_j + W_j z + noise, z ~ N(0, I_q). So
"each capsule holds an object" (a q-D pose decoded linearly by U_j) meets "each mixture component
holds an object" (a q-D latent decoded linearly by W_j, whose [D, q] is the shape of U_j), with one
component per code capsule. Why a PPCA mixture rather than a diagonal one: a component's samples
must vary along a few directions as a capsule's do; independent per-feature noise in 4,608
dimensions is not a counterpart of a 16-D pose.

Stages, the capsule model's schedule step for step (so the run length, fixed_steps, is the same):
  ae     the autoencoder, exactly as the capsule model's;
  stats  the features' training mean and mean per-feature variance (as the capsules' mean there);
  w, u   EM: each step adds one batch's E-step sums; every ``em_batches`` steps, and at the run's
         last step, one M-step. Statistics under torchrun are averaged over processes first.
Sampling component K (``capsgen sample RUN --capsule K``), from g ~ N(0, I_q):
  full        mu_K + W_K g + sqrt(s_K) eps, eps ~ N(0, I_D): a draw of component K's Gaussian;
  restricted  mu_K + W_K g', g' = g min(1, r / ||g||), r^2 the chi-square_q median: component K's
              core, its noise-free principal subspace within the ball holding half the latent's mass
              (the counterpart of Hauser's half-sphere: the part of the pose space the data fills
              best; the same g as full, so the two domains show the same draws).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn as nn

from capsgen.errors import CapsgenError
from capsgen.nn.twins_poe import (EMStatistics, MixtureParams, chi2_quantile, em_statistics, m_step,
                                  posterior_latents, posterior_reconstruction, responsibilities)

Reduce = Callable[[list[torch.Tensor]], None]
NOISE_FLOOR = 1e-3      # of the mean feature variance: a component fitted to a single example stays finite
MIN_COUNT = 1e-3        # examples' worth of responsibility below which a component keeps its parameters
CHUNK = 128             # examples per E-step pass outside training: 128 x 20 x 4,608 floats = 47 MB


class MixtureTwin(nn.Module):
    """J PPCA components of q dimensions on the autoencoder's centred features [B, D].

    Buffers: the features' training mean [D] and mean variance, the mixture (weights [J], means
    [J, D], factors [J, D, q], noise [J]) and flags; ``ae`` is the root's autoencoder, held as a
    reference (the root owns and checkpoints it), as :class:`~capsgen.models.poe.nets.PoECapsules` does.
    """

    def __init__(self, cfg, ae: nn.Module):
        super().__init__()
        self.cfg = cfg
        self.__dict__["ae"] = ae     # a reference, not a child module
        F_, h, w = ae.feature_shape
        D, J, q = F_ * h * w, cfg.code_capsules, cfg.code_dim
        self.register_buffer("feature_mean", torch.zeros(D))
        self.register_buffer("feature_var", torch.tensor(1.0))
        self.register_buffer("feature_count", torch.tensor(0.0, dtype=torch.float64))
        self.register_buffer("features_fitted", torch.tensor(False))
        self.register_buffer("weights", torch.full((J,), 1.0 / J))
        self.register_buffer("means", torch.zeros(J, D))
        self.register_buffer("factors", torch.zeros(J, D, q))
        self.register_buffer("noise", torch.ones(J))
        self.register_buffer("started", torch.tensor(False))
        self.register_buffer("fitted", torch.tensor(False))
        self.register_buffer("em_rounds", torch.tensor(0, dtype=torch.long))

    # ------------------------------------------------------------------ features
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Images [B, C, H, W] -> centred flat features [B, D] (no dropout, no grad)."""
        with torch.no_grad():
            f = self.ae.encode(images).flatten(1)
        if not bool(self.features_fitted):
            raise CapsgenError("the twin needs the features' training mean: run its stats stage first")
        return f - self.feature_mean

    def features_to_images(self, x: torch.Tensor) -> torch.Tensor:
        """Centred flat features [B, D] -> images [B, C, H, W] in [0, 1] through the AE decoder."""
        with torch.no_grad():
            return self.ae.decode((x + self.feature_mean).view(len(x), *self.ae.feature_shape))

    def add_feature_statistics(self, images: torch.Tensor, reduce: Reduce | None = None) -> dict[str, float]:
        """Fold one training batch into the features' running mean and mean variance (the first
        call starts afresh), averaged over processes by ``reduce``."""
        with torch.no_grad():
            f = self.ae.encode(images).flatten(1)
        sums = [f.sum(0).double(), (f.double() ** 2).sum(0), f.new_tensor(float(len(f)), dtype=torch.float64)]
        if reduce is not None:
            reduce(sums)
        seen = float(self.feature_count) if bool(self.features_fitted) else 0.0
        total = seen + float(sums[2])
        mean = self.feature_mean.double() * (seen / total) + sums[0] / total
        # the running second moment is kept through var + mean^2 of the previous fit
        old_sq = (self.feature_var.double() + (self.feature_mean.double() ** 2).mean()) * (seen / total)
        second = old_sq + sums[1].mean() / total
        self.feature_mean.copy_(mean)
        self.feature_var.fill_(float((second - (mean ** 2).mean()).clamp(min=1e-12)))
        self.feature_count.fill_(total)
        self.features_fitted.fill_(True)
        return {"feature_var": float(self.feature_var)}

    # ------------------------------------------------------------------ the mixture
    def params(self) -> MixtureParams:
        return MixtureParams(self.weights, self.means, self.factors, self.noise)

    def start(self, x: torch.Tensor, generator: torch.Generator, reduce: Reduce | None, first_rank: bool,
              world: int) -> None:
        """Means at J distinct examples of the batch x [B, D] (of the first process: the others
        send zeros, and ``reduce`` averages), factors ~ N(0, var), noise = var, equal weights."""
        J, D, q = self.factors.shape
        B = len(x)
        pick = torch.randperm(B, generator=generator)[:J] if B >= J else torch.randint(0, B, (J,), generator=generator)
        means = x[pick.to(x.device)] * (world if first_rank else 0)
        if reduce is not None:
            reduce([means])
        var = float(self.feature_var)
        self.means.copy_(means)
        self.factors.copy_((torch.randn(J, D, q, generator=generator) * math.sqrt(var)).to(self.factors.device))
        self.noise.fill_(var)
        self.weights.fill_(1.0 / J)
        self.started.fill_(True)

    def statistics(self, x: torch.Tensor) -> EMStatistics:
        """The E-step sums of examples x [B, D] under the current mixture, in float64, CHUNK rows at
        a time (the E-step holds x - mu_j for every component: [CHUNK, J, D])."""
        with torch.no_grad():
            parts = [em_statistics(x[i:i + CHUNK], self.params()) for i in range(0, len(x), CHUNK)]
        total = EMStatistics(*(t.double() for t in parts[0].tensors()))
        for s in parts[1:]:
            total = total + EMStatistics(*(t.double() for t in s.tensors()))
        return total

    def update(self, stats: EMStatistics) -> None:
        """One M-step from summed statistics."""
        new = m_step(stats, self.params(), MIN_COUNT, NOISE_FLOOR * float(self.feature_var))
        for name in ("weights", "means", "factors", "noise"):
            getattr(self, name).copy_(getattr(new, name))
        self.fitted.fill_(True)
        self.em_rounds += 1

    # ------------------------------------------------------------------ sampling
    def require_fitted(self) -> None:
        if not bool(self.fitted):
            raise CapsgenError("this poe twin has no fitted mixture yet (its first M-step comes after "
                               f"model.em_batches={self.cfg.em_batches} EM steps); finish it with "
                               "capsgen train --resume RUN_DIR")

    @staticmethod
    def latents(g: torch.Tensor, restricted: bool) -> torch.Tensor:
        """Latents g [N, q] as a domain draws them: unchanged (full), or pulled back into the ball
        holding half of N(0, I)'s mass (restricted; see the module docstring)."""
        if not restricted:
            return g
        r = math.sqrt(chi2_quantile(g.shape[-1], 0.5))
        return g * (r / g.norm(dim=-1, keepdim=True).clamp(min=1e-12)).clamp(max=1.0)

    def features_of(self, g: torch.Tensor, eps: torch.Tensor | None, components: torch.Tensor,
                    restricted: bool) -> torch.Tensor:
        """Centred features [N, D] of latents g [N, q] and noise eps [N, D] in ``components`` [N]
        (see the module docstring for the two domains); ``eps`` None: no noise, g as given."""
        dev = self.means.device
        g, k = g.to(dev, self.means.dtype), components.to(dev)
        x = self.means[k] + torch.einsum("ndq,nq->nd", self.factors[k], self.latents(g, restricted))
        if restricted or eps is None:
            return x
        return x + self.noise[k].sqrt()[:, None] * eps.to(dev, self.means.dtype)

    def encode_latents(self, images: torch.Tensor) -> torch.Tensor:
        """[N, J, q]: each image's posterior latent in its most responsible component's slot, zeros
        elsewhere (the twin's counterpart of code capsules with one capsule on)."""
        with torch.no_grad():
            x, p = self.features(images), self.params()
            out = []
            for i in range(0, len(x), CHUNK):
                xb = x[i:i + CHUNK]
                R, _ = responsibilities(xb, p)
                k = R.argmax(dim=1)
                z = posterior_latents(xb, p)                                   # [J, q, b]
                code = xb.new_zeros(len(xb), *z.shape[:2])
                rows = torch.arange(len(xb), device=xb.device)
                code[rows, k] = z[k, :, rows]
                out.append(code)
            return torch.cat(out) if out else x.new_zeros(0, *self.factors.shape[::2])

    def decode_latents(self, g: torch.Tensor, components: torch.Tensor) -> torch.Tensor:
        """Images [N, C, H, W] of latents g [N, q] in ``components`` [N], as given (no noise)."""
        with torch.no_grad():
            return self.features_to_images(self.features_of(g, None, components, restricted=False))

    def images_of(self, g: torch.Tensor, eps: torch.Tensor, components: torch.Tensor, restricted: bool,
                  batch: int = 256) -> torch.Tensor:
        """Images [N, C, H, W] in [0, 1] of :meth:`features_of`, decoded in chunks."""
        n = len(g)
        if not n:
            return self.means.new_zeros(0, *self.ae.shape)
        return torch.cat([self.features_to_images(self.features_of(g[i:i + batch], eps[i:i + batch],
                                                                   components[i:i + batch], restricted))
                          for i in range(0, n, batch)])

    def sample(self, n: int, component: int | None, restricted: bool, generator: torch.Generator) -> torch.Tensor:
        """n images from ``component`` (None: uniform over components, as the capsule model draws
        its capsule), g and eps from ``generator``."""
        J, D, q = self.factors.shape
        if component is not None and not 0 <= component < J:
            raise CapsgenError(f"component index {component} is out of range: the twin has {J} components "
                               f"(0..{J - 1})")
        g = torch.randn(n, q, generator=generator)
        k = torch.randint(0, J, (n,), generator=generator) if component is None else torch.full((n,), component)
        eps = torch.randn(n, D, generator=generator)
        return self.images_of(g, eps, k, restricted)

    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        """Images through the whole twin: AE encoder, the mixture's posterior projection, AE decoder."""
        with torch.no_grad():
            x = self.features(images)
            return torch.cat([self.features_to_images(posterior_reconstruction(x[i:i + CHUNK], self.params()))
                              for i in range(0, len(x), CHUNK)])
