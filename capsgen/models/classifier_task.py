"""The classifier family's training step and evaluation (see :mod:`capsgen.models.classifier`)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from capsgen.models.classifier import Classifier, ClassifierConfig, augment
from capsgen.train.task import DataInfo, StepContext, Task


class ClassifierTask(Task):
    best_metric, best_mode = "test_error", "min"

    def __init__(self, config: ClassifierConfig, info: DataInfo, device: torch.device):
        super().__init__(config, info, device)
        if not info.num_classes:
            raise ValueError(f"classifier needs class labels; dataset {info.name} has none")
        self.model = Classifier(config, info.shape, info.num_classes).to(device)
        self.modules = {"model": self.model}
        self.optimizers = {"model": torch.optim.AdamW(self.model.parameters(), lr=config.lr,
                                                      weight_decay=config.weight_decay)}

    def train_step(self, images, labels, ctx: StepContext) -> dict[str, float]:
        cfg = self.config
        opt = self.optimizers["model"]
        # The learning rate is a function of the step, so resuming needs no scheduler state.
        for group in opt.param_groups:
            group["lr"] = cfg.lr * cfg.lr_decay ** (ctx.step // ctx.steps_per_epoch)
        x = augment(images, cfg, ctx.generator).to(self.device)
        y = labels.to(self.device)
        opt.zero_grad(set_to_none=True)
        logits = self.model(x)
        loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
        loss.backward()
        opt.step()
        return {"loss": loss.item(), "accuracy": (logits.argmax(1) == y).float().mean().item()}

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

    def evaluate(self, images, labels) -> dict[str, float]:
        _, probs = self.features_and_probs(images)
        nll = F.nll_loss(probs.clamp_min(1e-12).log(), labels).item()
        return {"test_error": (probs.argmax(1) != labels).float().mean().item(), "test_nll": nll,
                "n": len(labels)}
