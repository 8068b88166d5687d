"""The example family's Task: step, evaluation, capability and extra state."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from capsgen.data.batch import Batch
from capsgen.models.common import classification_figures, require_labels
from capsgen.train.capabilities import Classifying
from capsgen.train.distributed import SINGLE, Distributed
from capsgen.train.task import DataInfo, StepContext, Task


class ExampleTask(Task, Classifying):
    def __init__(self, config, info: DataInfo, device: torch.device, dist: Distributed = SINGLE):
        super().__init__(config, info, device, dist)
        k = require_labels(info, "example")
        c, h, w = info.shape
        self.model = torch.nn.Linear(c * h * w, k).to(self.device)
        self.modules = {"model": self.model}
        self.optimizers = {"model": torch.optim.SGD(self.model.parameters(), config.lr, config.momentum)}
        self.class_means = torch.zeros(k, c * h * w, device=self.device)   # extra state

    def train_step(self, batch: Batch, ctx: StepContext) -> dict[str, float]:
        x = batch.images.flatten(1)
        # a random pixel dropout drawn from the step's generator (per global batch)
        keep = (torch.rand(ctx.global_batch or len(x), x.shape[1], generator=ctx.generator) > 0.1)[ctx.rank_slice]
        logits = self.model(x * keep.to(x.device))
        loss = F.cross_entropy(logits, batch.labels)
        self.optimizer_step("model", loss)
        d = self.config.mean_decay
        onehot = F.one_hot(batch.labels, self.class_means.shape[0]).float()
        sums = onehot.T @ x
        counts = onehot.sum(0)[:, None]
        self.all_mean([sums, counts])
        self.class_means = torch.where(counts > 0, d * self.class_means + (1 - d) * sums / counts.clamp_min(1),
                                       self.class_means)
        return {"loss": loss.item()}

    def class_scores(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images.flatten(1))

    def evaluate(self, batch: Batch) -> dict[str, float]:
        return classification_figures(self.class_scores(batch.images.to(self.device)).cpu(), batch.labels)

    def extra_state(self) -> dict[str, torch.Tensor]:
        return {"class_means": self.class_means}

    def load_extra_state(self, tensors: dict[str, torch.Tensor]) -> None:
        self.class_means = tensors["class_means"].to(self.device)
