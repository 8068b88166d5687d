"""The GAN families — ``dcgan`` and ``capsulegan`` — as one Task: config, presets, step, pictures.

One ``train_step`` gets one batch of B real images from the generic loop and, by ``schedule``:

- ``joint`` (default): n_dis discriminator updates (the B real images split over them, each
  update seeing as many fakes as reals), then one generator update on B fakes;
- ``alternate`` (paper 000): a step is *either* a discriminator update (B real + B fake in one
  batch, e.g. 16 + 16 = 32) *or* a generator update (B fakes), in the cycle
  n_dis x D, 1 x G; the real images of a G step are not used.

Every latent draw goes through ``ctx.generator``, so a resumed run is bit-identical to an
uninterrupted one. Images arrive in [0, 1] and are mapped to [-1, 1] for the tanh generators;
pictures and samples are mapped back.

The family name only picks defaults (and which discriminators are allowed); presets are named
bundles of ``--set`` values applied before the user's own ``--set`` (see ``PRESETS``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from capsgen.errors import ConfigError
from capsgen.models.gan_losses import objective, p_real
from capsgen.models.gan_nets import (CapsuleDiscriminator, DCGANDiscriminator, DCGANGenerator,
                                     KarmakarGenerator)
from capsgen.report.figures import image_grid, plot_curves, save_image_grid
from capsgen.train.task import DataInfo, StepContext, Task

GENERATORS = ("dcgan", "karmakar")
SCHEDULES = ("joint", "alternate")

# Paper-size CapsNet discriminators (the CPU defaults below are much smaller).
_KARMAKAR_D = ("model.discriminator=caps-dense", "model.d_conv_channels=256", "model.d_conv_kernel=9",
               "model.d_conv_act=prelu", "model.d_primary_caps=32", "model.d_primary_dim=8",
               "model.d_primary_kernel=7", "model.d_primary_stride=2", "model.d_caps=10",
               "model.d_caps_dim=16", "model.d_dense=64")
_JAISWAL_D = ("model.d_conv_channels=256", "model.d_conv_kernel=9", "model.d_conv_act=relu",
              "model.d_primary_caps=32", "model.d_primary_dim=8", "model.d_primary_kernel=9",
              "model.d_primary_stride=2", "model.d_caps_dim=16", "model.d_routing=3")
# Adam(2e-4, beta1 = 0.5) for both networks (paper 000 gives 2e-4; 001 gives no rates).
_PAPER_OPT = ("model.lr=2e-4", "model.lr_d=none", "model.beta1=0.5", "model.beta2=0.999")
# Paper 000: 16 real + 16 generated per batch, D and G batches alternate, BCE.
_KARMAKAR_TRAIN = ("model.generator=karmakar", "model.g_channels=128,64,32,3", "model.objective=bce",
                   "model.schedule=alternate", "model.n_dis=1", *_PAPER_OPT, "train.batch_size=16")
_DCGAN_G = ("model.generator=dcgan", "model.g_width=64", "model.g_norm=batch", "model.schedule=joint",
            "model.n_dis=1", *_PAPER_OPT)


@dataclass
class GANConfig:
    """Settings shared by the GAN families. Defaults are small enough to train on a CPU."""

    preset: str = ""                  # the preset these values came from (informational)
    latent_dim: int = 100             # z ~ N(0, I)
    # generator: "dcgan" (Radford et al.) or "karmakar" (paper 000: 5 conv 3x3, LeakyReLU, no BN)
    generator: str = "dcgan"
    g_width: int = 32                 # dcgan: channels before the output layer (paper DCGAN: 64)
    g_norm: str = "batch"             # dcgan: batch | none
    g_channels: tuple[int, ...] = (128, 64, 32, 3)   # karmakar: conv widths before the C-channel layer
    # discriminator: "conv" (DCGAN), "caps-dense" (paper 000), "caps1" (paper 001, one capsule),
    # "caps2" (two capsules, real and fake)
    discriminator: str = "conv"
    d_width: int = 32                 # conv: channels of the first layer (paper DCGAN: 64)
    d_norm: str = "batch"             # conv: batch | none
    d_extra_layers: int = 0           # conv: extra 3x3 stride-1 layers
    d_conv_channels: int = 64         # capsule discriminators (paper: 256)
    d_conv_kernel: int = 9
    d_conv_act: str = "relu"          # relu | prelu | leaky
    d_primary_caps: int = 8           # paper: 32
    d_primary_dim: int = 8
    d_primary_kernel: int = 9
    d_primary_stride: int = 2
    d_caps: int = 10                  # caps-dense: number of routed capsules
    d_caps_dim: int = 16
    d_routing: int = 3
    d_grad_through_routing: bool = True
    d_caps_init_std: float = 0.01     # std of the capsule transforms W_ij (Sabour: 0.01)
    d_dense: int = 64                 # caps-dense: hidden dense layer
    objective: str = "bce"            # bce | margin | lsgan
    m_pos: float = 0.9
    m_neg: float = 0.1
    lam: float = 0.5
    lr: float = 2e-4                  # Adam learning rate of the generator (and of D unless lr_d)
    lr_d: float | None = None         # discriminator learning rate; None = lr
    beta1: float = 0.5
    beta2: float = 0.999
    n_dis: int = 1                    # discriminator updates per generator update
    schedule: str = "joint"           # joint | alternate
    ema: float = 0.0                  # decay of an EMA copy of the generator; 0 = off
    sample_every: int = 100           # steps between fixed-noise grids in figures/samples/; 0 = off
    n_fixed: int = 64                 # images in a fixed-noise grid
    fixed_seed: int = 1234            # seed of the fixed noise (the same for every run, to compare)
    eval_n: int = 1000                # test images (and as many fakes) for evaluate()
    explode_limit: float = 1e4        # stop when a loss exceeds this; 0 = only NaN / inf stop

    DISCRIMINATORS: ClassVar[tuple[str, ...]] = ("conv", "caps-dense", "caps1", "caps2")
    PRESETS: ClassVar[dict[str, tuple[str, ...]]] = {}


@dataclass
class DCGANConfig(GANConfig):
    """``dcgan``: convolutional discriminator, BCE."""

    DISCRIMINATORS: ClassVar[tuple[str, ...]] = ("conv",)
    PRESETS: ClassVar[dict[str, tuple[str, ...]]] = {
        # The baseline of paper 000: its generator vs a 5-conv-layer LeakyReLU discriminator.
        "karmakar": ("model.preset=karmakar", *_KARMAKAR_TRAIN, "model.d_width=64",
                     "model.d_norm=none", "model.d_extra_layers=2"),
        # The convolutional GAN of paper 001: DCGAN generator and discriminator, BCE.
        "jaiswal": ("model.preset=jaiswal", *_DCGAN_G, "model.d_width=64", "model.d_norm=batch",
                    "model.objective=bce"),
    }


@dataclass
class CapsuleGANConfig(GANConfig):
    """``capsulegan``: CapsNet discriminator; by default one capsule and the margin objective.

    The CPU default gives the discriminator a 10x smaller learning rate: on mnist-5k (batch 64)
    with equal rates the capsule discriminator reached 100% accuracy within 100 steps and the
    generator collapsed to noise, stripes or blank images (margin and BCE losses with the DCGAN
    generator, margin loss with the paper-000 generator); with lr_d = 2e-5 it drew digit-like
    shapes after 300 steps. The paper presets keep one rate for both, as the papers do.
    """

    discriminator: str = "caps1"
    objective: str = "margin"
    lr_d: float | None = 2e-5

    DISCRIMINATORS: ClassVar[tuple[str, ...]] = ("caps-dense", "caps1", "caps2")
    PRESETS: ClassVar[dict[str, tuple[str, ...]]] = {
        "karmakar": ("model.preset=karmakar", *_KARMAKAR_TRAIN, *_KARMAKAR_D),
        "jaiswal": ("model.preset=jaiswal", *_DCGAN_G, "model.discriminator=caps1", *_JAISWAL_D,
                    "model.objective=margin"),
        "jaiswal-2caps": ("model.preset=jaiswal-2caps", *_DCGAN_G, "model.discriminator=caps2",
                          *_JAISWAL_D, "model.objective=margin"),
    }


def build_generator(cfg: GANConfig, shape: tuple[int, int, int]) -> torch.nn.Module:
    if cfg.generator == "dcgan":
        return DCGANGenerator(shape, cfg.latent_dim, cfg.g_width, cfg.g_norm)
    if cfg.generator == "karmakar":
        return KarmakarGenerator(shape, cfg.latent_dim, tuple(cfg.g_channels))
    raise ValueError(f"unknown generator {cfg.generator!r}; choose one of: {', '.join(GENERATORS)}")


def build_discriminator(cfg: GANConfig, shape: tuple[int, int, int]) -> torch.nn.Module:
    if cfg.discriminator not in type(cfg).DISCRIMINATORS:
        raise ValueError(f"discriminator {cfg.discriminator!r} is not one of this family's: "
                         f"{', '.join(type(cfg).DISCRIMINATORS)}")
    if cfg.discriminator == "conv":
        return DCGANDiscriminator(shape, cfg.d_width, cfg.d_norm, cfg.d_extra_layers)
    head, out_caps = {"caps-dense": ("dense", cfg.d_caps), "caps1": ("length", 1),
                      "caps2": ("length", 2)}[cfg.discriminator]
    return CapsuleDiscriminator(shape, cfg.d_conv_channels, cfg.d_conv_kernel, cfg.d_conv_act,
                                cfg.d_primary_caps, cfg.d_primary_dim, cfg.d_primary_kernel,
                                cfg.d_primary_stride, out_caps, cfg.d_caps_dim, cfg.d_routing, head,
                                cfg.d_dense, cfg.d_grad_through_routing, init_std=cfg.d_caps_init_std)


def slerp(z0: torch.Tensor, z1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation of latents z0, z1 [R, L] at fractions t [K] -> [R, K, L].

    Gaussian latents concentrate near a sphere; a straight line between two of them passes
    through the low-probability middle, the great circle does not. Falls back to a straight line
    for (nearly) parallel pairs.
    """
    cos = torch.nn.functional.cosine_similarity(z0, z1, dim=1).clamp(-1.0, 1.0)
    omega = torch.acos(cos)[:, None]                       # [R, 1]
    so = torch.sin(omega)
    t = t[None, :]
    parallel = so < 1e-6
    w0 = torch.where(parallel, 1 - t, torch.sin((1 - t) * omega) / torch.where(parallel, 1, so))
    w1 = torch.where(parallel, t, torch.sin(t * omega) / torch.where(parallel, 1, so))
    return w0[..., None] * z0[:, None, :] + w1[..., None] * z1[:, None, :]


class GANTask(Task):
    """Generator vs discriminator. Modules: generator, discriminator (and generator_ema)."""

    best_metric = ""   # no single figure says which GAN checkpoint is best; keep 'last'

    def __init__(self, config: GANConfig, info: DataInfo, device: torch.device):
        super().__init__(config, info, device)
        cfg = config
        if cfg.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {cfg.schedule!r}; choose one of: {', '.join(SCHEDULES)}")
        for name in ("latent_dim", "n_dis", "n_fixed", "eval_n"):
            if getattr(cfg, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(cfg, name)}")
        if not 0.0 <= cfg.ema < 1.0:
            raise ValueError(f"ema must be in [0, 1), got {cfg.ema}")
        if cfg.sample_every < 0:
            raise ValueError(f"sample_every must be >= 0, got {cfg.sample_every}")
        self.view, self.d_loss, self.g_loss = objective(cfg.objective, cfg.m_pos, cfg.m_neg, cfg.lam)
        self.G = build_generator(cfg, info.shape).to(device)
        self.D = build_discriminator(cfg, info.shape).to(device)
        self.modules = {"generator": self.G, "discriminator": self.D}
        betas = (cfg.beta1, cfg.beta2)
        self.optimizers = {"generator": torch.optim.Adam(self.G.parameters(), cfg.lr, betas),
                           "discriminator": torch.optim.Adam(self.D.parameters(),
                                                             cfg.lr if cfg.lr_d is None else cfg.lr_d, betas)}
        self.G_ema = None
        if cfg.ema > 0:
            self.G_ema = AveragedModel(self.G, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema), use_buffers=True)
            self.modules["generator_ema"] = self.G_ema
        g = torch.Generator().manual_seed(cfg.fixed_seed)
        self.fixed_noise = torch.randn(cfg.n_fixed, cfg.latent_dim, generator=g)

    # ------------------------------------------------------------------------------ training
    def noise(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """z [n, latent_dim] ~ N(0, I) drawn from ``generator``."""
        return torch.randn(n, self.config.latent_dim, generator=generator).to(self.device)

    def _update(self, name: str, loss: torch.Tensor) -> float:
        """Backward + optimizer step; skipped (weights kept) if the loss or gradient is not finite."""
        opt = self.optimizers[name]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grads = [p.grad for p in self.modules[name].parameters() if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads).item()
        if math.isfinite(norm) and math.isfinite(loss.item()):
            opt.step()
        return norm

    def d_step(self, real: torch.Tensor, generator: torch.Generator) -> dict[str, float]:
        """One discriminator update on real [n, C, H, W] in [-1, 1] and n fresh fakes."""
        n = len(real)
        with torch.no_grad():
            fake = self.G(self.noise(n, generator))
        # Two forwards, not one mixed batch: with batch norm a mixed batch gives other statistics
        # than the all-fake batch of the G step, and D then tells G nothing useful. Without batch
        # norm (the paper-000 networks) this is the same as its 16 + 16 mixed batch.
        out_r, out_f = self.D(real), self.D(fake)
        kind = self.D.kind
        loss = self.d_loss(self.view(out_r, kind), self.view(out_f, kind))
        norm = self._update("discriminator", loss)
        p = p_real(torch.cat([out_r, out_f]).detach(), kind)
        acc = torch.cat([p[:n] > 0.5, p[n:] <= 0.5]).float().mean()
        return {"d_loss": loss.item(), "d_acc": acc.item(), "d_real": p[:n].mean().item(),
                "d_fake": p[n:].mean().item(), "d_grad_norm": norm}

    def g_step(self, n: int, generator: torch.Generator) -> dict[str, float]:
        """One generator update on n fresh fakes (the discriminator's weights are frozen)."""
        z = self.noise(n, generator)
        self.D.requires_grad_(False)
        try:
            out = self.D(self.G(z))
            loss = self.g_loss(self.view(out, self.D.kind))
            norm = self._update("generator", loss)
        finally:
            self.D.requires_grad_(True)
        if self.G_ema is not None:
            self.G_ema.update_parameters(self.G)
        return {"g_loss": loss.item(), "g_grad_norm": norm}

    def train_step(self, images: torch.Tensor, labels: torch.Tensor | None,
                   ctx: StepContext) -> dict[str, float]:
        cfg = self.config
        x = images.to(self.device) * 2 - 1
        if cfg.schedule == "alternate":
            if ctx.step % (cfg.n_dis + 1) < cfg.n_dis:
                return self.d_step(x, ctx.generator)
            return self.g_step(len(x), ctx.generator)
        if len(x) < cfg.n_dis:
            raise ConfigError(f"a batch of {len(x)} real images cannot be split over n_dis={cfg.n_dis} "
                              "discriminator updates; raise --batch-size or lower n_dis")
        parts = [self.d_step(chunk, ctx.generator) for chunk in torch.tensor_split(x, cfg.n_dis)]
        figures = {k: sum(p[k] for p in parts) / len(parts) for k in parts[0]}
        figures.update(self.g_step(len(x), ctx.generator))
        return figures

    def check_figures(self, figures: dict[str, float]) -> str | None:
        limit = self.config.explode_limit
        for k in ("d_loss", "g_loss"):
            if limit and abs(figures.get(k, 0.0)) > limit:
                return (f"{k} = {figures[k]:.3g} exceeded the limit {limit:g} (model.explode_limit): "
                        "training diverged")
        return None

    # ------------------------------------------------------------------------------ sampling
    def sampler(self) -> torch.nn.Module:
        """The network that makes samples: the EMA generator when there is one."""
        return self.G_ema.module if self.G_ema is not None else self.G

    @torch.no_grad()
    def generate(self, z: torch.Tensor, batch: int = 500) -> torch.Tensor:
        """Images [N, C, H, W] in [0, 1] from latents z [N, latent_dim] (eval mode, state restored)."""
        net = self.sampler()
        was = net.training
        net.eval()
        try:
            out = torch.cat([net(z[k:k + batch].to(self.device)).cpu() for k in range(0, len(z), batch)])
        finally:
            net.train(was)
        return (out + 1) / 2

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """n images [n, C, H, W] in [0, 1] from z ~ N(0, I) drawn (all at once) from ``generator``."""
        return self.generate(torch.randn(n, self.config.latent_dim, generator=generator))

    def interpolate(self, rows: int, cols: int, generator: torch.Generator) -> torch.Tensor:
        """rows x cols images [rows * cols, C, H, W]: each row walks a great circle between two latents."""
        z = torch.randn(2, rows, self.config.latent_dim, generator=generator)
        path = slerp(z[0], z[1], torch.linspace(0, 1, cols))
        return self.generate(path.reshape(rows * cols, -1))

    def after_step(self, step: int, run: Any, writer: Any = None) -> None:
        every = self.config.sample_every
        if not every or step % every:
            return
        imgs = self.generate(self.fixed_noise)
        grid = image_grid(imgs, math.ceil(math.sqrt(len(imgs))), scale=2)
        path = Path(run.figures) / "samples" / f"step_{step:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        grid.save(path)   # kept for every sampled step, to see progress over training
        if writer is not None:
            arr = np.asarray(grid)
            writer.add_image("samples", arr[..., None] if arr.ndim == 2 else arr, step, dataformats="HWC")

    # ---------------------------------------------------------------------------- evaluation
    @torch.no_grad()
    def discriminate(self, images: torch.Tensor, batch: int = 250) -> torch.Tensor:
        """P(real) [N] for images [N, C, H, W] in [0, 1]."""
        outs = [self.D(images[k:k + batch].to(self.device) * 2 - 1).cpu() for k in range(0, len(images), batch)]
        return p_real(torch.cat(outs), self.D.kind)

    def evaluate(self, images: torch.Tensor, labels: torch.Tensor | None) -> dict[str, float]:
        """D accuracy (threshold 1/2) on real test images vs as many fresh fakes of G."""
        n = min(len(images), self.config.eval_n)
        g = torch.Generator().manual_seed(self.config.fixed_seed + 1)  # never the global RNG
        with torch.no_grad():
            z = torch.randn(n, self.config.latent_dim, generator=g)
            was = self.G.training
            self.G.eval()
            fake = torch.cat([self.G(z[k:k + 500].to(self.device)).cpu() for k in range(0, n, 500)])
            self.G.train(was)
        pr, pf = self.discriminate(images[:n]), self.discriminate((fake + 1) / 2)
        acc_r, acc_f = (pr > 0.5).float().mean().item(), (pf <= 0.5).float().mean().item()
        return {"d_acc": (acc_r + acc_f) / 2, "d_acc_real": acc_r, "d_acc_fake": acc_f,
                "d_real": pr.mean().item(), "d_fake": pf.mean().item(), "n": n}

    def write_figures(self, out_dir: Path, images: torch.Tensor,
                      labels: torch.Tensor | None) -> list[Path]:
        """samples.png (fixed noise), real.png, interpolation.png, gan_curves.png (from metrics)."""
        from capsgen.train.rundir import RunDir

        out_dir = Path(out_dir)
        ncol = math.ceil(math.sqrt(self.config.n_fixed))
        paths = [save_image_grid(self.generate(self.fixed_noise), out_dir / "samples.png", ncol=ncol, scale=2),
                 save_image_grid(images[:self.config.n_fixed], out_dir / "real.png", ncol=ncol, scale=2)]
        g = torch.Generator().manual_seed(self.config.fixed_seed + 2)
        paths.append(save_image_grid(self.interpolate(8, 10, g), out_dir / "interpolation.png", ncol=10, scale=2))
        rows = RunDir(out_dir.parent).read_metrics()   # figures/ lives in the run folder
        if any(r.get("split") == "train" for r in rows):
            keys = [("train", "d_loss"), ("train", "d_acc"), ("train", "g_loss"), ("test", "d_acc")]
            paths.append(plot_curves(rows, keys, out_dir / "gan_curves.png",
                                     title=f"{self.config.discriminator} discriminator, {self.config.objective}"))
        return paths

