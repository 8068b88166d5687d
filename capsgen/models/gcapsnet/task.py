"""The G-CapsNet family's training step, evaluation, pictures and parameter counts (Chen et al.).

One step: images shifted by up to ``shift_pixels`` (drawn per global batch from the step's
generator), then :func:`~capsgen.models.gcapsnet.nets.classification_loss` — the margin loss on
the class-capsule lengths (+ ``recon_weight`` x summed squared reconstruction error with a
decoder) for the capsule networks, cross-entropy for the CNN baseline — and one Adam step at
``lr x lr_decay^epoch``.

The baseline's dropout draws from torch's global RNG (``nn.Dropout`` knows no other); each step
forks that RNG and seeds it from the step's generator, so its masks are a function of (run
seed, step) alone and a resumed run repeats them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from capsgen.data.batch import Batch
from capsgen.models.common import ClassCapsulePoses, random_shift, require_labels, set_step_lr, step_dropout_rng
from capsgen.models.gcapsnet.config import PAPER_PARAMETER_COUNTS, PAPER_SHAPES, GCapsNetConfig, rounds_to
from capsgen.models.gcapsnet.nets import build_gcapsnet, classification_loss, count_parameters
from capsgen.report.figures import save_image_grid
from capsgen.train.capabilities import Classifying
from capsgen.train.distributed import SINGLE, Distributed
from capsgen.train.memory import meta, passes_bytes
from capsgen.train.task import DataInfo, StepContext, Task

EVAL_BATCH = 500       # test images per forward pass
RECON_EVAL_N = 500     # test images whose reconstruction error evaluate() reports


class GCapsNetTask(Task, Classifying, ClassCapsulePoses):
    """A G-CapsNet (FC, conv, multi-layer) or its CNN baseline. Module and optimizer: ``model``.

    Only a capsule network with a decoder (``model.reconstruction``) decodes and encodes poses;
    the others disable both (``disabled_capabilities``). Trainable routing has no per-image
    coupling coefficients (they are weights), so there are no routing maps.
    """

    best_metric, best_mode = "test_error", "min"
    # where the twin differs (capsgen.models.gcapsnet.nets); multilayer has no "primary" module
    TWIN_PARTS = ("model.primary", "model.caps", "model.classes", "model.score")

    def __init__(self, config: GCapsNetConfig, info: DataInfo, device: torch.device,
                 dist: Distributed = SINGLE):
        super().__init__(config, info, device, dist)
        k = require_labels(info, "gcapsnet")
        self.model = build_gcapsnet(config, info.shape, k).to(self.device)
        self.modules = {"model": self.model}
        self.optimizers = {"model": torch.optim.Adam(self.model.parameters(), lr=config.lr)}

    # ------------------------------------------------------------------------------ training
    def train_step(self, batch: Batch, ctx: StepContext) -> dict[str, float]:
        cfg = self.config
        set_step_lr(self.optimizers["model"], cfg.lr, cfg.lr_decay, ctx)
        x = random_shift(batch.images, cfg.shift_pixels, ctx.generator, ctx)
        y = batch.labels
        with step_dropout_rng(ctx.generator, self.device, self.dist.rank):
            loss, parts = classification_loss(self.model, x, y, cfg)
            self.optimizer_step("model", loss)
        figures = {"loss": loss.item(),
                   "accuracy": (parts["scores"].argmax(1) == y).float().mean().item()}
        for name in ("margin", "recon_sse", "cross_entropy"):
            if name in parts:
                figures[name] = parts[name].item()
        return figures

    def activation_bytes(self, batch_size: int) -> int:
        return passes_bytes((self.model, meta(batch_size, *self.info.shape)))

    # ------------------------------------------------------------------------------ using a run
    def class_scores(self, images: torch.Tensor) -> torch.Tensor:
        """Capsule lengths (capsule networks; twin: GroupScores) or logits (baseline), [B, K]; differentiable."""
        return self.model.class_scores(images)

    def predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(outputs, scores) on the CPU for images [N, C, H, W]: outputs are the class-capsule
        poses [N, K, D] (capsule networks) or the logits [N, K] (baseline); scores [N, K]."""
        outs, scores = [], []
        for k in range(0, len(images), EVAL_BATCH):
            out = self.model(images[k:k + EVAL_BATCH].to(self.device))
            outs.append(out.float().cpu())
            scores.append((out if self.model.score_kind == "logit" else self.model.scores(out)).float().cpu())
        return torch.cat(outs), torch.cat(scores)

    def disabled_capabilities(self) -> tuple[str, ...]:
        return () if self.model.has_decoder else ("decode-poses", "encode-poses")

    def error_on(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        """Classification error on images [N, C, H, W] in [0, 1] with labels [N] (no state change)."""
        with torch.no_grad():
            _, scores = self.predict(images)
        return (scores.argmax(1) != labels).float().mean().item()

    def evaluate(self, batch: Batch) -> dict[str, float]:
        images, labels = batch.images, batch.labels
        outs, scores = self.predict(images)
        pred = scores.argmax(1)
        figures: dict[str, float] = {"test_error": (pred != labels).float().mean().item(), "n": len(labels)}
        if self.model.has_decoder:
            # the predicted class's capsule, as at test time in Sabour et al.
            n = min(len(images), RECON_EVAL_N)
            recon = self.model.decode(outs[:n].to(self.device), pred[:n].to(self.device)).float().cpu()
            figures["recon_sse"] = (recon - images[:n]).pow(2).flatten(1).sum(1).mean().item()
        return figures

    def write_figures(self, out_dir: Path, batch: Batch) -> list[Path]:
        """reconstructions.png (networks with a decoder): one test image of each of the first ten
        classes above its reconstruction from the predicted class's capsule."""
        if not self.model.has_decoder or batch.labels is None:
            return []
        picks = []
        for c in range(min(self.info.num_classes or 0, 10)):
            hits = (batch.labels == c).nonzero()
            if len(hits):
                picks.append(int(hits[0]))
        if not picks:
            return []
        x = batch.images[picks]
        was_training = self.model.training
        self.model.eval()
        with torch.no_grad():
            poses, scores = self.predict(x)
            recon = self.model.decode(poses.to(self.device), scores.argmax(1).to(self.device)).float().cpu()
        self.model.train(was_training)
        return [save_image_grid(torch.cat([x, recon]), Path(out_dir) / "reconstructions.png", ncol=len(x), scale=3)]

    def describe(self) -> dict[str, Any]:
        """This network's parameter count beside the one Chen et al. print for its preset (when the
        run is a paper preset on the paper's image shape and not the twin, whose count the paper
        does not give; otherwise ``paper`` is None)."""
        cfg = self.config
        ours = count_parameters(self.model)
        entry = next((e for e in PAPER_PARAMETER_COUNTS if e.preset == cfg.preset and e.part == "total"), None)
        same_shape = entry is not None and tuple(self.info.shape) == PAPER_SHAPES[cfg.preset] and not cfg.twin
        return {"arch": cfg.arch, "preset": cfg.preset or None, "twin": cfg.twin,
                "reconstruction": bool(self.model.has_decoder),
                "params": ours, "paper": entry.paper if same_shape else None,
                "matches_paper": rounds_to(ours, entry.paper) if same_shape else None,
                "note": entry.note if same_shape else ""}
