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

The twin (``model.twin``, a conditional VAE with the same encoder and decoder) runs through the
same code: what differs — the latent, its KL, prediction, the encoder loss, the decoder input —
is the run's :mod:`~capsgen.models.vcaps.codes` object, so steps 1-4, sampling, interpolation,
figures and ``evaluate`` (the same metric names) are shared. In step 4 the twin's L_c is the
latent's KL plus its class head's cross-entropy.
"""
from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from capsgen.data.batch import Batch
from capsgen.models.vcaps.codes import CapsuleCode, Posterior, TwinCode
from capsgen.models.vcaps.config import VCapsConfig
from capsgen.models.vcaps.nets import build_networks, capsule_layout
from capsgen.nn.variational import lsgan_d_loss, lsgan_g_loss, min_kl_mask, reconstruction_loss, target_mask
from capsgen.report.figures import image_grid, plot_curves, save_image_grid
from capsgen.train.capabilities import (AttributeConditional, AttributePredicting, ClassConditional, Classifying,
                                        Encoding, Generative, PoseDecoding, PoseEncoding, PoseLayout, PosePrior)
from capsgen.train.distributed import SINGLE, Distributed
from capsgen.train.memory import meta, passes_bytes
from capsgen.train.task import DataInfo, StepContext, Task

CHUNK = 250          # images per forward pass outside training
BANK_SIZE = 2048     # attribute vectors kept for drawing random attribute combinations
MAX_ROWS = 40        # rows of a class or attribute grid (CelebA has 40 attributes)
POSE_BOUND = 5.0     # capsule values a user may set: N(0, 1) draws pass 5 once in 1.7 million


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


class VCapsTask(Task, Generative, ClassConditional, AttributeConditional, Classifying, AttributePredicting,
                PoseDecoding, PoseEncoding, PosePrior, Encoding):
    """Variational capsule network (Huang et al.). Modules: autoencoder (encoder + decoder),
    discriminator when ``beta > 0``, attribute_bank in attribute mode; optimizers: Adam for the
    autoencoder and the discriminator. The twin differs in the encoder's reader of its head and
    the decoder's condition input (TWIN_PARTS), and in ``self.code``."""

    TWIN_PARTS = ("autoencoder.encoder.posterior", "autoencoder.decoder.condition")

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
        self.code = (TwinCode(self.ae, self.caps, cfg.caps_dim) if cfg.twin
                     else CapsuleCode(self.ae, self.caps, cfg.caps_dim, cfg.kl_margin, cfg.kl_lambda))
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
        # the fixed latents and targets of the progress grids (never the global RNG); the twin's
        # latent has as many numbers as the capsules, so it gets the same draws (and targets)
        g = torch.Generator().manual_seed(cfg.fixed_seed)
        self.fixed_latent = torch.randn(cfg.n_fixed, *self.caps, cfg.caps_dim, generator=g).reshape(
            cfg.n_fixed, *self.code.latent_shape)
        self.fixed_targets = (torch.arange(cfg.n_fixed) % info.num_classes if self.mode == "class"
                              else (torch.rand(cfg.n_fixed, info.num_attributes, generator=g) < 0.5).long())

    def disabled_capabilities(self) -> tuple[str, ...]:
        # the twin's one latent has no capsule poses for the explorer to show or slide
        poses = ("decode-poses", "encode-poses", "pose-prior") if self.config.twin else ()
        if self.mode == "class":
            return ("attribute-conditional", "attributes", *poses)
        return ("class-conditional", "classify", *poses)

    # ------------------------------------------------------------------------------ training
    def targets_of(self, batch: Batch) -> torch.Tensor:
        """Class labels [B] (class mode) or attribute vectors [B, A] int64 (attribute mode)."""
        t = batch.labels if self.mode == "class" else batch.attributes
        if t is None:
            what = "class labels" if self.mode == "class" else "attributes"
            raise ValueError(f"vcaps in {self.mode} mode needs {what} with every batch")
        return t.long()

    def _noise(self, ctx: StepContext, n: int, like: torch.Tensor) -> torch.Tensor:
        """N(0, I) [n, *latent] (capsules [*caps, D]; the twin's [P D], the same numbers) for this
        process's n rows, drawn for the global batch."""
        total = ctx.global_batch or n
        eps = torch.randn(total, *self.code.latent_shape, generator=ctx.generator)[ctx.rank_slice]
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
        post = self.code.read(self.ae.encoder(x))
        mu, logvar = post.mu, post.logvar
        mask = self.code.training_mask(post, t, cfg.train_mask)                   # [B, *caps]
        recon = self.ae.decoder(self.code.decoder_input(mu + eps.to(mu.dtype) * torch.exp(0.5 * logvar), mask))
        l_c, parts = self.code.loss(post, t)
        l_rec = self._recon_loss(recon, x)
        loss = l_c + cfg.alpha * self.recon_scale * l_rec
        out: dict[str, float] = {}
        if self.D is not None:
            # generation path of eq. 5: prior capsules masked by the batch's own targets
            fake = self.ae.decoder(self.code.decoder_input(z.to(mu.dtype),
                                                           target_mask(t, (n, *self.caps), mu.dtype)))
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
            right = (self.code.predict(post) == t).float().mean()
            out.update({"loss": loss.item(), **{k: v.item() for k, v in parts.items()}, "recon": l_rec.item(),
                        "accuracy": right.item(), **self.code.figures(post, t)})
        return out

    def activation_bytes(self, batch_size: int) -> int:
        """Encoder, decoder of the reconstruction and of the prior draw, and D on real and fake,
        all alive until the autoencoder's backward."""
        x = meta(batch_size, *self.info.shape)
        if self.config.twin:      # the twin's decoder reads [latent, condition]
            caps = meta(batch_size, *self.code.latent_shape[:-1],
                        self.code.latent_shape[-1] + self.ae.decoder.condition.in_features)
        else:
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

    def encode(self, images: torch.Tensor) -> Posterior:
        """The posterior (on the CPU, float32) of images [N, C, H, W] in [0, 1]."""
        chunks = []
        with self._eval():
            for k in range(0, len(images), CHUNK):
                chunks.append([t.float().cpu() for t in self.ae.encoder(images[k:k + CHUNK].to(self.device))])
        return self.code.read(tuple(torch.cat(parts) for parts in zip(*chunks)))

    def decode(self, capsules: torch.Tensor) -> torch.Tensor:
        """Images [N, C, H, W] in [0, 1] on the CPU from decoder inputs: masked capsules [N, *caps, D]
        (the twin's [latent, condition] [N, P D + G])."""
        with self._eval():
            parts = [self.ae.decoder(capsules[k:k + CHUNK].to(self.device)).float().cpu()
                     for k in range(0, len(capsules), CHUNK)]
        return torch.cat(parts) if parts else torch.empty(0, *self.info.shape)

    def predicted_input(self, post: Posterior) -> torch.Tensor:
        """The decoder input of the posterior means under the predicted (least-KL) mask."""
        return self.code.decoder_input(post.mu, self.code.predicted_mask(post))

    def encode_capsules(self, images: torch.Tensor) -> torch.Tensor:
        """The decoder input of images: the means of the predicted (least-KL) capsules, the others
        masked to zero [N, *caps, D] (the twin: its latent means beside the predicted condition)."""
        return self.predicted_input(self.encode(images)).float().cpu()

    def decode_capsules(self, capsules: torch.Tensor) -> torch.Tensor:
        return self.decode(capsules.to(self.device))

    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        """Reconstructions [N, C, H, W] from the means of the predicted (least-KL) capsules."""
        return self.decode(self.predicted_input(self.encode(images)))

    def class_scores(self, images: torch.Tensor) -> torch.Tensor:
        """-KL of every class capsule [B, K] (higher = more likely; argmax = least KL; the twin: its
        class head's logits) for images on ``self.device``; differentiable with respect to the images."""
        if self.mode != "class":
            raise ValueError("class scores need a class-mode run")
        return self.code.class_scores(self.ae.encoder(images))

    def attribute_probs(self, images: torch.Tensor) -> torch.Tensor:
        """sigmoid(KL_absent - KL_present) [B, A]: above 1/2 exactly when the least-KL capsule of
        the pair is "present" (a score with the paper's decision rule, not a calibrated probability;
        the twin: the sigmoid of its attribute head)."""
        if self.mode != "attributes":
            raise ValueError("attribute probabilities need an attribute-mode run")
        return self.code.attribute_probs(self.ae.encoder(images))

    def evaluate(self, batch: Batch) -> dict[str, float]:
        """On the first ``eval_n`` test images: test error (class mode) or the mean attribute error
        and accuracy (attribute mode) of least-KL prediction, and the reconstruction error of eq. 4
        (1/2 squared error per image) from the predicted capsules' means."""
        b = batch[: self.config.eval_n]
        post = self.encode(b.images)
        pred = self.code.predict(post)
        out: dict[str, float] = {"n": len(b)}
        if self.mode == "class":
            out["test_error"] = (pred != b.labels).float().mean().item()
        else:
            acc = (pred == b.attributes.long()).float().mean(0)
            out["attribute_accuracy"] = acc.mean().item()
            out["attribute_error"] = 1.0 - out["attribute_accuracy"]
            out["worst_attribute_accuracy"] = acc.min().item()
        m = self.code.predicted_mask(post)
        recon = self.decode(self.code.decoder_input(post.mu, m))
        out["recon_error"] = 0.5 * (recon - b.images).pow(2).flatten(1).sum(1).mean().item()
        out["kl_predicted"] = self.code.decoded_kl(post, m)   # mean KL of a predicted capsule (twin: the latent)
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
        return self.decode(self.code.decoder_input(self.prior(len(mask), generator), mask))

    def prior(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """n draws [n, *latent] from the prior N(0, I) (capsules [*caps, D]; the twin's [P D])."""
        return torch.randn(n, *self.code.latent_shape, generator=generator)

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
            ends.append(self.code.decoder_input(self.prior(rows, generator), mask))
        return self.decode(self.lerp_rows(ends[0], ends[1], cols))

    def interpolate_images(self, a: torch.Tensor, b: torch.Tensor, cols: int) -> torch.Tensor:
        """Paper figure 7: rows between the encodings of images a[r] and b[r] [R, C, H, W] —
        each image's masked mean capsules (least-KL mask), interpolated linearly."""
        caps = self.predicted_input(self.encode(torch.cat([a, b])))
        return self.decode(self.lerp_rows(caps[: len(a)], caps[len(a):], cols))

    def swap_attributes(self, a: torch.Tensor, b: torch.Tensor, count: int) -> torch.Tensor:
        """For each pair (a[r], b[r]): a's reconstruction with the capsule pair of attribute j taken
        from b (mask and mean; the twin: b's bit j of the condition), j = 0..count-1 -> [R, count, C, H, W]."""
        caps = self.predicted_input(self.encode(torch.cat([a, b])))
        out = self.code.swap(caps[: len(a)], caps[len(a):], count)
        return self.decode(out.flatten(0, 1)).view(len(a), count, *self.info.shape)

    # ------------------------------------------------------------------------------ explore
    def pose_layout(self) -> PoseLayout:
        """Class mode: the K class capsules. Attribute mode: attribute a's "absent" and "present"
        capsules at 2a and 2a + 1 (the (A, 2) layout flattened)."""
        if self.mode == "class":
            names = tuple(self.info.class_names or [str(k) for k in range(self.info.num_classes)])
            return PoseLayout(names, self.config.caps_dim, POSE_BOUND)
        names = tuple(f"{a}={v}" for a in self.info.attribute_names for v in ("0", "1"))
        return PoseLayout(names, self.config.caps_dim, POSE_BOUND, pairs=True)

    def decode_poses(self, poses: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        self.pose_layout().check(poses, active)
        caps = poses.view(len(poses), *self.caps, -1)
        return self.decode(self.ae.masked(caps, active.view(len(poses), *self.caps)))

    def encode_poses(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Means [N, K, D] (clipped to the bound), -KL [N, K] as scores, the least-KL capsules active."""
        post = self.encode(images)
        mu, kl = post.mu, post.kl
        n = len(images)
        active = min_kl_mask(kl).bool().view(n, -1)
        return mu.clamp(-POSE_BOUND, POSE_BOUND).view(n, active.shape[1], -1), -kl.view(n, -1), active

    def sample_poses(self, active: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """N(0, I) capsules for the active ones (§3.3's generation path), clipped to the bound."""
        layout = self.pose_layout()
        z = torch.randn(len(active), len(layout.names), layout.dim, generator=generator)
        layout.check(torch.zeros_like(z), active)
        return z.clamp(-POSE_BOUND, POSE_BOUND) * active.unsqueeze(-1)

    # ------------------------------------------------------------------------------ pictures
    def fixed_grid(self) -> torch.Tensor:
        """The fixed prior capsules through the fixed targets: [n_fixed, C, H, W]."""
        return self.decode(self.code.decoder_input(self.fixed_latent, self.sample_masks(self.fixed_targets)))

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
        rows = min(self.info.num_attributes, MAX_ROWS)
        z = self.prior(per_side, torch.Generator().manual_seed(seed))
        targets, noise = [], []
        for j in range(rows):
            for value in (0, 1):
                t = base.clone().long()
                t[j] = value
                targets.append(t.expand(per_side, -1))
                noise.append(z)
        mask = self.sample_masks(torch.cat(targets))
        return self.decode(self.code.decoder_input(torch.cat(noise), mask))

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
            base = (self.code.predict(self.encode(x[:1]))[0] if len(x) else self.bank.draw(1, g)[0]).long()
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
            encoder_loss = "class_loss" if self.config.twin else "kl_margin"
            keys = [("train", encoder_loss), ("train", "recon"), ("test", err), ("test", "recon_error")]
            if self.D is not None:
                keys.append(("train", "d_loss"))
            paths.append(plot_curves(metrics, keys, out_dir / "vcaps_curves.png", title="variational capsules"))
        return paths
