"""The CapsNet family's training step, evaluation and pictures."""
from __future__ import annotations

from pathlib import Path

import torch

from capsgen.data.batch import Batch
from capsgen.models.capsnet.config import CapsNetConfig
from capsgen.models.capsnet.nets import CapsNet, capsnet_loss
from capsgen.models.common import ClassCapsulePoses, random_shift, require_labels, set_step_lr
from capsgen.nn import safe_norm
from capsgen.report.figures import save_image_grid
from capsgen.train.capabilities import Classifying, RoutingMaps
from capsgen.train.distributed import SINGLE, Distributed
from capsgen.train.memory import meta, passes_bytes
from capsgen.train.task import DataInfo, StepContext, Task


class CapsNetTask(Task, Classifying, ClassCapsulePoses, RoutingMaps):
    best_metric, best_mode = "test_error", "min"
    TWIN_PARTS = ("model.primary", "model.classes", "model.score")   # see capsgen.models.capsnet.nets
    MEMORY_OPTIONS = ("--batch-size", "model.primary_capsules", "model.class_dim", "model.conv_channels")

    def __init__(self, config: CapsNetConfig, info: DataInfo, device: torch.device,
                 dist: Distributed = SINGLE):
        super().__init__(config, info, device, dist)
        k = require_labels(info, "capsnet")
        self.model = CapsNet(config, info.shape, k).to(self.device)
        self.modules = {"model": self.model}
        self.optimizers = {"model": torch.optim.Adam(self.model.parameters(), lr=config.lr)}

    def train_step(self, batch: Batch, ctx: StepContext) -> dict[str, float]:
        cfg = self.config
        set_step_lr(self.optimizers["model"], cfg.lr, cfg.lr_decay, ctx, cfg.lr_decay_steps)
        x = random_shift(batch.images, cfg.shift_pixels, ctx.generator, ctx)
        y = batch.labels
        loss, parts = capsnet_loss(self.model, x, y)
        self.optimizer_step("model", loss)
        acc = (parts["scores"].argmax(1) == y).float().mean()
        return {"loss": loss.item(), "margin": parts["margin"].item(),
                "recon_sse": parts["recon_sse"].item(), "accuracy": acc.item()}

    def disabled_capabilities(self) -> tuple[str, ...]:
        # the twin's dense layer has no coupling coefficients to map
        return ("routing-maps",) if self.config.twin else ()

    def activation_bytes(self, batch_size: int) -> int:
        # the decoder's activations (B x 2,320 floats) are ~1/300 of the votes': left out
        return passes_bytes((self.model, meta(batch_size, *self.info.shape)))

    def class_scores(self, images: torch.Tensor) -> torch.Tensor:
        """Class-capsule lengths (twin: its GroupScores) [B, K], differentiable w.r.t. the images."""
        return self.model.scores(self.model(images))

    def predict(self, images: torch.Tensor, batch: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
        """Class-capsule poses [N, K, D] and their scores [N, K] (lengths; twin: GroupScores) for
        images [N, C, H, W]."""
        poses, scores = [], []
        for k in range(0, len(images), batch):
            p = self.model(images[k:k + batch].to(self.device))
            poses.append(p.cpu())
            scores.append(self.model.scores(p).cpu())
        return torch.cat(poses), torch.cat(scores)

    # ------------------------------------------------------------------------------ explore
    @torch.no_grad()
    def encode_with_routing(self, images: torch.Tensor
                            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``encode_poses`` and the last routing iteration's c_ik [N, K, h, w], averaged over the
        primary capsule types, in one forward pass (two passes were 2x the cost of an encode)."""
        m = self.model
        grid = m.primary.forward_grid(torch.relu(m.conv(images.to(self.device))))   # [N, T, h, w, D0]
        n, types, h, w, d = grid.shape
        poses, c = m.classes(grid.reshape(n, -1, d), return_coupling=True)           # c [N, T*h*w, K]
        poses = poses.float().cpu()
        lengths = safe_norm(poses)
        active = torch.nn.functional.one_hot(lengths.argmax(1), lengths.shape[1]).bool()
        return poses, lengths, active, c.view(n, types, h, w, -1).mean(1).permute(0, 3, 1, 2).float().cpu()

    def evaluate(self, batch: Batch) -> dict[str, float]:
        images, labels = batch.images, batch.labels
        poses, scores = self.predict(images)
        pred = scores.argmax(1)
        out = {"test_error": (pred != labels).float().mean().item(), "n": len(labels)}
        recon = self.model.decode(poses[:500].to(self.device), pred[:500].to(self.device)).cpu()
        out["recon_sse"] = (recon - images[:500]).pow(2).flatten(1).sum(1).mean().item()
        return out

    def write_figures(self, out_dir: Path, batch: Batch) -> list[Path]:
        images, labels = batch.images, batch.labels
        out_dir = Path(out_dir)
        was_training = self.model.training
        self.model.eval()
        paths = []
        with torch.no_grad():
            # One example of each of the first classes, as in Sabour et al. figure 4.
            picks = []
            for c in range(min(self.info.num_classes, 10)):
                hits = (labels == c).nonzero()
                if len(hits):
                    picks.append(int(hits[0]))
            x = images[picks]
            poses, scores = self.predict(x)
            pred = scores.argmax(1)
            recon = self.model.decode(poses.to(self.device), pred.to(self.device)).cpu()
            paths.append(save_image_grid(torch.cat([x, recon]), out_dir / "reconstructions.png",
                                         ncol=len(x), scale=3))
            for n, k in enumerate(picks[:3]):
                paths.append(self.perturbation_figure(poses[n], int(pred[n]),
                                                      out_dir / f"perturbation_class{labels[k]}.png"))
        self.model.train(was_training)
        return paths

    def perturbation_figure(self, poses: torch.Tensor, cls: int, path: Path,
                            steps: int = 11, radius: float = 0.25) -> Path:
        """Tweak each dimension of the winning capsule over [-radius, radius] and decode.

        ``poses`` [K, D] for one image; writes a D x steps grid (row d = dimension d).
        """
        D = poses.shape[-1]
        deltas = torch.linspace(-radius, radius, steps)
        batch = poses.unsqueeze(0).repeat(D * steps, 1, 1)
        for d in range(D):
            batch[d * steps:(d + 1) * steps, cls, d] += deltas
        mask = torch.full((D * steps,), cls, dtype=torch.long)
        imgs = self.model.decode(batch.to(self.device), mask.to(self.device)).cpu()
        return save_image_grid(imgs, path, ncol=steps, scale=2)
