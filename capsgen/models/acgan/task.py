"""The ``acgan`` family's Task (Odena et al.; the use Chen et al. (G-CapsNets) make of it).

One ``train_step`` is one round of Odena et al.'s alternating updates on a batch of B labelled
real images:

1. discriminator: B real images with their labels and B fakes of uniformly drawn classes;
   loss :func:`~capsgen.models.acgan.nets.discriminator_loss` (source BCE on both, class CE on
   the real ones and, weighted by ``fake_class_weight``, on the fakes);
2. generator: B fresh fakes of fresh uniform classes, D frozen; loss
   :func:`~capsgen.models.acgan.nets.generator_loss` (non-saturating source term + class CE).

Latents z ~ N(0, I) and fake classes are drawn from ``ctx.generator`` for the *global* batch and
sliced to this process's rows, so a torchrun run uses the draws of a one-process run and a
resumed run repeats those of an uninterrupted one. The discriminator's dropout draws from
torch's global RNG (``nn.Dropout`` knows no other); each step forks that RNG and seeds it from
``ctx.generator`` too, so the masks are a function of (run seed, step) alone.

AC-GAN's discriminator has a class head, so a trained run also *classifies* (its class logits
are the class scores, e.g. for ``capsgen attack``) and *discriminates* (sigmoid of the source
logit). Images arrive in [0, 1] and go to the networks in [-1, 1]; pictures come back in [0, 1].
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from capsgen.data.batch import Batch
from capsgen.models.acgan.config import ACGANConfig
from capsgen.models.acgan.nets import build_discriminator, build_generator, discriminator_loss, generator_loss
from capsgen.models.common import require_labels, step_dropout_rng
from capsgen.models.gan.task import slerp
from capsgen.report.figures import image_grid, plot_curves, save_image_grid
from capsgen.train.capabilities import (ClassConditional, Classifying, Discriminating, Generative, LatentWalking,
                                        check_walk)
from capsgen.train.distributed import SINGLE, Distributed
from capsgen.train.memory import meta, passes_bytes
from capsgen.train.task import DataInfo, StepContext, Task

CHUNK = 500          # images per forward pass when generating or scoring outside training
MAX_GRID_ROWS = 20   # class rows of a picture (datasets with more classes show the first 20)


class ACGANTask(Task, Generative, ClassConditional, Classifying, Discriminating, LatentWalking):
    """Class-conditional generator vs a discriminator with source and class heads.

    Modules: generator, discriminator; optimizers: Adam for each (``lr``, ``lr_d``, betas).
    """

    best_metric = ""   # no single figure says which GAN checkpoint is best; keep 'last'

    def __init__(self, config: ACGANConfig, info: DataInfo, device: torch.device,
                 dist: Distributed = SINGLE):
        super().__init__(config, info, device, dist)
        cfg = config
        self.num_classes = require_labels(info, "acgan")
        self.G = build_generator(cfg, info.shape, self.num_classes).to(self.device)
        self.D = build_discriminator(cfg, info.shape, self.num_classes).to(self.device)
        if dist.active and self.device.type == "cuda":
            # batch statistics over the global batch (gloo on the CPU has no SyncBatchNorm kernel;
            # see capsgen.train.distributed); D has no batch norm
            self.G = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.G)
        self.modules = {"generator": self.G, "discriminator": self.D}
        betas = (cfg.beta1, cfg.beta2)
        self.optimizers = {"generator": torch.optim.Adam(self.G.parameters(), cfg.lr, betas),
                           "discriminator": torch.optim.Adam(self.D.parameters(),
                                                             cfg.lr if cfg.lr_d is None else cfg.lr_d, betas)}
        g = torch.Generator().manual_seed(cfg.fixed_seed)
        self.fixed_noise = torch.randn(cfg.n_fixed, cfg.latent_dim, generator=g)   # [n_fixed, L]

    # ------------------------------------------------------------------------------ training
    def fakes_spec(self, n: int, ctx: StepContext) -> tuple[torch.Tensor, torch.Tensor]:
        """(z [n, L], classes [n]) for this process's n fakes, drawn for the global batch."""
        total = ctx.global_batch or n
        z = torch.randn(total, self.config.latent_dim, generator=ctx.generator)[ctx.rank_slice]
        y = torch.randint(0, self.num_classes, (total,), generator=ctx.generator)[ctx.rank_slice]
        if len(z) != n:
            raise ValueError(f"rank slice {ctx.rank_slice} of {total} gives {len(z)} rows, not the batch's {n}")
        return z.to(self.device), y.to(self.device)

    def train_step(self, batch: Batch, ctx: StepContext) -> dict[str, float]:
        cfg = self.config
        if batch.labels is None:
            raise ValueError("acgan needs class labels with every batch")
        x, y = batch.images * 2 - 1, batch.labels
        n = len(x)
        with step_dropout_rng(ctx.generator, self.device, self.dist.rank):
            # 1. discriminator: n real and n fakes, two forwards (as in the GAN families)
            z, y_fake = self.fakes_spec(n, ctx)
            with torch.no_grad():
                fake = self.G(z, y_fake)
            src_r, cls_r = self.D(x)
            src_f, cls_f = self.D(fake)
            d = discriminator_loss(src_r, cls_r, y, src_f, cls_f, y_fake, cfg.real_target, cfg.fake_class_weight)
            d_norm = self.optimizer_step("discriminator", d["loss"])
            # 2. generator: n fresh fakes of fresh classes, D frozen
            z, y_gen = self.fakes_spec(n, ctx)
            self.D.requires_grad_(False)
            try:
                src_g, cls_g = self.D(self.G(z, y_gen))
                g = generator_loss(src_g, cls_g, y_gen)
                g_norm = self.optimizer_step("generator", g["loss"])
            finally:
                self.D.requires_grad_(True)
        with torch.no_grad():
            src_r, src_f = src_r.detach().reshape(-1), src_f.detach().reshape(-1)
            d_acc = torch.cat([src_r > 0, src_f <= 0]).float().mean()
            class_acc = (cls_r.detach().argmax(1) == y).float().mean()
            fake_class_acc = (cls_g.detach().argmax(1) == y_gen).float().mean()
        return {"d_loss": d["loss"].item(), "d_source": d["source"].item(), "d_class": d["class"].item(),
                "g_loss": g["loss"].item(), "g_source": g["source"].item(), "g_class": g["class"].item(),
                "d_acc": d_acc.item(), "class_acc": class_acc.item(), "fake_class_acc": fake_class_acc.item(),
                "d_grad_norm": d_norm, "g_grad_norm": g_norm}

    def check_figures(self, figures: dict[str, float]) -> str | None:
        limit = self.config.explode_limit
        for k in ("d_loss", "g_loss"):
            if limit and abs(figures.get(k, 0.0)) > limit:
                return (f"{k} = {figures[k]:.3g} exceeded the limit {limit:g} (model.explode_limit): "
                        "training diverged")
        return None

    def activation_bytes(self, batch_size: int) -> int:
        """The larger of the D update (D on n real and n fakes) and the G update (G, then D)."""
        x, z = meta(batch_size, *self.info.shape), meta(batch_size, self.config.latent_dim)
        y = meta(batch_size, dtype=torch.long)
        return max(passes_bytes((self.D, x), (self.D, x)), passes_bytes((self.G, z, y), (self.D, x)))

    # ------------------------------------------------------------------------------ sampling
    @torch.no_grad()
    def generate(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Images [N, C, H, W] in [0, 1] on the CPU from z [N, L] and classes [N] (G in eval mode)."""
        was = self.G.training
        self.G.eval()
        try:
            out = [self.G(z[k:k + CHUNK].to(self.device), labels[k:k + CHUNK].to(self.device)).float().cpu()
                   for k in range(0, len(z), CHUNK)]
        finally:
            self.G.train(was)
        return (torch.cat(out) + 1) / 2 if out else torch.empty(0, *self.info.shape)

    def sample_classes(self, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """One image per class in labels [n] -> [n, C, H, W] in [0, 1]; z drawn from ``generator``."""
        labels = torch.as_tensor(labels, dtype=torch.long).cpu()
        if labels.dim() != 1 or (len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) < self.num_classes):
            raise ValueError(f"labels must be [n] classes in [0, {self.num_classes})")
        return self.generate(torch.randn(len(labels), self.config.latent_dim, generator=generator), labels)

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """n images [n, C, H, W] of uniformly drawn classes (classes, then latents, from ``generator``)."""
        return self.sample_classes(torch.randint(0, self.num_classes, (n,), generator=generator), generator)

    def interpolate(self, rows: int, cols: int, generator: torch.Generator) -> torch.Tensor:
        """rows x cols images [rows * cols, C, H, W]: row r walks a great circle between two latents,
        all of class r mod K (so only the style changes along a row)."""
        z = torch.randn(2, rows, self.config.latent_dim, generator=generator)
        path = slerp(z[0], z[1], torch.linspace(0, 1, cols)).reshape(rows * cols, -1)
        labels = (torch.arange(rows) % self.num_classes).repeat_interleave(cols)
        return self.generate(path, labels)

    def latent_size(self) -> int:
        return self.config.latent_dim

    def walk(self, start: torch.Tensor, end: torch.Tensor, t: torch.Tensor,
             labels: torch.Tensor | None) -> torch.Tensor:
        """Images of classes labels [N] along the great circle from latent start [L] to end [L]."""
        check_walk(self.latent_size(), start, end, t, labels, self.num_classes)
        return self.generate(slerp(start[None].float(), end[None].float(), t.float())[0], labels.long())

    def class_grid(self) -> torch.Tensor:
        """The fixed latents in every class: [rows * n_fixed, C, H, W], row k = class k."""
        rows = min(self.num_classes, MAX_GRID_ROWS)
        n = len(self.fixed_noise)
        return self.generate(self.fixed_noise.repeat(rows, 1), torch.arange(rows).repeat_interleave(n))

    def after_step(self, step: int, run: Any, writer: Any = None) -> None:
        every = self.config.sample_every
        if not every or step % every:
            return
        grid = image_grid(self.class_grid(), len(self.fixed_noise), scale=2)
        path = Path(run.figures) / "samples" / f"step_{step:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        grid.save(path)   # kept for every sampled step, to see progress over training
        if writer is not None:
            arr = np.asarray(grid)
            writer.add_image("class_grid", arr[..., None] if arr.ndim == 2 else arr, step, dataformats="HWC")

    # ---------------------------------------------------------------------- D as a classifier
    def class_scores(self, images: torch.Tensor) -> torch.Tensor:
        """D's class logits [B, K] for images [B, C, H, W] in [0, 1] on ``self.device``
        (differentiable with respect to the images)."""
        return self.D(images * 2 - 1)[1]

    @torch.no_grad()
    def d_outputs(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(P(real) [N], class logits [N, K]) on the CPU for images [N, C, H, W] in [0, 1]."""
        parts = [self.D(images[k:k + CHUNK].to(self.device) * 2 - 1) for k in range(0, len(images), CHUNK)]
        src = torch.cat([s.float().reshape(-1).cpu() for s, _ in parts])
        return torch.sigmoid(src), torch.cat([c.float().cpu() for _, c in parts])

    def discriminate(self, images: torch.Tensor) -> torch.Tensor:
        """P(real) [N] from the source head for images [N, C, H, W] in [0, 1]."""
        return self.d_outputs(images)[0]

    def evaluate(self, batch: Batch) -> dict[str, float]:
        """On the first ``eval_n`` test images and as many fakes of uniform classes (fixed seed):
        D's source accuracy (threshold 1/2, real and fake halves), its class accuracy on the test
        images, and the share of fakes it assigns to the class G was asked for."""
        n = min(len(batch.images), self.config.eval_n)
        g = torch.Generator().manual_seed(self.config.fixed_seed + 1)   # never the global RNG
        fake_labels = torch.randint(0, self.num_classes, (n,), generator=g)
        fake = self.generate(torch.randn(n, self.config.latent_dim, generator=g), fake_labels)
        pr, cr = self.d_outputs(batch.images[:n])
        pf, cf = self.d_outputs(fake)
        acc_r, acc_f = (pr > 0.5).float().mean().item(), (pf <= 0.5).float().mean().item()
        figures = {"d_acc": (acc_r + acc_f) / 2, "d_acc_real": acc_r, "d_acc_fake": acc_f,
                   "d_real": pr.mean().item(), "d_fake": pf.mean().item(),
                   "fake_class_acc": (cf.argmax(1) == fake_labels).float().mean().item(), "n": n}
        if batch.labels is not None:
            figures["class_acc"] = (cr.argmax(1) == batch.labels[:n]).float().mean().item()
        return figures

    def write_figures(self, out_dir: Path, batch: Batch) -> list[Path]:
        """class_grid.png (row k: the fixed latents as class k), samples.png, real.png,
        interpolation.png (one class per row) and gan_curves.png (from metrics)."""
        from capsgen.train.rundir import RunDir

        out_dir = Path(out_dir)
        g = torch.Generator().manual_seed(self.config.fixed_seed + 2)
        rows = min(self.num_classes, MAX_GRID_ROWS)
        paths = [save_image_grid(self.class_grid(), out_dir / "class_grid.png", ncol=len(self.fixed_noise)),
                 save_image_grid(self.sample(64, g), out_dir / "samples.png", ncol=8),
                 save_image_grid(batch.images[:64], out_dir / "real.png", ncol=8),
                 save_image_grid(self.interpolate(rows, 10, g), out_dir / "interpolation.png", ncol=10)]
        metrics = RunDir(out_dir.parent).read_metrics()   # figures/ lives in the run folder
        if any(r.get("split") == "train" for r in metrics):
            keys = [("train", "d_loss"), ("train", "g_loss"), ("test", "d_acc"), ("test", "class_acc"),
                    ("test", "fake_class_acc")]
            paths.append(plot_curves(metrics, keys, out_dir / "gan_curves.png", title="AC-GAN"))
        return paths
