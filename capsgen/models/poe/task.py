"""The ``poe`` family's Task: Hauser's three training phases as one resumable run.

The stage of a step is a function of the global step alone (:meth:`PoEConfig.stage_of`):
``ae`` (the convolutional autoencoder by backprop, Adam), ``stats`` (the primary capsules'
training mean and longest length, averaged over ``stat_steps`` batches), ``w`` (the capsule
encoder by contrastive divergence, Algorithm 1) and ``u`` (the capsule decoder, W fixed; the
restricted-domain directions are averaged over the same batches). The run's length is their
sum (:meth:`PoEConfig.fixed_steps`, enforced by :func:`capsgen.config.fit_train_budget`).

State, and where it lives so an interrupted run resumes inside any stage with identical
tensors: the autoencoder's weights, W, U, the capsule statistics, the restricted-domain
directions and the steps done per stage are the model's parameters and buffers (the module,
so a reopened run has them too); Adam's moments are the optimizer's; the two CD optimisers'
momentum tensors and update counters are :meth:`PoETask.extra_state`. The only randomness is
the autoencoder's dropout, drawn from ``ctx.generator`` (one seed per step, offset by the rank).

Under torchrun every hand-written update (dW, dU, the running means) is averaged over the
processes with :meth:`Task.all_mean` before it is applied, so all processes hold the same W
and U; the longest capsule is a maximum over processes.

The twin (``model.twin``, :mod:`capsgen.models.poe.twin`) runs the same schedule: the same ``ae``
steps, ``stats`` fits the features' mean, and the ``w`` and ``u`` steps are EM steps of its mixture
(E-step sums of each batch, an M-step every ``em_batches`` steps and at the last step); the sums
between M-steps are :meth:`PoETask.extra_state`. Its sampling, grids, evaluation and pictures go
through the same methods, with "capsule K" meaning "component K".
"""
from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import torch
import torch.nn.functional as F

from capsgen.data.batch import Batch
from capsgen.errors import CapsgenError
from capsgen.models.gan.task import slerp
from capsgen.models.poe.config import DOMAINS, STAGES, PoEConfig
from capsgen.models.poe.nets import PoEModel, autoencoder_loss, negative_share
from capsgen.nn.contrastive import capsule_reconstruction_error, mix_by_routing
from capsgen.nn.squash import safe_norm, squash
from capsgen.nn.twins_poe import EMStatistics
from capsgen.report.figures import plot_curves, save_image_grid
from capsgen.train.capabilities import CapsuleSampling, Encoding, Generative, PoseDecoding, PoseLayout
from capsgen.train.distributed import SINGLE, Distributed
from capsgen.train.memory import FLOAT, meta, passes_bytes
from capsgen.train.task import DataInfo, StepContext, Task

GRID_ROWS = 4        # samples per capsule in the capsule grids (Hauser's figure 2: 4 rows x 20 capsules)


EM_STATE = tuple(f.name for f in fields(EMStatistics))    # the twin's E-step sums, as extra_state "em_<name>"
CD_COPIES = 4   # [J, B, I, Din] tensors alive at once in a CD step (see activation_bytes)


class PoETask(Task, Generative, CapsuleSampling, PoseDecoding, Encoding):
    """Autoencoder + capsule encoder W + decoder U (:class:`PoEModel` with its ``capsules``), trained
    stage by stage; or the twin's autoencoder + mixture (``mixture``).

    Modules: ``model``; optimizers: ``autoencoder`` (Adam on the autoencoder's parameters; W and U,
    and the twin's mixture, are buffers changed only by the CD rules or EM).
    """

    best_metric = ""     # each stage has its own figures; keep only 'last'
    TWIN_PARTS = ("model.capsules", "model.mixture")

    def __init__(self, config: PoEConfig, info: DataInfo, device: torch.device,
                 dist: Distributed = SINGLE):
        super().__init__(config, info, device, dist)
        c, h, w = info.shape
        k = config.ae_kernel
        if min(h, w) - k + 1 < k:
            raise CapsgenError(f"poe: the {info.name} images ({h}x{w}) are too small for the autoencoder's two "
                               f"{k}x{k} convolutions (they need at least {2 * k - 1} pixels a side); use 28x28 "
                               f"or larger images, or smaller kernels (e.g. --set model.ae_kernel=3 for 8x8)")
        # Initial weights from the run seed (build_task seeds the global RNG), through one generator.
        g = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,), device="cpu")))
        self.model = PoEModel(config, info.shape, g).to(self.device)
        self.modules = {"model": self.model}
        self.optimizers = {"autoencoder": torch.optim.Adam(self.model.ae.parameters(), lr=config.ae_lr)}
        self.caps = None if config.twin else self.model.capsules
        self.twin = self.model.mixture if config.twin else None
        if self.caps is not None:
            self.w_opt, self.u_opt = self.caps.make_optimizers()
        self.em_sums: EMStatistics | None = None      # the twin's E-step sums since its last M-step
        self.em_seen = 0                               # batches in em_sums

    # ------------------------------------------------------------------------------ training
    def train_step(self, batch: Batch, ctx: StepContext) -> dict[str, float]:
        cfg, model = self.config, self.caps
        stage, _ = cfg.stage_of(ctx.step)
        x = batch.images
        if stage == "ae":
            seed = int(torch.randint(0, 2**62, (1,), generator=ctx.generator)) + self.dist.rank
            dropout = torch.Generator(device=self.device).manual_seed(seed)
            loss, figures = autoencoder_loss(self.model.ae, x, dropout, cfg.ae_loss)
            figures["ae_grad_norm"] = self.optimizer_step("autoencoder", loss)
        elif self.twin is not None:
            figures = self._twin_step(stage, x, ctx)
        elif stage == "stats":
            model.add_capsule_statistics(x, self.all_mean, self.all_max)
            figures = {"capsule_norm_mean": float(model.capsule_mean.norm(dim=-1).mean()),
                       "max_length": float(model.max_length)}
        elif stage == "w":
            figures = model.encoder_step(model.visible_capsules(x), self.w_opt, self.all_mean)
        else:
            caps = model.visible_capsules(x)
            code = model.encode(caps)
            figures = model.decoder_step(caps, self.u_opt, self.all_mean, code=code)
            model.add_sampling_domain(code, self.all_mean)
        self.model.stage_steps[STAGES.index(stage)] += 1
        figures["stage"] = float(STAGES.index(stage))
        return figures

    def _twin_step(self, stage: str, images: torch.Tensor, ctx: StepContext) -> dict[str, float]:
        """A stats or EM step of the twin: fold the batch into the feature statistics, or add its
        E-step sums (averaged over processes) and, every ``em_batches`` steps and at the run's last
        step, make the M-step. Figure em_loglik: mean log p(features) per dimension of the batch
        under the mixture before this step's update."""
        twin = self.twin
        if stage == "stats":
            return twin.add_feature_statistics(images, self.all_mean)
        x = twin.features(images)
        if not bool(twin.started):
            twin.start(x, ctx.generator, self.all_mean if self.dist.active else None, self.dist.rank == 0,
                       self.dist.world_size if self.dist.active else 1)
        stats = twin.statistics(x)
        batch_loglik = float(stats.loglik) / (len(x) * x.shape[1])
        self.all_mean(stats.tensors())
        self.em_sums = stats if self.em_sums is None else self.em_sums + stats
        self.em_seen += 1
        figures = {"em_loglik": batch_loglik}
        if self.em_seen >= self.config.em_batches or ctx.step == self.config.fixed_steps()[0] - 1:
            twin.update(self.em_sums)
            figures["em_sweep_loglik"] = float(self.em_sums.loglik / self.em_sums.count.sum()) / x.shape[1]
            self.em_sums, self.em_seen = None, 0
        return figures

    def all_max(self, tensors: list[torch.Tensor]) -> None:
        """Elementwise maximum over processes, in place: each process fills its own row of a
        [world, ...] buffer, all_mean sums the rows (x world / world), and every process takes
        the maximum of the same rows."""
        if not self.dist.active:
            return
        n = self.dist.world_size
        for t in tensors:
            rows = t.new_zeros((n, *t.shape))
            rows[self.dist.rank] = t * n
            self.all_mean([rows])
            t.copy_(rows.max(0).values)

    def check_figures(self, figures: dict[str, float]) -> str | None:
        limit = self.config.explode_limit
        for k in ("w_recon", "u_recon"):
            if limit and abs(figures.get(k, 0.0)) > limit:
                return (f"{k} = {figures[k]:.3g} exceeded the limit {limit:g} (model.explode_limit): "
                        f"the {'encoder' if k[0] == 'w' else 'decoder'} rule diverged")
        return None

    def extra_state(self) -> dict[str, torch.Tensor]:
        if self.twin is not None:
            out = {"em_seen": torch.tensor(self.em_seen, dtype=torch.long)}
            if self.em_sums is not None:
                out.update({f"em_{k}": t for k, t in zip(EM_STATE, self.em_sums.tensors())})
            return out
        out = {}
        for name, opt in (("w", self.w_opt), ("u", self.u_opt)):
            if opt.momentum_buffer is not None:     # None until the stage's first update
                out[f"{name}_momentum"] = opt.momentum_buffer
            out[f"{name}_updates"] = torch.tensor(opt.step_count, dtype=torch.long)
        return out

    def load_extra_state(self, tensors: dict[str, torch.Tensor]) -> None:
        if self.twin is not None:
            self.em_seen = int(tensors.get("em_seen", torch.tensor(0)))
            self.em_sums = (EMStatistics(*(tensors[f"em_{k}"].to(self.device) for k in EM_STATE))
                            if "em_count" in tensors else None)
            return
        for name, opt in (("w", self.w_opt), ("u", self.u_opt)):
            buf = tensors.get(f"{name}_momentum")
            opt.load_state_dict({"momentum_buffer": None if buf is None else buf.to(self.device),
                                 "step_count": int(tensors.get(f"{name}_updates", torch.tensor(0)))})

    def activation_bytes(self, batch_size: int) -> int:
        """The larger of the autoencoder stage (its forward) and the CD stages. Contrastive
        divergence never makes the [B, I, J, Dout] votes (capsgen.nn.contrastive): its largest
        tensors are [J, B, I, Din] — the coupled inputs of the data and of the reconstruction,
        the Gram products and one transient — so CD_COPIES of them."""
        ae = passes_bytes((self.model.ae, meta(batch_size, *self.info.shape)))
        if self.twin is not None:
            # the twin's E-step: the features' differences to every component's mean, [J, B, D],
            # and as many for its projections and distances
            J, D = self.twin.means.shape
            return max(ae, CD_COPIES * batch_size * J * D * FLOAT)
        I, J, _, din = self.caps.encoder_weight.shape
        return max(ae, CD_COPIES * batch_size * I * J * din * FLOAT)

    # ------------------------------------------------------------------------------ progress
    def steps_done(self) -> list[int]:
        """Steps done in each stage (ae, stats, w, u)."""
        return [int(v) for v in self.model.stage_steps.tolist()]

    def require_decoder(self) -> None:
        """One line saying where training stopped, when U (the twin: its mixture) is not trained yet."""
        if self.twin is not None:
            return self.twin.require_fitted()
        done = self.steps_done()
        if done[3] > 0:
            return
        total, _ = self.config.fixed_steps()
        stage, _ = self.config.stage_of(sum(done))
        start = total - self.config.u_steps
        raise CapsgenError(f"this poe run has no trained decoder yet: it stopped in stage '{stage}' after "
                           f"{sum(done)} of {total} steps (U trains in steps {start}..{total - 1}); finish it "
                           "with capsgen train --resume RUN_DIR")

    # ------------------------------------------------------------------------------ sampling
    def num_capsules(self) -> int:
        return self.config.code_capsules

    def _domain(self, domain: str | None) -> bool:
        domain = domain or self.config.sample_domain
        if domain not in DOMAINS:
            raise CapsgenError(f"unknown domain {domain!r}; choose one of: {', '.join(DOMAINS)}")
        return domain == "restricted"

    @torch.no_grad()
    def sample_capsules(self, n: int, capsule: int | None, domain: str | None,
                        generator: torch.Generator) -> torch.Tensor:
        """n images [n, C, H, W] in [0, 1] on the CPU: one capsule on (``capsule``, or uniform when
        None) with a 16-D Gaussian pose, squashed, the others zero; decoded through U and the
        autoencoder. ``domain`` "restricted" flips each pose into the half-sphere seen in training."""
        restricted = self._domain(domain)
        self.require_decoder()
        if n < 0:
            raise CapsgenError(f"the number of images must be >= 0, got {n}")
        model = self.twin if self.twin is not None else self.caps
        return model.sample(n, capsule, restricted, generator).float().cpu()

    @torch.no_grad()
    def capsule_poses(self, n: int, capsule: int, domain: str | None,
                      generator: torch.Generator) -> torch.Tensor:
        """The codes [n, J, D] :meth:`sample_capsules` decodes: capsule ``capsule`` holds squash(g)."""
        restricted = self._domain(domain)
        self.require_decoder()
        if n < 0:
            raise CapsgenError(f"the number of codes must be >= 0, got {n}")
        if self.twin is not None:              # component ``capsule``'s latent, as the twin samples it
            if not 0 <= capsule < self.config.code_capsules:
                raise CapsgenError(f"component index {capsule} is out of range: the twin has "
                                   f"{self.config.code_capsules} components (0..{self.config.code_capsules - 1})")
            g = self.twin.latents(torch.randn(n, self.config.code_dim, generator=generator), restricted)
            poses = torch.zeros(n, self.config.code_capsules, self.config.code_dim)
            poses[:, capsule] = g.float().cpu()
            return poses
        return self.caps.sample_codes(n, capsule, restricted, generator).float().cpu()

    def pose_layout(self) -> PoseLayout:
        """The J code capsules; their values are squashed, so each lies in (-1, 1). The twin's J
        components' latents are N(0, I): the sliders span +-3."""
        J = self.config.code_capsules
        if self.twin is not None:
            return PoseLayout(tuple(f"component {j}" for j in range(J)), self.config.code_dim, 3.0)
        return PoseLayout(tuple(f"capsule {j}" for j in range(J)), self.config.code_dim, 1.0)

    def decode_poses(self, poses: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        """Images through U and the autoencoder from the active capsule's code, the others zero
        (the twin: the active component's mean plus its loadings times the latent, no noise)."""
        self.pose_layout().check(poses, active)
        self.require_decoder()
        if self.twin is not None:
            k = active.float().argmax(dim=1)
            g = poses[torch.arange(len(poses)), k]
            return self.twin.decode_latents(g, k).float().cpu()
        return self.decode_codes(poses * active.unsqueeze(-1))

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """n images, each from a uniformly drawn capsule on ``model.sample_domain``."""
        return self.sample_capsules(n, None, None, generator)

    def _poses(self, g: torch.Tensor, capsules: torch.Tensor, restricted: bool) -> torch.Tensor:
        """Gaussian poses g [N, D] of capsules [N]; flipped into <g, m_j> >= 0 when restricted."""
        if not restricted:
            return g
        m = self.caps.directions.detach().float().cpu()[capsules]
        return torch.where((g * m).sum(-1, keepdim=True) < 0, -g, g)

    def _codes(self, poses: torch.Tensor, capsules: torch.Tensor) -> torch.Tensor:
        """Codes [N, J, D]: capsule capsules[n] holds squash(poses[n]), the others zero."""
        J = self.config.code_capsules
        code = torch.zeros(len(poses), J, poses.shape[-1])
        code[torch.arange(len(poses)), capsules] = squash(poses)
        return code

    @torch.no_grad()
    def decode_codes(self, code: torch.Tensor) -> torch.Tensor:
        """Codes [N, J, D] (CPU) -> images [N, C, H, W] in [0, 1] on the CPU."""
        dt = self.caps.directions.dtype
        return self.caps.images_from_codes(code.to(self.device, dt)).float().cpu()

    @torch.no_grad()
    def encode_capsules(self, images: torch.Tensor) -> torch.Tensor:
        """Code capsules [N, J, D] on the CPU: the AE encoder's primary capsules routed through W
        (the twin: the posterior latent E[z | x, j] of the most responsible component j in slot j,
        the other slots zero)."""
        self.require_decoder()
        if self.twin is not None:
            return self.twin.encode_latents(images.to(self.device)).float().cpu()
        model = self.caps
        return model.encode(model.visible_capsules(images.to(self.device, model.directions.dtype))).float().cpu()

    def decode_capsules(self, capsules: torch.Tensor) -> torch.Tensor:
        """Images from code capsules [N, J, D]: U, then the AE decoder (the twin: the slot with the
        longest latent, through its component's mean and loadings)."""
        self.require_decoder()
        if self.twin is not None:
            k = capsules.norm(dim=-1).argmax(dim=1)
            return self.twin.decode_latents(capsules[torch.arange(len(capsules)), k], k).float().cpu()
        return self.decode_codes(capsules)

    def capsule_grid(self, rows: int, domain: str, generator: torch.Generator,
                     negate: bool = False) -> torch.Tensor:
        """Hauser's figure 2: images [rows * J, C, H, W], row r column j = the r-th Gaussian pose
        of capsule j (the other capsules zero). ``negate`` decodes -g instead of g, full domain
        (the paper's test of its negatives); the same generator state gives the same g in every
        variant, so the full, restricted and negated grids show the same draws. The twin: column j is
        component j, from the same g (and then eps, negated with g)."""
        self.require_decoder()
        restricted = self._domain(domain)
        J, D = self.config.code_capsules, self.config.code_dim
        capsules = torch.arange(J).repeat(rows)
        g = torch.randn(rows * J, D, generator=generator)
        if self.twin is not None:
            eps = torch.randn(rows * J, self.twin.means.shape[1], generator=generator)
            sign = -1.0 if negate else 1.0
            return self.twin.images_of(sign * g, sign * eps, capsules, restricted and not negate).float().cpu()
        poses = -g if negate else self._poses(g, capsules, restricted)
        return self.decode_codes(self._codes(poses, capsules))

    def interpolate(self, rows: int, cols: int, generator: torch.Generator) -> torch.Tensor:
        """rows x cols images: row r walks a great circle between two Gaussian poses of capsule
        r mod J (on ``model.sample_domain``), the other capsules zero. The twin: the same great
        circles of latents in component r mod J, noise-free (clamped into the core when restricted)."""
        self.require_decoder()
        restricted = self._domain(None)
        J, D = self.config.code_capsules, self.config.code_dim
        capsules = torch.arange(rows) % J
        if self.twin is not None:
            ends = [torch.randn(rows, D, generator=generator) for _ in range(2)]
            path = slerp(ends[0], ends[1], torch.linspace(0, 1, cols)).reshape(rows * cols, D)
            return self.twin.images_of(path, torch.zeros(rows * cols, self.twin.means.shape[1]),
                                       capsules.repeat_interleave(cols), restricted).float().cpu()
        ends = [self._poses(torch.randn(rows, D, generator=generator), capsules, restricted) for _ in range(2)]
        path = slerp(ends[0], ends[1], torch.linspace(0, 1, cols)).reshape(rows * cols, D)
        return self.decode_codes(self._codes(path, capsules.repeat_interleave(cols)))

    # ------------------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, batch: Batch) -> dict[str, float]:
        """On the first ``eval_n`` test images, for every stage trained so far:

        - ae_mse: pixel MSE of the autoencoder alone;
        - mean_capsule_error: mean_b sum_i ||x_i - mean_i||^2 / I, predicting every primary capsule
          by its training mean (the baseline of the capsule errors below);
        - w_recon, w_pixel_mse: W's reverse route (Algorithm 1's reconstruction), as a capsule
          error and in pixels; code_length: the mean ||x_j|| = P(j on); code_resultant: per capsule
          the length of the mean unit code direction over the images, averaged over capsules
          (1 = every image gives the same direction: a collapsed code);
        - u_recon, pixel_mse: U's decoding of W's code as a capsule error, and the whole model
          (AE encoder, W, U, AE decoder) in pixels;
        - negative_full, negative_restricted: the share of ``eval_n`` samples whose background is
          brighter than the foreground (Hauser's negatives), on each domain with the same poses.

        The twin has no capsule errors (mean_capsule_error, w_*, code_*, u_recon); once its mixture
        is fitted: pixel_mse (AE encoder, the mixture's posterior projection, AE decoder),
        mixture_loglik (mean log p of the test features per dimension) and the two negative shares.
        """
        cfg, model = self.config, self.caps
        n = min(len(batch.images), cfg.eval_n)
        x = batch.images[:n].to(self.device)
        done = self.steps_done()
        out = {"n": n, "stage": float(max(i for i, d in enumerate(done) if d) if any(done) else 0),
               "ae_mse": float(F.mse_loss(self.model.ae(x), x))}
        if not done[1]:
            return out
        if self.twin is not None:
            if not self.decoder_ready():
                return out
            f = self.twin.features(x)
            out.update(pixel_mse=float(F.mse_loss(self.twin.reconstruct(x), x)),
                       mixture_loglik=float(self.twin.statistics(f).loglik) / f.numel())
            return self._negatives(out, n)
        raw = model.primary_capsules(x)
        out["mean_capsule_error"] = float(capsule_reconstruction_error(raw, model.capsule_mean.expand_as(raw)))
        caps = model.visible_capsules(x)
        m = mix_by_routing(caps, model.encoder_weight, cfg.routing_iterations)
        unit = m.x_out / safe_norm(m.x_out, keepdim=True)
        out.update(w_recon=float(capsule_reconstruction_error(caps, m.x_rec)),
                   w_pixel_mse=float(F.mse_loss(model.capsules_to_images(m.x_rec), x)),
                   code_length=float(safe_norm(m.x_out).mean()),
                   code_resultant=float(unit.mean(0).norm(dim=-1).mean()))
        if not done[3]:
            return out
        decoded = model.decode(m.x_out)
        out.update(u_recon=float(capsule_reconstruction_error(caps, decoded)),
                   pixel_mse=float(F.mse_loss(model.capsules_to_images(decoded), x)))
        return self._negatives(out, n)

    def decoder_ready(self) -> bool:
        """Whether samples can be drawn: U trained (the twin: its mixture fitted)."""
        return bool(self.twin.fitted) if self.twin is not None else self.steps_done()[3] > 0

    def _negatives(self, out: dict[str, float], n: int) -> dict[str, float]:
        cfg = self.config
        for domain in DOMAINS:
            g = torch.Generator().manual_seed(cfg.fixed_seed)   # the same poses on both domains
            out[f"negative_{domain}"] = negative_share(self.sample_capsules(n, None, domain, g))
        return out

    # ------------------------------------------------------------------------------ pictures
    @torch.no_grad()
    def reconstruction_rows(self, images: torch.Tensor) -> torch.Tensor:
        """Images [n, C, H, W] and their reconstructions stacked by rows on the CPU: the images, the
        autoencoder's, then (once the statistics exist) W's reverse route decoded to pixels, then
        (once U is trained) the whole model's (AE encoder, W, U, AE decoder). The twin: the images,
        the autoencoder's, and once fitted the mixture's (AE encoder, posterior projection, AE decoder)."""
        model, done = self.caps, self.steps_done()
        x = images.to(self.device)
        rows = [x, self.model.ae(x)]
        if self.twin is not None:
            if self.decoder_ready():
                rows.append(self.twin.reconstruct(x))
        elif done[1]:
            caps = model.visible_capsules(x)
            m = mix_by_routing(caps, model.encoder_weight, self.config.routing_iterations)
            rows.append(model.capsules_to_images(m.x_rec))
            if done[3]:
                rows.append(model.capsules_to_images(model.decode(m.x_out)))
        return torch.cat(rows).float().cpu()

    def write_figures(self, out_dir: Path, batch: Batch) -> list[Path]:
        """reconstructions.png (test images; the autoencoder's; W's reverse route's; the whole
        model's), and once U is trained capsule_grid_full.png, capsule_grid_restricted.png,
        capsule_grid_negated.png (4 rows x J capsules, the same poses; negated: -g on the full
        sphere), interpolation.png; poe_curves.png from the metrics."""
        from capsgen.train.rundir import RunDir

        out_dir = Path(out_dir)
        done = self.steps_done()
        paths = []
        with torch.no_grad():
            picks = list(range(min(10, len(batch.images))))
            if batch.labels is not None:   # one test image of each of the first classes, as far as there are
                firsts = [int((batch.labels == c).nonzero()[0]) for c in range(10) if (batch.labels == c).any()]
                picks = firsts or picks
            paths.append(save_image_grid(self.reconstruction_rows(batch.images[picks]),
                                         out_dir / "reconstructions.png", ncol=len(picks), scale=2))
            if self.decoder_ready():
                J = self.config.code_capsules
                for name, domain, negate in (("full", "full", False), ("restricted", "restricted", False),
                                             ("negated", "full", True)):
                    g = torch.Generator().manual_seed(self.config.fixed_seed + 2)
                    paths.append(save_image_grid(self.capsule_grid(GRID_ROWS, domain, g, negate),
                                                 out_dir / f"capsule_grid_{name}.png", ncol=J, scale=2))
                g = torch.Generator().manual_seed(self.config.fixed_seed + 3)
                paths.append(save_image_grid(self.interpolate(min(J, 10), 10, g), out_dir / "interpolation.png",
                                             ncol=10, scale=2))
        metrics = RunDir(out_dir.parent).read_metrics()
        keys = [(split, k) for split, k in (("train", "ae_loss"), ("train", "w_recon"), ("train", "u_recon"), ("train", "em_loglik"),
                                            ("test", "ae_mse"), ("test", "w_recon"), ("test", "pixel_mse"))
                if any(r.get("split") == split and k in r for r in metrics)]
        if keys:
            paths.append(plot_curves(metrics, keys, out_dir / "poe_curves.png", title="products of expert capsules"))
        return paths
