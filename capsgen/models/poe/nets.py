"""Networks of Hauser's products of expert capsules (section 4.1, figure 1).

    images [B, C, H, W] --conv AE encoder (frozen)--> features [B, 128, 6, 6]
        --group channels (PrimaryCapsules' order), squash--> primary capsules x_i [B, 576, 8]
        --W, routing by agreement (cosine, sum_i c_ij = 1)--> code x_j = squash(z_j) [B, 20, 16]
        --U, routing by agreement (cosine, sum_j e_ji = 1)--> decoded capsules [B, 576, 8]
        --unsquash, ungroup, tied deconvolutional decoder--> images in [0, 1]

Phases (the Task, :mod:`capsgen.models.poe.task`, drives them step by step): 1. the autoencoder
by backprop (:func:`autoencoder_loss`); then the capsule statistics batch by batch
(:meth:`PoECapsules.add_capsule_statistics`; :meth:`PoECapsules.fit_capsule_statistics` does all
at once); 2. W by :meth:`PoECapsules.encoder_step`; 3. U by :meth:`PoECapsules.decoder_step`,
with the restricted domain averaged over the same batches (:meth:`PoECapsules.add_sampling_domain`;
:meth:`PoECapsules.fit_sampling_domain` at once). ``stage_steps`` counts the steps each stage
has done, so a reopened model knows how far it was trained. W and U are buffers, not parameters, updated only by
the contrastive rules of :mod:`capsgen.nn.contrastive`. Steps take *visible* capsules
(:meth:`PoECapsules.visible_capsules`: the primary capsules, centred if ``cfg.centre_capsules``).

Generation (figure 1 caption, section 4.2): a 16-D Gaussian sample goes into one code capsule,
the other 19 are zero; squash; decode with U; images. The *restricted* domain is the half of
S^15 visited in training: per capsule j the presence-weighted mean direction
m_j = sum_n x_nj / ||sum_n x_nj|| of the training codes (a pose of length ||x_nj|| = P(j on)
counts that much), and a sample g with <g, m_j> < 0 is replaced by -g — the paper's own remedy
(its negatives turn positive under x -> -x). For an isotropic Gaussian this gives exactly the
Gaussian restricted to the half-space <g, m_j> >= 0.

Module tree: :class:`PoEModel` (the Task's ``model``) holds the autoencoder ``ae``, the counters
``stage_steps`` and the capsule part ``capsules`` (:class:`PoECapsules`); the non-capsule twin
(``model.twin``) holds ``mixture`` (:mod:`capsgen.models.poe.twin`) there instead, and nothing
else differs.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from capsgen.config import check_config
from capsgen.errors import CapsgenError
from capsgen.models.poe.config import PoEConfig
from capsgen.nn.contrastive import (CDOptimizer, RoutingWeights, capsule_reconstruction_error, decode_capsules,
                                    decoder_cd_delta, encoder_cd_delta, init_capsule_weight,
                                    mix_by_routing, route_forward, routing_coupling, routing_weights)
from capsgen.nn.squash import safe_norm, squash, unsquash


Reduce = Callable[[list[torch.Tensor]], None]   # in-place reduction over processes (e.g. Task.all_mean)


# ----------------------------------------------------------------------------- capsule reading
def features_to_capsules(f: torch.Tensor, dim: int) -> torch.Tensor:
    """Feature maps [B, C, h, w] -> capsules [B, (C / dim) h w, dim], not squashed.

    The grouping of :class:`capsgen.nn.PrimaryCapsules`: channel c is pose dimension c % dim of
    capsule type c // dim, and capsules are numbered type-major, n = t h w + y w + x.
    """
    B, C, H, W = f.shape
    return f.view(B, C // dim, dim, H, W).permute(0, 1, 3, 4, 2).reshape(B, -1, dim)


def capsules_to_features(caps: torch.Tensor, channels: int, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`features_to_capsules`: [B, N, dim] -> [B, channels, h, w]."""
    B, _, dim = caps.shape
    return caps.reshape(B, channels // dim, h, w, dim).permute(0, 1, 4, 2, 3).reshape(B, channels, h, w)


# ----------------------------------------------------------------------------- autoencoder
def _uniform_(t: torch.Tensor, bound: float, generator: torch.Generator) -> None:
    with torch.no_grad():
        t.copy_((torch.rand(t.shape, generator=generator) * 2 - 1) * bound)


def _dropout(h: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    keep = torch.rand(h.shape, generator=generator, device=generator.device).to(h.device) >= p
    return h * keep.to(h.dtype) / (1.0 - p)


class ConvAutoencoder(nn.Module):
    """Hauser's front end: conv k x k C->F + leaky ReLU, conv k x k F->F stride s + leaky ReLU
    (dropout after each while training); the decoder applies the same two filter banks
    transposed (tied weights, own biases): deconv + leaky ReLU, deconv + sigmoid.

    [B, C, H, W] -> features [B, F, h, w] (6 x 6 for 28 x 28 with the paper's 9 x 9 kernels)
    -> images [B, C, H, W] in [0, 1]. The second deconvolution gets the output padding that
    restores the first feature map's size (19 -> 20 for 28 x 28 inputs).
    """

    def __init__(self, shape: tuple[int, int, int], channels: int = 128, kernel: int = 9,
                 stride: int = 2, slope: float = 0.2, dropout: float = 0.1,
                 generator: torch.Generator | None = None):
        super().__init__()
        C, H, W = shape
        h1, w1 = H - kernel + 1, W - kernel + 1
        h2, w2 = (h1 - kernel) // stride + 1, (w1 - kernel) // stride + 1
        if h2 < 1 or w2 < 1:
            raise CapsgenError(f"images {H}x{W} are too small for two {kernel}x{kernel} convolutions "
                               f"(stride {stride}); use images of at least {2 * kernel - 1} pixels")
        self.shape, self.stride, self.slope, self.dropout = shape, stride, slope, dropout
        self.conv1 = nn.Conv2d(C, channels, kernel)
        self.conv2 = nn.Conv2d(channels, channels, kernel, stride)
        self.dec_bias2 = nn.Parameter(torch.zeros(channels))
        self.dec_bias1 = nn.Parameter(torch.zeros(C))
        self.output_padding = (h1 - ((h2 - 1) * stride + kernel), w1 - ((w2 - 1) * stride + kernel))
        self.feature_shape = (channels, h2, w2)
        if generator is not None:  # PyTorch's default init, drawn from the generator
            for conv in (self.conv1, self.conv2):
                bound = 1.0 / math.sqrt(conv.weight[0].numel())
                _uniform_(conv.weight, bound, generator)
                _uniform_(conv.bias, bound, generator)

    def encode(self, x: torch.Tensor, dropout_generator: torch.Generator | None = None) -> torch.Tensor:
        """[B, C, H, W] -> features [B, F, h, w]; dropout only when a generator is given."""
        drop = dropout_generator is not None and self.dropout > 0
        h = F.leaky_relu(self.conv1(x), self.slope)
        if drop:
            h = _dropout(h, self.dropout, dropout_generator)
        f = F.leaky_relu(self.conv2(h), self.slope)
        if drop:
            f = _dropout(f, self.dropout, dropout_generator)
        return f

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        """Features [B, F, h, w] -> images [B, C, H, W] in [0, 1] through the transposed filters."""
        h = F.conv_transpose2d(f, self.conv2.weight, self.dec_bias2, self.stride,
                               output_padding=self.output_padding)
        h = F.leaky_relu(h, self.slope)
        return torch.sigmoid(F.conv_transpose2d(h, self.conv1.weight, self.dec_bias1))

    def forward(self, x: torch.Tensor, dropout_generator: torch.Generator | None = None) -> torch.Tensor:
        return self.decode(self.encode(x, dropout_generator))


def autoencoder_loss(ae: ConvAutoencoder, images: torch.Tensor, generator: torch.Generator | None,
                     loss: str = "bce") -> tuple[torch.Tensor, dict[str, float]]:
    """Pixel reconstruction loss (mean per pixel) with dropout drawn from ``generator``.

    Returns (loss, {"ae_loss", "ae_mse"}) — the MSE is reported for either loss.
    """
    recon = ae(images, generator)
    mse = F.mse_loss(recon, images)
    value = F.binary_cross_entropy(recon, images) if loss == "bce" else mse
    return value, {"ae_loss": float(value.detach()), "ae_mse": float(mse.detach())}


# ----------------------------------------------------------------------------- the model
# The capsule part's tensors, which were the root's own before the twin existed: checkpoints from
# then name them without the "capsules." prefix (PoEModel renames them on loading).
CAPSULE_STATE = ("encoder_weight", "decoder_weight", "capsule_mean", "max_length", "capsules_fitted", "directions",
                 "domain_fitted", "capsule_count", "code_mean", "code_count")


class PoEModel(nn.Module):
    """The poe family's whole model: the convolutional autoencoder ``ae``, its code part, and
    ``stage_steps`` (steps done in each stage: ae, stats, w, u; set by the Task).

    The code part is ``capsules`` (:class:`PoECapsules`: W, routing, U, Hauser's sampling) or, for
    the non-capsule twin (``cfg.twin``), ``mixture`` (:class:`capsgen.models.poe.twin.MixtureTwin`:
    one Gaussian component per code capsule, fitted by EM on the autoencoder's features). The two
    share the autoencoder and its initial weights (both drawn first from ``generator``).
    """

    def __init__(self, cfg: PoEConfig, shape: tuple[int, int, int], generator: torch.Generator):
        super().__init__()
        check_config(cfg, "model")
        self.cfg, self.shape = cfg, tuple(shape)
        self.ae = ConvAutoencoder(self.shape, cfg.ae_channels, cfg.ae_kernel, cfg.ae_stride,
                                  cfg.leaky_slope, cfg.dropout, generator)
        if cfg.twin:
            from capsgen.models.poe.twin import MixtureTwin

            self.mixture = MixtureTwin(cfg, self.ae)
        else:
            self.capsules = PoECapsules(cfg, self.ae, generator)
        self.register_buffer("stage_steps", torch.zeros(4, dtype=torch.long))
        self.register_load_state_dict_pre_hook(_rename_flat_capsule_state)


def _rename_flat_capsule_state(module: nn.Module, state: dict, prefix: str, *args) -> None:
    """Load a checkpoint written before the code part was a submodule (W, U, ... at the root)."""
    for name in CAPSULE_STATE:
        if prefix + name in state and prefix + "capsules." + name not in state:
            state[prefix + "capsules." + name] = state.pop(prefix + name)


class PoECapsules(nn.Module):
    """The capsule part of :class:`PoEModel`: capsule encoder W [I, J, Dout, Din] + decoder U
    [J, I, Din, Dout], the primary capsules' statistics and the restricted sampling domain.

    I = (F / primary_dim) h w primary capsules (576 for 28 x 28), J = code_capsules (20),
    Din = primary_dim (8), Dout = code_dim (16). W and U are buffers (checkpointed with the
    state dict, invisible to optimisers); their initial values come from ``generator``. ``ae``
    is the root's autoencoder, held as a plain reference (not a submodule: the root owns and
    checkpoints it), since every pass here starts or ends in it.
    """

    def __init__(self, cfg: PoEConfig, ae: ConvAutoencoder, generator: torch.Generator):
        super().__init__()
        self.cfg, self.shape = cfg, ae.shape
        self.__dict__["ae"] = ae     # bypasses nn.Module's registration: a reference, not a child
        Fc, h, w = self.ae.feature_shape
        I, J, Din, Dout = Fc // cfg.primary_dim * h * w, cfg.code_capsules, cfg.primary_dim, cfg.code_dim
        self.num_primary = I
        self.register_buffer("encoder_weight", init_capsule_weight(I, J, Dout, Din, cfg.init_std, generator))
        self.register_buffer("decoder_weight", init_capsule_weight(J, I, Din, Dout, cfg.init_std, generator))
        # Statistics of the primary capsules (fit_capsule_statistics, after phase 1): their
        # training mean (subtracted when cfg.centre_capsules) and the longest one (decoded
        # capsules are clamped to it before unsquash, whose slope diverges at length 1).
        self.register_buffer("capsule_mean", torch.zeros(I, Din))
        self.register_buffer("max_length", torch.tensor(1.0 - 1e-3))
        self.register_buffer("capsules_fitted", torch.tensor(False))
        # Restricted-domain directions m_j (fit_sampling_domain, after phase 2).
        self.register_buffer("directions", torch.zeros(J, Dout))
        self.register_buffer("domain_fitted", torch.tensor(False))
        # Running sums behind the two fits: images seen and the mean training code (whose
        # direction is m_j), so both can be accumulated one training batch at a time.
        self.register_buffer("capsule_count", torch.tensor(0.0, dtype=torch.float64))
        self.register_buffer("code_mean", torch.zeros(J, Dout))
        self.register_buffer("code_count", torch.tensor(0.0, dtype=torch.float64))

    # ------------------------------------------------------------------ passes
    def freeze_autoencoder(self) -> None:
        """End phase 1: the front end's weights stop changing (requires_grad off, eval mode)."""
        self.ae.requires_grad_(False)
        self.ae.eval()

    def primary_capsules(self, images: torch.Tensor) -> torch.Tensor:
        """Images [B, C, H, W] -> squashed primary capsules [B, I, Din] (no dropout, no grad)."""
        with torch.no_grad():
            return squash(features_to_capsules(self.ae.encode(images), self.cfg.primary_dim))

    def visible_capsules(self, images: torch.Tensor) -> torch.Tensor:
        """The PoE's input layer x_i [B, I, Din]: the primary capsules, minus their training mean
        when ``cfg.centre_capsules``. W and U are trained on, and U decodes to, these."""
        caps = self.primary_capsules(images)
        if self.cfg.centre_capsules:
            if not bool(self.capsules_fitted):
                raise CapsgenError("centre_capsules needs the capsules' training mean: run "
                                   "fit_capsule_statistics on training images after the autoencoder")
            caps = caps - self.capsule_mean
        return caps

    def encode(self, capsules: torch.Tensor) -> torch.Tensor:
        """Visible capsules [B, I, Din] -> code x_j = squash(sum_i c_ij W_ij x_i) [B, J, Dout]."""
        W = self.encoder_weight
        c = routing_coupling(capsules, W, self.cfg.routing_iterations)
        with torch.no_grad():
            return squash(route_forward(capsules, W, c))

    def decode(self, code: torch.Tensor) -> torch.Tensor:
        """Code [B, J, Dout] -> decoded primary capsules sum_j e_ji U_ji x_j [B, I, Din]."""
        return decode_capsules(code, self.decoder_weight, self.cfg.routing_iterations, self._decoder_layouts())

    def _decoder_layouts(self) -> RoutingWeights:
        """U's routing layouts, rebuilt only when U is another tensor or was changed in place (its
        version counter moved). Building them was most of a one-image decode: 148 -> 48 ms with them
        kept (median of 15 interleaved pairs, one thread, a busy machine; identical images)."""
        u = self.decoder_weight
        cached = self.__dict__.get("_u_layouts")
        if cached is None or cached[0] is not u or cached[1] != u._version:
            cached = (u, u._version, routing_weights(u))
            self.__dict__["_u_layouts"] = cached     # plain state: not a buffer, never saved
        return cached[2]

    def capsules_to_images(self, capsules: torch.Tensor) -> torch.Tensor:
        """Visible capsules [B, I, Din] -> images: add the mean back (when centred), clamp the
        length, unsquash, ungroup, decode."""
        with torch.no_grad():
            if self.cfg.centre_capsules:
                capsules = capsules + self.capsule_mean
            length = safe_norm(capsules, keepdim=True)
            capsules = capsules * (self.max_length / length).clamp(max=1.0)
            features = capsules_to_features(unsquash(capsules), *self.ae.feature_shape)
            return self.ae.decode(features)

    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        """Images through the whole model: AE encoder, W, U, AE decoder."""
        return self.capsules_to_images(self.decode(self.encode(self.visible_capsules(images))))

    # ------------------------------------------------------------------ training steps
    def make_optimizers(self) -> tuple[CDOptimizer, CDOptimizer]:
        """The CD optimisers of W and U from the config (their state: one tensor and a counter)."""
        c = self.cfg
        return (CDOptimizer(c.w_lr, c.w_momentum, c.w_weight_decay, c.w_lr_decay, c.w_decay_every),
                CDOptimizer(c.u_lr, c.u_momentum, c.u_weight_decay, c.u_lr_decay, c.u_decay_every))

    def encoder_step(self, capsules: torch.Tensor, opt: CDOptimizer, reduce: Reduce | None = None
                     ) -> dict[str, float]:
        """One Algorithm 1 update of W on visible capsules [B, I, Din].

        ``reduce`` (e.g. the Task's ``all_mean``) averages dW over processes, in place, before the update.

        Metrics (before the update): w_recon, the capsule error mean_b sum_i ||x_i - xr_i||^2 / I
        of the reverse route; free_energy_gap, mean F(x) - F(xr) (> 0: the data is more probable
        than its reconstruction); code_length, the mean ||x_j|| = P(j on).
        """
        delta, m = encoder_cd_delta(capsules, self.encoder_weight, self.cfg.routing_iterations)
        if reduce is not None:
            reduce([delta])
        gap = (torch.log1p(m.z.pow(2).sum(-1)) - torch.log1p(m.z_rec.pow(2).sum(-1))).sum(-1).mean()
        lr = opt.step(self.encoder_weight, delta)
        return {"w_recon": float(capsule_reconstruction_error(capsules, m.x_rec)),
                "free_energy_gap": float(gap), "code_length": float(safe_norm(m.x_out).mean()),
                "w_lr": lr}

    def decoder_step(self, capsules: torch.Tensor, opt: CDOptimizer, reduce: Reduce | None = None,
                     code: torch.Tensor | None = None) -> dict[str, float]:
        """One update of U (rule ``cfg.decoder_rule``) on visible capsules [B, I, Din], W fixed.

        ``code`` [B, J, Dout] may pass ``self.encode(capsules)`` when the caller has it already;
        ``reduce`` averages dU over processes before the update.
        Metric (before the update): u_recon = mean_b sum_i ||x_i - decoded_i||^2 / I.
        """
        if code is None:
            code = self.encode(capsules)
        delta, m = decoder_cd_delta(code, capsules, self.decoder_weight, self.cfg.routing_iterations,
                                    self.cfg.decoder_rule)
        if reduce is not None:
            reduce([delta])
        lr = opt.step(self.decoder_weight, delta)
        return {"u_recon": float(capsule_reconstruction_error(capsules, m.decoded)), "u_lr": lr}

    def reconstruction_errors(self, images: torch.Tensor) -> dict[str, float]:
        """Per-stage errors on images [B, C, H, W]: ae_mse (pixels, AE alone), w_recon (capsules,
        W's reverse route), u_recon (capsules, U's decoding of W's code), pixel_mse (pixels,
        whole model)."""
        caps = self.visible_capsules(images)
        with torch.no_grad():
            ae_mse = F.mse_loss(self.ae(images), images)
        m = mix_by_routing(caps, self.encoder_weight, self.cfg.routing_iterations)
        decoded = self.decode(m.x_out)
        pixels = self.capsules_to_images(decoded)
        return {"ae_mse": float(ae_mse), "w_recon": float(capsule_reconstruction_error(caps, m.x_rec)),
                "u_recon": float(capsule_reconstruction_error(caps, decoded)),
                "pixel_mse": float(F.mse_loss(pixels, images))}

    # ------------------------------------------------------------------ sampling
    def add_capsule_statistics(self, images: torch.Tensor, reduce: Reduce | None = None,
                               reduce_max: Reduce | None = None) -> None:
        """Fold one batch [B, C, H, W] of training images into the primary capsules' running
        mean and longest length (after phase 1; the first call starts afresh when nothing was
        fitted). ``reduce`` averages over processes in place, ``reduce_max`` takes the maximum."""
        caps = self.primary_capsules(images)
        batch_sum, n = caps.sum(0), caps.new_tensor(float(caps.shape[0]))
        longest = safe_norm(caps).max().reshape(1)
        if reduce is not None:
            reduce([batch_sum, n])
        if reduce_max is not None:
            reduce_max([longest])
        seen = float(self.capsule_count) if bool(self.capsules_fitted) else 0.0
        total = seen + float(n)
        self.capsule_mean.mul_(seen / total).add_(batch_sum / total)
        longest = float(longest.clamp(max=1.0 - 1e-3))
        self.max_length.fill_(max(longest, float(self.max_length)) if seen else longest)
        self.capsule_count.fill_(total)
        self.capsules_fitted.fill_(True)

    def fit_capsule_statistics(self, image_batches: Iterable[torch.Tensor]) -> None:
        """After phase 1: the primary capsules' training mean and longest length, from training
        images (batches [B, C, H, W]), replacing any earlier fit."""
        self.capsules_fitted.fill_(False)
        for images in image_batches:
            self.add_capsule_statistics(images)
        if not bool(self.capsules_fitted):
            raise CapsgenError("fit_capsule_statistics got no images")

    def add_sampling_domain(self, code: torch.Tensor, reduce: Reduce | None = None) -> None:
        """Fold the codes [B, J, Dout] of one training batch into the restricted domain: m_j is the
        direction of the running mean code of capsule j (the first call starts afresh)."""
        batch_sum, n = code.sum(0), code.new_tensor(float(code.shape[0]))
        if reduce is not None:
            reduce([batch_sum, n])
        seen = float(self.code_count) if bool(self.domain_fitted) else 0.0
        total = seen + float(n)
        self.code_mean.mul_(seen / total).add_(batch_sum / total)
        self.code_count.fill_(total)
        self.directions.copy_(F.normalize(self.code_mean, dim=-1))
        self.domain_fitted.fill_(True)

    def fit_sampling_domain(self, image_batches: Iterable[torch.Tensor]) -> torch.Tensor:
        """After phase 2: fit the restricted domain from training images (batches [B, C, H, W]).

        Sets m_j, the presence-weighted mean code direction of capsule j; returns the share of
        training codes in the half <x_j, m_j> >= 0, per capsule [J] — how well one half-sphere
        describes what each capsule visited (1.0: all of it; 0.5: no preferred half).
        """
        codes = [self.encode(self.visible_capsules(images)) for images in image_batches]
        if not codes:
            raise CapsgenError("fit_sampling_domain got no images")
        self.domain_fitted.fill_(False)
        for c in codes:
            self.add_sampling_domain(c)
        code = torch.cat(codes)
        return ((code * self.directions).sum(-1) >= 0).to(code.dtype).mean(0)

    def sample_codes(self, n: int, capsule_index: int | None, restricted: bool,
                     generator: torch.Generator) -> torch.Tensor:
        """Codes [n, J, Dout]: one capsule holds squash(g), g ~ N(0, I) (flipped into the half
        <g, m_j> >= 0 when ``restricted``), the others zero. ``capsule_index`` None draws the
        capsule of each sample uniformly.

        As in the paper, the zero capsules still take part in U's routing: their votes are zero
        but they keep a share of each coupling (sum_j e_ji = 1), so after 3 iterations the live
        capsule carries e^2 / (e^2 + J - 1) = 0.28 of each decoded capsule for J = 20, where in
        training every capsule was on.
        """
        J, D = self.directions.shape
        dev, dt = self.directions.device, self.directions.dtype
        if capsule_index is not None and not 0 <= capsule_index < J:
            raise CapsgenError(f"capsule index {capsule_index} is out of range: the model has {J} "
                               f"code capsules (0..{J - 1})")
        if restricted and not bool(self.domain_fitted):
            raise CapsgenError("restricted sampling needs the training pose directions: run "
                               "fit_sampling_domain on training images first (or sample the full sphere)")
        g = torch.randn(n, D, generator=generator, dtype=dt).to(dev)
        if capsule_index is None:
            idx = torch.randint(0, J, (n,), generator=generator).to(dev)
        else:
            idx = torch.full((n,), capsule_index, dtype=torch.long, device=dev)
        if restricted:
            m = self.directions[idx]
            g = torch.where((g * m).sum(-1, keepdim=True) < 0, -g, g)
        code = torch.zeros(n, J, D, device=dev, dtype=dt)
        code[torch.arange(n, device=dev), idx] = squash(g)
        return code

    def sample(self, n: int, capsule_index: int | None, restricted: bool,
               generator: torch.Generator, batch: int = 256) -> torch.Tensor:
        """n images [n, C, H, W] in [0, 1] (see :meth:`sample_codes`), decoded in chunks."""
        return self.images_from_codes(self.sample_codes(n, capsule_index, restricted, generator), batch)

    def images_from_codes(self, code: torch.Tensor, batch: int = 256) -> torch.Tensor:
        """Codes [n, J, Dout] -> images [n, C, H, W] in [0, 1] through U and the AE decoder, in chunks."""
        n = len(code)
        return torch.cat([self.capsules_to_images(self.decode(code[k:k + batch]))
                          for k in range(0, n, batch)]) if n else code.new_zeros(0, *self.shape)


# ----------------------------------------------------------------------------- negatives
def negative_mask(images: torch.Tensor, border: int = 2) -> torch.Tensor:
    """Which images [N, C, H, W] are "negatives": the background on the bright side.

    On the channel-mean grey image, the background is the frame of ``border`` pixels along the
    edges (MNIST and Fashion-MNIST objects are centred on a dark background); an image is
    negative when the frame's mean is nearer its brightest pixels than its darkest, i.e. above the
    midpoint of its 2nd and 98th percentiles. Comparing the frame with the interior's *mean*
    instead called 97 % of a centred mnist-5k run's samples negative: they have a grey
    background (0.10) and bright strokes (peak 0.66), but the dark rims around the strokes pull
    the interior's mean (0.09) below the frame. Returns bool [N].
    """
    if images.dim() != 4 or min(images.shape[-2:]) <= 2 * border:
        raise ValueError(f"images must be [N, C, H, W] with H, W > {2 * border}, got {tuple(images.shape)}")
    grey = images.mean(1)
    inner = torch.zeros_like(grey[0], dtype=torch.bool)
    inner[border:-border, border:-border] = True
    lo, hi = torch.quantile(grey.flatten(1), torch.tensor([0.02, 0.98], dtype=grey.dtype, device=grey.device),
                            dim=1)
    return grey[:, ~inner].mean(1) > (lo + hi) / 2


def negative_share(images: torch.Tensor, border: int = 2) -> float:
    """Fraction of images [N, C, H, W] that :func:`negative_mask` calls negative (0 for N = 0)."""
    return float(negative_mask(images, border).float().mean()) if len(images) else 0.0
