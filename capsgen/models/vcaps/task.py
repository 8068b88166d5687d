"""The ``vcaps`` family's Task: Huang et al.'s variational capsule networks, trained and used.

One ``train_step`` on a batch x with targets T (class labels [B] in class mode, attribute
vectors [B, A] in attribute mode):

1. encode: mu, logvar [B, *caps, D]; KL of every capsule to N(0, I) [B, *caps];
2. reparameterise c = mu + eps * sigma and mask it (the least-KL capsule, §3.2, or the label's,
   ``train_mask``); decode the reconstruction;
3. with ``beta > 0``: draw prior capsules z ~ N(0, I) masked by T (§3.3, the generation path
   that eq. 5's G(z) names), decode them, and update the LSGAN discriminator on x vs G(z)
   (the second optimizer), then score G(z) with the updated discriminator for the generator;
4. update encoder + decoder on eq. 6: L_c (KL margin loss, eq. 3) + alpha L_rec + beta L_adv
   (L_rec scaled by ``alpha_pixels`` / (C H W) when that is set).

eps and z come from ``ctx.generator`` for the GLOBAL batch, sliced by ``ctx.rank_slice``, so a
torchrun run and a resumed run draw exactly what a one-process, uninterrupted run draws. The
networks have no dropout, so nothing else is random.

What a trained run can do depends on its mode (``disabled_capabilities``):

- class mode: classify (class scores = -KL per class capsule, so the argmax is the least KL),
  generate, class-conditional generation;
- attribute mode: predict attributes (P(present) = sigmoid(KL_absent - KL_present), > 1/2 exactly
  when the "present" capsule has the smaller KL), generate, attribute-conditional generation.

``sample`` draws a random class (uniform) or a random attribute vector — a row of the
:class:`AttributeBank`, the attribute vectors of the first training images this run saw, so
CelebA's correlated attributes come in real combinations (before any training step: fair coins)
— then capsules from the prior through that mask. ``interpolate`` (the generic capability, which
gets no images) walks linearly between two such prior draws, masked capsules and all, because a
reopened run reads no data; ``write_figures``, which has the test images, interpolates between
the encodings of two test images as the paper's figure 7 does.
"""
from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from capsgen.data.batch import Batch
from capsgen.models.vcaps.config import VCapsConfig
from capsgen.models.vcaps.nets import build_networks, capsule_layout
from capsgen.nn.variational import (capsule_kl, kl_margin_loss, lsgan_d_loss, lsgan_g_loss,
                                    min_kl_mask, predict_from_kl, reconstruction_loss, target_mask,
                                    training_mask)
from capsgen.report.figures import image_grid, plot_curves, save_image_grid
from capsgen.train.capabilities import (AttributeConditional, AttributePredicting, ClassConditional, Classifying,
                                        Generative)
from capsgen.train.distributed import SINGLE, Distributed
from capsgen.train.memory import meta, passes_bytes
from capsgen.train.task import DataInfo, StepContext, Task

CHUNK = 250          # images per forward pass outside training
BANK_SIZE = 2048     # attribute vectors kept for drawing random attribute combinations
MAX_ROWS = 40        # rows of a class or attribute grid (CelebA has 40 attributes)


class AttributeBank(torch.nn.Module):
    """The attribute vectors of the first ``size`` training images seen, as buffers (so they are
    saved with the weights and a reopened run has them): bank uint8 [size, A], count [1]."""

    def __init__(self, num_attributes: int, size: int = BANK_SIZE):
        super().__init__()
        self.register_buffer("bank", torch.zeros(size, num_attributes, dtype=torch.uint8))
        self.register_buffer("count", torch.zeros(1, dtype=torch.long))

    @torch.no_grad()
    def add(self, attributes: torch.Tensor) -> None:
        """Keep rows of attributes [B, A] in {0, 1} until the bank is full."""
        n = int(self.count)
        take = min(len(attributes), len(self.bank) - n)
        if take > 0:
            self.bank[n:n + take] = attributes[:take].to(self.bank.device, torch.uint8)
            self.count += take

    def draw(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """n attribute vectors [n, A] float on the CPU: random rows of the bank (fair coins if empty)."""
        k = int(self.count)
        if k == 0:
            return (torch.rand(n, self.bank.shape[1], generator=generator) < 0.5).float()
        return self.bank[:k].cpu()[torch.randint(0, k, (n,), generator=generator)].float()


class VCapsTask(Task, Generative, ClassConditional, AttributeConditional, Classifying, AttributePredicting):
    """Variational capsule network (Huang et al.). Modules: autoencoder (encoder + decoder),
    discriminator when ``beta > 0``, attribute_bank in attribute mode; optimizers: Adam for the
    autoencoder and the discriminator."""

    def __init__(self, config: VCapsConfig, info: DataInfo, device: torch.device, dist: Distributed = SINGLE):
        super().__init__(config, info, device, dist)
        cfg = config
        self.mode, self.network = cfg.resolve(bool(info.num_classes), bool(info.attribute_names))
        self.caps = capsule_layout(self.mode, info.num_classes, info.num_attributes)
        ae, disc = build_networks(cfg, info.shape, self.caps, self.network)
        if dist.active and self.device.type == "cuda":
            # batch statistics over the global batch (see capsgen.train.distributed)
            ae = torch.nn.SyncBatchNorm.convert_sync_batchnorm(ae)
            disc = None if disc is None else torch.nn.SyncBatchNorm.convert_sync_batchnorm(disc)
        self.ae = ae.to(self.device)
        self.D = None if disc is None else disc.to(self.device)
        betas = (cfg.beta1, cfg.beta2)
        self.modules = {"autoencoder": self.ae}
        self.optimizers = {"autoencoder": torch.optim.Adam(self.ae.parameters(), cfg.lr, betas)}
        if self.D is not None:
            self.modules["discriminator"] = self.D
            self.optimizers["discriminator"] = torch.optim.Adam(
                self.D.parameters(), cfg.lr if cfg.lr_d is None else cfg.lr_d, betas)
        self.bank = None
        if self.mode == "attributes":
            self.bank = AttributeBank(info.num_attributes).to(self.device)
            self.modules["attribute_bank"] = self.bank
        # alpha_pixels: the weight alpha was chosen for images of that many values (see the config)
        self.recon_scale = 1.0 if cfg.alpha_pixels is None else cfg.alpha_pixels / math.prod(info.shape)
        self.best_metric = "test_error" if self.mode == "class" else "attribute_error"
        self.best_mode = "min"
        # the fixed capsules and targets of the progress grids (never the global RNG)
        g = torch.Generator().manual_seed(cfg.fixed_seed)
        self.fixed_caps = torch.randn(cfg.n_fixed, *self.caps, cfg.caps_dim, generator=g)
        self.fixed_targets = (torch.arange(cfg.n_fixed) % info.num_classes if self.mode == "class"
                              else (torch.rand(cfg.n_fixed, info.num_attributes, generator=g) < 0.5).long())

    def disabled_capabilities(self) -> tuple[str, ...]:
        if self.mode == "class":
            return ("attribute-conditional", "attributes")
        return ("class-conditional", "classify")

    # ------------------------------------------------------------------------------ training
    def targets_of(self, batch: Batch) -> torch.Tensor:
        """Class labels [B] (class mode) or attribute vectors [B, A] int64 (attribute mode)."""
        t = batch.labels if self.mode == "class" else batch.attributes
        if t is None:
            what = "class labels" if self.mode == "class" else "attributes"
            raise ValueError(f"vcaps in {self.mode} mode needs {what} with every batch")
        return t.long()

    def _noise(self, ctx: StepContext, n: int, like: torch.Tensor) -> torch.Tensor:
        """N(0, I) [n, *caps, D] for this process's n rows, drawn for the global batch."""
        total = ctx.global_batch or n
        eps = torch.randn(total, *self.caps, self.config.caps_dim, generator=ctx.generator)[ctx.rank_slice]
        if len(eps) != n:
            raise ValueError(f"rank slice {ctx.rank_slice} of {total} gives {len(eps)} rows, not the batch's {n}")
        return eps.to(like.device, like.dtype)

    def _recon_loss(self, recon: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        # in fp32 outside autocast: binary cross-entropy refuses bf16 autocast, and a sum over
        # thousands of pixels per image loses digits in bf16
        with torch.autocast(self.device.type, enabled=False):
            return reconstruction_loss(recon.float(), x.float(), self.config.recon)

    def train_step(self, batch: Batch, ctx: StepContext) -> dict[str, float]:
        cfg = self.config
        x, t = batch.images, self.targets_of(batch)
        if self.bank is not None:
            self.bank.add(t)
        n = len(x)
        eps = self._noise(ctx, n, x)
        z = self._noise(ctx, n, x) if self.D is not None else None
        mu, logvar = self.ae.encoder(x)
        kl = capsule_kl(mu.float(), logvar.float())                               # [B, *caps]
        mask = training_mask(kl, t, cfg.train_mask)
        caps = self.ae.masked(mu + eps.to(mu.dtype) * torch.exp(0.5 * logvar), mask)
        recon = self.ae.decoder(caps)
        l_c = kl_margin_loss(kl, t, cfg.kl_margin, cfg.kl_lambda)
        l_rec = self._recon_loss(recon, x)
        loss = l_c + cfg.alpha * self.recon_scale * l_rec
        out: dict[str, float] = {}
        if self.D is not None:
            # generation path of eq. 5: prior capsules masked by the batch's own targets
            fake = self.ae.decoder(self.ae.masked(z.to(mu.dtype), target_mask(t, kl.shape, mu.dtype)))
            d_loss = lsgan_d_loss(self.D(x), self.D(fake.detach()))
            out["d_loss"] = d_loss.item()
            out["d_grad_norm"] = self.optimizer_step("discriminator", d_loss)
            self.D.requires_grad_(False)
            try:
                g_adv = lsgan_g_loss(self.D(fake))
            finally:
                self.D.requires_grad_(True)
            loss = loss + cfg.beta * g_adv
            out["g_adv"] = g_adv.item()
        out["grad_norm"] = self.optimizer_step("autoencoder", loss)
        with torch.no_grad():
            tm = target_mask(t, kl.shape, kl.dtype)
            right = (predict_from_kl(kl) == t).float().mean()
            out.update({"loss": loss.item(), "kl_margin": l_c.item(), "recon": l_rec.item(),
                        "accuracy": right.item(),
                        "kl_active": ((kl * tm).sum() / tm.sum()).item(),
                        "kl_inactive": ((kl * (1 - tm)).sum() / (1 - tm).sum().clamp_min(1)).item()})
        return out

    def activation_bytes(self, batch_size: int) -> int:
        """Encoder, decoder of the reconstruction and of the prior draw, and D on real and fake,
        all alive until the autoencoder's backward."""
        x = meta(batch_size, *self.info.shape)
        caps = meta(batch_size, *self.caps, self.config.caps_dim)
        passes = [(self.ae.encoder, x), (self.ae.decoder, caps)]
        if self.D is not None:
            passes += [(self.ae.decoder, caps), (self.D, x), (self.D, x)]
        return passes_bytes(*passes)

    # ------------------------------------------------------------------------------ analysis
    @contextlib.contextmanager
    def _eval(self) -> Iterator[None]:
        """Eval mode (batch-norm running statistics) and no gradients, restored afterwards."""
        was = self.ae.training
        self.ae.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            self.ae.train(was)

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(mu, logvar [N, *caps, D], kl [N, *caps]) on the CPU for images [N, C, H, W] in [0, 1]."""
        mus, logvars = [], []
        with self._eval():
            for k in range(0, len(images), CHUNK):
                mu, logvar = self.ae.encoder(images[k:k + CHUNK].to(self.device))
                mus.append(mu.float().cpu())
                logvars.append(logvar.float().cpu())
        mu, logvar = torch.cat(mus), torch.cat(logvars)
        return mu, logvar, capsule_kl(mu, logvar)

    def decode(self, capsules: torch.Tensor) -> torch.Tensor:
        """Images [N, C, H, W] in [0, 1] on the CPU from masked capsules [N, *caps, D]."""
        with self._eval():
            parts = [self.ae.decoder(capsules[k:k + CHUNK].to(self.device)).float().cpu()
                     for k in range(0, len(capsules), CHUNK)]
        return torch.cat(parts) if parts else torch.empty(0, *self.info.shape)

    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        """Reconstructions [N, C, H, W] from the means of the predicted (least-KL) capsules."""
        mu, _, kl = self.encode(images)
        return self.decode(self.ae.masked(mu, min_kl_mask(kl)))

    def class_scores(self, images: torch.Tensor) -> torch.Tensor:
        """-KL of every class capsule [B, K] (higher = more likely; argmax = least KL) for images on
        ``self.device``; differentiable with respect to the images."""
        if self.mode != "class":
            raise ValueError("class scores need a class-mode run")
        return -capsule_kl(*self.ae.encoder(images))

    def attribute_probs(self, images: torch.Tensor) -> torch.Tensor:
        """sigmoid(KL_absent - KL_present) [B, A]: above 1/2 exactly when the least-KL capsule of
        the pair is "present" (a score with the paper's decision rule, not a calibrated probability)."""
        if self.mode != "attributes":
            raise ValueError("attribute probabilities need an attribute-mode run")
        kl = capsule_kl(*self.ae.encoder(images))
        return torch.sigmoid(kl[..., 0] - kl[..., 1])

    def evaluate(self, batch: Batch) -> dict[str, float]:
        """On the first ``eval_n`` test images: test error (class mode) or the mean attribute error
        and accuracy (attribute mode) of least-KL prediction, and the reconstruction error of eq. 4
        (1/2 squared error per image) from the predicted capsules' means."""
        b = batch[: self.config.eval_n]
        mu, _, kl = self.encode(b.images)
        pred = predict_from_kl(kl)
        out: dict[str, float] = {"n": len(b)}
        if self.mode == "class":
            out["test_error"] = (pred != b.labels).float().mean().item()
        else:
            acc = (pred == b.attributes.long()).float().mean(0)
            out["attribute_accuracy"] = acc.mean().item()
            out["attribute_error"] = 1.0 - out["attribute_accuracy"]
            out["worst_attribute_accuracy"] = acc.min().item()
        recon = self.decode(self.ae.masked(mu, min_kl_mask(kl)))
        out["recon_error"] = 0.5 * (recon - b.images).pow(2).flatten(1).sum(1).mean().item()
        m = min_kl_mask(kl)
        out["kl_predicted"] = ((kl * m).sum() / m.sum()).item()   # mean KL of a predicted capsule
        return out

    # ------------------------------------------------------------------------------ generation
    def sample_masks(self, targets: torch.Tensor) -> torch.Tensor:
        """Masks [n, *caps] from classes [n] or attribute vectors [n, A] in {0, 1} (checked)."""
        if self.mode == "class":
            k = self.info.num_classes
            if targets.dim() != 1 or (len(targets) and not 0 <= int(targets.min()) <= int(targets.max()) < k):
                raise ValueError(f"labels must be [n] classes in [0, {k})")
        else:
            a = self.info.num_attributes
            if targets.dim() != 2 or targets.shape[1] != a or not bool(((targets == 0) | (targets == 1)).all()):
                raise ValueError(f"attributes must be [n, {a}] in {{0, 1}}")
        return target_mask(targets.long(), (len(targets), *self.caps))

    def generate(self, targets: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """One image per target (class or attribute row): prior capsules through its mask (§3.3)."""
        mask = self.sample_masks(torch.as_tensor(targets).cpu())
        z = torch.randn(*mask.shape, self.config.caps_dim, generator=generator)
        return self.decode(self.ae.masked(z, mask))

    def random_targets(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """n uniform classes [n], or n attribute vectors [n, A] from the attribute bank."""
        if self.mode == "class":
            return torch.randint(0, self.info.num_classes, (n,), generator=generator)
        return self.bank.draw(n, generator).long()

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """n images [n, C, H, W] of random classes / attribute vectors (targets, then capsules)."""
        return self.generate(self.random_targets(n, generator), generator)

    def sample_classes(self, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.mode != "class":
            raise ValueError("class-conditional samples need a class-mode run")
        return self.generate(torch.as_tensor(labels, dtype=torch.long), generator)

    def sample_attributes(self, attributes: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.mode != "attributes":
            raise ValueError("attribute-conditional samples need an attribute-mode run")
        return self.generate(torch.as_tensor(attributes).round().long(), generator)

    @staticmethod
    def lerp_rows(a: torch.Tensor, b: torch.Tensor, cols: int) -> torch.Tensor:
        """Linear paths between a and b [R, ...] at cols points, ends included -> [R * cols, ...]."""
        w = torch.linspace(0, 1, cols).view(1, cols, *([1] * (a.dim() - 1)))
        return ((1 - w) * a.unsqueeze(1) + w * b.unsqueeze(1)).reshape(-1, *a.shape[1:])

    def interpolate(self, rows: int, cols: int, generator: torch.Generator) -> torch.Tensor:
        """rows x cols images: row r walks linearly between two prior draws of random targets
        (masked capsules [*caps, D] each), since a reopened run has no images at hand; see
        :meth:`interpolate_images` for the paper's interpolation between two encoded images."""
        ends = []
        for _ in range(2):
            mask = self.sample_masks(self.random_targets(rows, generator))
            ends.append(self.ae.masked(torch.randn(*mask.shape, self.config.caps_dim, generator=generator), mask))
        return self.decode(self.lerp_rows(ends[0], ends[1], cols))

    def interpolate_images(self, a: torch.Tensor, b: torch.Tensor, cols: int) -> torch.Tensor:
        """Paper figure 7: rows between the encodings of images a[r] and b[r] [R, C, H, W] —
        each image's masked mean capsules (least-KL mask), interpolated linearly."""
        mu, _, kl = self.encode(torch.cat([a, b]))
        caps = self.ae.masked(mu, min_kl_mask(kl))
        return self.decode(self.lerp_rows(caps[: len(a)], caps[len(a):], cols))

    def swap_attributes(self, a: torch.Tensor, b: torch.Tensor, count: int) -> torch.Tensor:
        """For each pair (a[r], b[r]): a's reconstruction with the capsule pair of attribute j taken
        from b (mask and mean), j = 0..count-1 -> [R, count, C, H, W]."""
        mu, _, kl = self.encode(torch.cat([a, b]))
        caps = self.ae.masked(mu, min_kl_mask(kl))
        ca, cb = caps[: len(a)], caps[len(a):]
        out = ca.unsqueeze(1).repeat(1, count, *([1] * (ca.dim() - 1)))   # [R, count, A, 2, D]
        j = torch.arange(count)
        out[:, j, j] = cb[:, j]
        return self.decode(out.flatten(0, 1)).view(len(a), count, *self.info.shape)

    # ------------------------------------------------------------------------------ pictures
    def fixed_grid(self) -> torch.Tensor:
        """The fixed prior capsules through the fixed targets: [n_fixed, C, H, W]."""
        return self.decode(self.ae.masked(self.fixed_caps, self.sample_masks(self.fixed_targets)))

    def after_step(self, step: int, run: Any, writer: Any = None) -> None:
        every = self.config.sample_every
        if not every or step % every:
            return
        images = self.fixed_grid()
        ncol = self.info.num_classes if self.mode == "class" and self.info.num_classes <= 20 else 8
        grid = image_grid(images, ncol, scale=2)
        path = Path(run.figures) / "samples" / f"step_{step:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        grid.save(path)
        if writer is not None:
            arr = np.asarray(grid)
            writer.add_image("samples", arr[..., None] if arr.ndim == 2 else arr, step, dataformats="HWC")

    def attribute_grid(self, base: torch.Tensor, per_side: int = 4, seed: int = 0) -> torch.Tensor:
        """Paper figure 2: row j = attribute vector ``base`` [A] with attribute j set to 0
        (``per_side`` images) then to 1 (as many); the other capsules' noise is the same in every
        image of a column pair, so only attribute j changes along a row. [rows * 2 per_side, C, H, W]."""
        A, D = self.info.num_attributes, self.config.caps_dim
        rows = min(A, MAX_ROWS)
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(per_side, *self.caps, D, generator=g)
        targets, noise = [], []
        for j in range(rows):
            for value in (0, 1):
                t = base.clone().long()
                t[j] = value
                targets.append(t.expand(per_side, -1))
                noise.append(z)
        mask = self.sample_masks(torch.cat(targets))
        return self.decode(self.ae.masked(torch.cat(noise), mask))

    def write_figures(self, out_dir: Path, batch: Batch) -> list[Path]:
        """reconstructions.png (test images over their reconstructions), samples.png (prior draws),
        class_grid.png (row k: class k) or attribute_grid.png (row j: attribute j off | on),
        interpolation.png (between encodings of test images), attribute_swap.png (attribute
        mode: image a, image b, a's reconstruction, then a with b's capsules of attribute j), and
        vcaps_curves.png from the metrics."""
        from capsgen.train.rundir import RunDir

        out_dir = Path(out_dir)
        cfg = self.config
        x = batch.images
        g = torch.Generator().manual_seed(cfg.fixed_seed + 2)
        n = min(len(x), 16)
        paths = [save_image_grid(torch.cat([x[:n], self.reconstruct(x[:n])]), out_dir / "reconstructions.png", ncol=n),
                 save_image_grid(self.sample(64, g), out_dir / "samples.png", ncol=8)]
        if self.mode == "class":
            rows = min(self.info.num_classes, MAX_ROWS)
            labels = torch.arange(rows).repeat_interleave(10)
            paths.append(save_image_grid(self.sample_classes(labels, g), out_dir / "class_grid.png", ncol=10))
        else:
            base = (predict_from_kl(self.encode(x[:1])[2])[0] if len(x) else self.bank.draw(1, g)[0]).long()
            paths.append(save_image_grid(self.attribute_grid(base, seed=cfg.fixed_seed + 3),
                                         out_dir / "attribute_grid.png", ncol=8))
        pairs = min(len(x) // 2, 8)
        if pairs:
            a, b = x[:pairs], x[pairs:2 * pairs]
            paths.append(save_image_grid(self.interpolate_images(a, b, 10), out_dir / "interpolation.png", ncol=10))
            if self.mode == "attributes":
                count = min(self.info.num_attributes, 10)
                swapped = self.swap_attributes(a, b, count)
                rows = torch.cat([a[:, None], b[:, None], self.reconstruct(a)[:, None], swapped], 1)
                paths.append(save_image_grid(rows.flatten(0, 1), out_dir / "attribute_swap.png", ncol=count + 3))
        metrics = RunDir(out_dir.parent).read_metrics()   # figures/ lives in the run folder
        if any(r.get("split") == "train" for r in metrics):
            err = "test_error" if self.mode == "class" else "attribute_error"
            keys = [("train", "kl_margin"), ("train", "recon"), ("test", err), ("test", "recon_error")]
            if self.D is not None:
                keys.append(("train", "d_loss"))
            paths.append(plot_curves(metrics, keys, out_dir / "vcaps_curves.png", title="variational capsules"))
        return paths
