"""The GAN families — ``dcgan`` and ``capsulegan`` — as one Task: config, presets, step, pictures.

One ``train_step`` gets one batch of B real images from the generic loop and, by ``schedule``:

- ``joint`` (default): n_dis discriminator updates (the B real images split over them, each
  update seeing as many fakes as reals), then one generator update on B fakes;
- ``alternate`` (Karmakar): a step is *either* a discriminator update (B real + B fake in one
  batch, e.g. 16 + 16 = 32) *or* a generator update (B fakes), in the cycle
  n_dis x D, 1 x G; the real images of a G step are not used.

Every latent draw (and, with ``diffaugment``, every augmentation offset) goes through
``ctx.generator``, so a resumed run is bit-identical to an uninterrupted one. Images arrive in [0, 1] and are mapped to [-1, 1] for the tanh generators;
pictures and samples are mapped back.

The family name only picks defaults (and which discriminators are allowed); presets are named
bundles of ``--set`` values applied before the user's own ``--set`` (see ``PRESETS``).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from capsgen.data.batch import Batch
from capsgen.errors import ConfigError
from capsgen.models.gan.config import GENERATORS, GANConfig
from capsgen.models.gan.augment import diff_augment
from capsgen.models.gan.losses import objective, p_real
from capsgen.models.gan.nets import (CapsuleDiscriminator, DCGANDiscriminator, DCGANGenerator, KarmakarGenerator,
                                     TrunkCapsuleDiscriminator, spectral_normed)
from capsgen.report.figures import image_grid, plot_curves, save_image_grid
from capsgen.train.capabilities import Discriminating, Generative, LatentWalking, check_walk
from capsgen.train.distributed import SINGLE, Distributed
from capsgen.train.task import DataInfo, StepContext, Task

def build_generator(cfg: GANConfig, shape: tuple[int, int, int]) -> torch.nn.Module:
    if cfg.generator == "dcgan":
        return DCGANGenerator(shape, cfg.latent_dim, cfg.g_width, cfg.g_norm)
    if cfg.generator == "karmakar":
        return KarmakarGenerator(shape, cfg.latent_dim, tuple(cfg.g_channels))
    raise ValueError(f"unknown generator {cfg.generator!r}; choose one of: {', '.join(GENERATORS)}")


def build_discriminator(cfg: GANConfig, shape: tuple[int, int, int]) -> torch.nn.Module:
    cfg.validate()
    if cfg.discriminator == "conv":
        d: torch.nn.Module = DCGANDiscriminator(shape, cfg.d_width, cfg.d_norm, cfg.d_extra_layers)
    elif cfg.discriminator.startswith("trunk-"):
        head, out_caps = ("dense", cfg.d_caps) if cfg.discriminator == "trunk-caps" else ("length", 2)
        d = TrunkCapsuleDiscriminator(shape, cfg.d_width, cfg.d_norm, cfg.d_extra_layers, cfg.d_primary_caps,
                                      cfg.d_primary_dim, cfg.d_primary_kernel, cfg.d_primary_stride, out_caps,
                                      cfg.d_caps_dim, cfg.d_routing, head, cfg.d_dense, cfg.d_grad_through_routing,
                                      init_std=cfg.d_caps_init_std, routing=cfg.d_routing_kind,
                                      minibatch_std=cfg.d_minibatch_std, twin=cfg.twin)
    else:
        head, out_caps = {"caps-dense": ("dense", cfg.d_caps), "caps1": ("length", 1),
                          "caps2": ("length", 2)}[cfg.discriminator]
        d = CapsuleDiscriminator(shape, cfg.d_conv_channels, cfg.d_conv_kernel, cfg.d_conv_act,
                                 cfg.d_primary_caps, cfg.d_primary_dim, cfg.d_primary_kernel,
                                 cfg.d_primary_stride, out_caps, cfg.d_caps_dim, cfg.d_routing, head,
                                 cfg.d_dense, cfg.d_grad_through_routing, init_std=cfg.d_caps_init_std,
                                 conv_stride=cfg.d_conv_stride, routing=cfg.d_routing_kind,
                                 minibatch_std=cfg.d_minibatch_std, twin=cfg.twin)
    return spectral_normed(d) if cfg.d_spectral_norm else d


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


class GANTask(Task, Generative, Discriminating, LatentWalking):
    """Generator vs discriminator. Modules: generator, discriminator (and generator_ema)."""

    best_metric = ""   # no single figure says which GAN checkpoint is best; keep 'last'
    TWIN_PARTS = tuple(f"discriminator.{name}" for name in ("primary", "caps", "score"))

    def __init__(self, config: GANConfig, info: DataInfo, device: torch.device,
                 dist: Distributed = SINGLE):
        super().__init__(config, info, device, dist)
        cfg = config
        self.view, self.d_loss, self.g_loss = objective(cfg.objective, cfg.m_pos, cfg.m_neg, cfg.lam)
        self.G = build_generator(cfg, info.shape).to(self.device)
        self.D = build_discriminator(cfg, info.shape).to(self.device)
        if dist.active and self.device.type == "cuda":
            # batch statistics over the global batch; gloo (CPU) has no SyncBatchNorm kernel, so on
            # the CPU each process normalises over its own slice (see capsgen.train.distributed)
            self.G = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.G)
            self.D = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.D)
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
        """z [n, latent_dim] ~ N(0, I) drawn from ``generator``.

        Under torchrun every process draws the latents of all processes and keeps its own n, so
        the processes together use the draws a one-process run of the global batch would.
        """
        w, r = self.dist.world_size, self.dist.rank
        z = torch.randn(n * w, self.config.latent_dim, generator=generator)
        return z[r * n:(r + 1) * n].to(self.device)

    def augment(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """x [n, C, H, W] in [-1, 1] as D sees it: DiffAugment'ed when ``diffaugment`` is set.

        Offsets are drawn for n x world_size images and this process keeps its n, as ``noise``.
        """
        policy = self.config.diffaugment
        if policy == "none":
            return x
        n, w, r = len(x), self.dist.world_size, self.dist.rank
        return diff_augment(x, policy, generator, total=n * w, rows=slice(r * n, (r + 1) * n))

    def _update(self, name: str, loss: torch.Tensor) -> float:
        """Backward + optimizer step; skipped (weights kept) if the loss or gradient is not finite."""
        return self.optimizer_step(name, loss, skip_nonfinite=True)

    def d_step(self, real: torch.Tensor, generator: torch.Generator) -> dict[str, float]:
        """One discriminator update on real [n, C, H, W] in [-1, 1] and n fresh fakes."""
        n = len(real)
        with torch.no_grad():
            fake = self.G(self.noise(n, generator))
        real, fake = self.augment(real, generator), self.augment(fake, generator)
        # Two forwards, not one mixed batch: with batch norm a mixed batch gives other statistics
        # than the all-fake batch of the G step, and D then tells G nothing useful. Without batch
        # norm (Karmakar's networks) this is the same as its 16 + 16 mixed batch.
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
            out = self.D(self.augment(self.G(z), generator))
            loss = self.g_loss(self.view(out, self.D.kind))
            norm = self._update("generator", loss)
        finally:
            self.D.requires_grad_(True)
        if self.G_ema is not None:
            self.G_ema.update_parameters(self.G)
        return {"g_loss": loss.item(), "g_grad_norm": norm}

    def train_step(self, batch: Batch, ctx: StepContext) -> dict[str, float]:
        cfg = self.config
        x = batch.images * 2 - 1
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

    def latent_size(self) -> int:
        return self.config.latent_dim

    def walk(self, start: torch.Tensor, end: torch.Tensor, t: torch.Tensor,
             labels: torch.Tensor | None) -> torch.Tensor:
        """Images along the great circle from latent start [L] to end [L] (:func:`slerp`)."""
        check_walk(self.latent_size(), start, end, t, labels, num_classes=None)
        return self.generate(slerp(start[None].float(), end[None].float(), t.float())[0])

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

    def evaluate(self, batch: Batch) -> dict[str, float]:
        """D accuracy (threshold 1/2) on real test images vs as many fresh fakes of G."""
        images = batch.images
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

    def write_figures(self, out_dir: Path, batch: Batch) -> list[Path]:
        """samples.png (fixed noise), real.png, interpolation.png, gan_curves.png (from metrics)."""
        from capsgen.train.rundir import RunDir

        images = batch.images
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

