"""Training-step throughput of capsgen's CapsNet versus its two conv layers alone.

Both are measured in this one run, same batch, same threads, same optimiser (Adam), so the
ratio is meaningful even on a noisy machine. Everything in the CapsNet that is not those two
convolutions (capsule votes, routing, squash, decoder, margin loss) is overhead; the ratio
says how much of the conv-only speed survives it.

    python benchmarks/capsnet_step.py [--batch 100] [--steps 10] [--shape 1,28,28]

Last line: capsnet_vs_conv_ratio=R
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from capsgen.models.capsnet.config import CapsNetConfig
from capsgen.models.capsnet.nets import CapsNet, capsnet_loss


class ConvOnly(nn.Module):
    """The CapsNet's conv 256 9x9 + ReLU and primary-capsule conv 256 9x9/2, nothing else."""

    def __init__(self, model: CapsNet):
        super().__init__()
        self.conv = nn.Conv2d(model.conv.in_channels, model.conv.out_channels, model.conv.kernel_size)
        p = model.primary.conv
        self.conv2 = nn.Conv2d(p.in_channels, p.out_channels, p.kernel_size, p.stride)

    def forward(self, x):
        return self.conv2(F.relu(self.conv(x)))


def images_per_second(step, batch: int, steps: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * steps / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--shape", default="1,28,28")
    ap.add_argument("--rounds", type=int, default=3, help="alternate the two measurements this many times")
    args = ap.parse_args()
    shape = tuple(int(s) for s in args.shape.split(","))
    torch.manual_seed(0)
    x = torch.rand(args.batch, *shape)
    y = torch.randint(0, 10, (args.batch,))
    caps = CapsNet(CapsNetConfig(), shape, 10)
    conv = ConvOnly(caps)
    opt_caps = torch.optim.Adam(caps.parameters(), 1e-3)
    opt_conv = torch.optim.Adam(conv.parameters(), 1e-3)

    def caps_step():
        opt_caps.zero_grad(set_to_none=True)
        loss, _ = capsnet_loss(caps, x, y)
        loss.backward()
        opt_caps.step()

    def conv_step():
        opt_conv.zero_grad(set_to_none=True)
        conv(x).pow(2).mean().backward()
        opt_conv.step()

    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, batch {args.batch}, shape {shape}")
    best_caps = best_conv = 0.0
    for r in range(args.rounds):  # alternate so drifts in machine load hit both equally
        c = images_per_second(caps_step, args.batch, args.steps)
        v = images_per_second(conv_step, args.batch, args.steps)
        best_caps, best_conv = max(best_caps, c), max(best_conv, v)
        print(f"round {r}: capsnet {c:.1f} img/s, conv-only {v:.1f} img/s, ratio {c / v:.3f}")
    print(f"capsnet_images_per_s={best_caps:.1f}")
    print(f"conv_only_images_per_s={best_conv:.1f}")
    print(f"capsnet_vs_conv_ratio={best_caps / best_conv:.3f}")


if __name__ == "__main__":
    main()
