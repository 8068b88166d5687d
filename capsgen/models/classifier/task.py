"""The classifier family's training step and evaluation (see :mod:`capsgen.models.classifier.nets`)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from capsgen.data.batch import Batch
from capsgen.models.classifier.config import ClassifierConfig
from capsgen.models.classifier.nets import Classifier
from capsgen.models.common import random_hflip, random_shift, require_labels, set_step_lr
from capsgen.train.capabilities import Classifying
from capsgen.train.distributed import SINGLE, Distributed
from capsgen.train.memory import meta, passes_bytes
from capsgen.train.task import DataInfo, StepContext, Task


class ClassifierTask(Task, Classifying):
    best_metric, best_mode = "test_error", "min"

    def __init__(self, config: ClassifierConfig, info: DataInfo, device: torch.device,
                 dist: Distributed = SINGLE):
        super().__init__(config, info, device, dist)
        k = require_labels(info, "classifier")
        self.model = Classifier(config, info.shape, k).to(self.device)
        self.modules = {"model": self.model}
        self.optimizers = {"model": torch.optim.AdamW(self.model.parameters(), lr=config.lr,
                                                      weight_decay=config.weight_decay)}

    def train_step(self, batch: Batch, ctx: StepContext) -> dict[str, float]:
        cfg = self.config
        set_step_lr(self.optimizers["model"], cfg.lr, cfg.lr_decay, ctx)
        x = random_shift(batch.images, cfg.shift_pixels, ctx.generator, ctx)
        if cfg.hflip:
            x = random_hflip(x, ctx.generator, ctx)
        logits = self.model(x)
        loss = F.cross_entropy(logits, batch.labels, label_smoothing=cfg.label_smoothing)
        self.optimizer_step("model", loss)
        return {"loss": loss.item(), "accuracy": (logits.argmax(1) == batch.labels).float().mean().item()}

    def activation_bytes(self, batch_size: int) -> int:
        return passes_bytes((self.model, meta(batch_size, *self.info.shape)))

    def class_scores(self, images: torch.Tensor) -> torch.Tensor:
        """Logits [B, K] (differentiable w.r.t. the images)."""
        return self.model(images)

    @torch.no_grad()
    def features_and_probs(self, images: torch.Tensor, batch: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
        """Penultimate features [N, F] and p(y|x) [N, K] of images [N, C, H, W] in [0, 1] (eval mode)."""
        was = self.model.training
        self.model.eval()
        try:
            parts = [self.model.features_and_probs(images[k:k + batch].to(self.device))
                     for k in range(0, len(images), batch)]
        finally:
            self.model.train(was)
        return torch.cat([f for f, _ in parts]).cpu(), torch.cat([p for _, p in parts]).cpu()

    def evaluate(self, batch: Batch) -> dict[str, float]:
        _, probs = self.features_and_probs(batch.images)
        nll = F.nll_loss(probs.clamp_min(1e-12).log(), batch.labels).item()
        return {"test_error": (probs.argmax(1) != batch.labels).float().mean().item(), "test_nll": nll,
                "n": len(batch.labels)}
