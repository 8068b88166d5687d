"""Training-step throughput of capsgen's CapsuleGAN versus DCGAN, and of its capsule discriminator
versus that discriminator's conv layers alone.

Everything is measured in this one run, on the same synthetic batch, with the same threads and
optimiser (Adam), and the timed repeats of each compared pair are interleaved (A B A B …) and
summarised by their medians, so drifts in machine load hit both sides equally:

(a) a CapsuleGAN iteration: ``GANTask.train_step`` with the default ``capsulegan`` config
    (joint schedule: one discriminator update on B real + B fake, one generator update on B fakes);
(b) a DCGAN iteration: the same, with the default ``dcgan`` config (the same generator settings);
(c) the capsule discriminator's own step (forward + backward + Adam on a real and a fake batch)
    versus a network of only its conv layers (conv + activation + primary-capsule conv, then
    spatial mean -> linear), trained the same way. Everything in the capsule discriminator that
    is not those two convolutions (squash, capsule votes, routing, lengths, loss) is overhead;
    the ratio says how much of the conv-only speed survives it.

    python benchmarks/gan_step.py [--batch 64] [--warmup 3] [--repeats 30] [--threads N]
                                  [--preset NAME] [--set model.KEY=VALUE ...]

``--preset`` / ``--set`` change the CapsuleGAN side only (e.g. a capsule preset against the
default DCGAN); settings of a train section or of the generator are refused, so the generators
compared stay the same.

Ratios are of images per second (higher = the first one is faster): capsulegan_vs_dcgan_ratio is
CapsuleGAN / DCGAN iterations, capsule_d_vs_conv_ratio capsule discriminator / conv-only steps.
A GAN iteration's images/s counts its B real images; a discriminator step's counts real + fake.

Last line: capsule_d_vs_conv_ratio=R
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from capsgen.config import apply_overrides
from capsgen.models.gan.nets import CapsuleDiscriminator
from capsgen.runs import preset_pairs
from capsgen.models.gan.config import CapsuleGANConfig, DCGANConfig
from capsgen.models.gan.task import GANTask, build_discriminator
from capsgen.data.batch import Batch
from capsgen.train.task import DataInfo, StepContext

GENERATOR_FIELDS = ("latent_dim", "generator", "g_width", "g_norm", "g_channels")
# Adam's settings do not change a step's cost; the DCGAN takes the capsule side's, so a preset with its
# own rates (trunk-hinge: 4e-4) is compared with the same generator trained the same way.
OPTIMISER_FIELDS = ("lr", "lr_d", "beta1", "beta2")


class ConvOnly(nn.Module):
    """The capsule discriminator's conv + activation (or its DCGAN trunk) and primary-capsule conv,
    then mean -> linear."""

    def __init__(self, d: CapsuleDiscriminator):
        super().__init__()
        p = d.primary.conv
        if hasattr(d, "trunk"):            # TrunkCapsuleDiscriminator: a fresh copy of its conv body
            self.conv, self.act = copy.deepcopy(d.trunk), nn.Identity()
        else:
            c = d.conv
            self.conv = nn.Conv2d(c.in_channels, c.out_channels, c.kernel_size, c.stride)
            self.act = type(d.act)(*([c.out_channels] if isinstance(d.act, nn.PReLU) else []))
        self.conv2 = nn.Conv2d(p.in_channels, p.out_channels, p.kernel_size, p.stride, p.padding)
        self.head = nn.Linear(p.out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv2(self.act(self.conv(x))).mean(dim=(2, 3)))


def interleaved(variants: dict[str, Callable[[], None]], warmup: int, repeats: int,
                clock: Callable[[], float] = time.perf_counter) -> dict[str, float]:
    """Median seconds per call of each variant, timed A B A B … after ``warmup`` untimed rounds;
    ``clock`` = time.thread_time counts this thread's CPU seconds (one-thread runs on a busy machine)."""
    for _ in range(warmup):
        for fn in variants.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            t0 = clock()
            fn()
            times[name].append(clock() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def gan_step(task: GANTask, images: torch.Tensor) -> Callable[[], None]:
    """One ``train_step`` per call, with the loop's per-step seeded generator."""
    counter = [0]

    def step() -> None:
        s = counter[0]
        counter[0] += 1
        task.train_step(Batch(images), StepContext(s, 0.0, 1, torch.Generator().manual_seed(s)))

    return step


def d_step(net: nn.Module, opt: torch.optim.Optimizer, loss_fn, real: torch.Tensor,
           fake: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn(net(real), net(fake)).backward()
        opt.step()

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--warmup", type=int, default=3, help="untimed rounds before timing")
    ap.add_argument("--repeats", type=int, default=30, help="timed rounds; medians are reported")
    ap.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--shape", default="1,28,28")
    ap.add_argument("--preset", help="a capsulegan preset (capsgen models)")
    ap.add_argument("--set", action="append", default=[], metavar="model.KEY=VALUE",
                    help="a capsulegan model field, applied after --preset (repeatable)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    shape = tuple(int(s) for s in args.shape.split(","))
    B = args.batch
    torch.manual_seed(0)
    images = torch.rand(B, *shape)            # synthetic "data" in [0, 1], as the loop hands it over
    info = DataInfo("synthetic", shape, 10, None, 100 * B)

    caps_cfg, dc_cfg = CapsuleGANConfig(), DCGANConfig()
    pairs = [p for p in [*preset_pairs("capsulegan", args.preset), *args.set] if not p.startswith("train.")]
    apply_overrides({"model": caps_cfg}, pairs)
    caps_cfg.validate()
    for f in OPTIMISER_FIELDS:
        setattr(dc_cfg, f, getattr(caps_cfg, f))
    diff = {f: (getattr(caps_cfg, f), getattr(dc_cfg, f)) for f in GENERATOR_FIELDS
            if getattr(caps_cfg, f) != getattr(dc_cfg, f)}
    if diff:
        raise SystemExit(f"the two families' default generators differ: {diff}")
    tasks: dict[str, GANTask] = {}
    for name, cfg in (("capsulegan", caps_cfg), ("dcgan", dc_cfg)):
        torch.manual_seed(0)
        tasks[name] = GANTask(cfg, info, torch.device("cpu"))
        tasks[name].train_mode(True)
    caps = tasks["capsulegan"]
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, batch {B}, shape {shape}, "
          f"warmup {args.warmup}, repeats {args.repeats} (medians, interleaved)")
    body = (f"DCGAN trunk from {caps_cfg.d_width} channels" if caps_cfg.discriminator.startswith("trunk")
            else f"conv {caps_cfg.d_conv_channels}x{caps_cfg.d_conv_kernel}")
    print(f"capsulegan D: {caps_cfg.discriminator}, {caps_cfg.objective}, {body}, primary "
          f"{caps_cfg.d_primary_caps}x{caps_cfg.d_primary_dim}-D kernel {caps_cfg.d_primary_kernel} "
          f"({caps.D.num_primary} capsules); G: {caps_cfg.generator} width {caps_cfg.g_width}"
          + (f"; settings: {' '.join(pairs)}" if pairs else ""))

    # (a) + (b): full GAN iterations.
    gan = interleaved({n: gan_step(t, images) for n, t in tasks.items()}, args.warmup, args.repeats)
    for n, sec in gan.items():
        print(f"{n}_iter_ms={1000 * sec:.1f} {n}_images_per_s={B / sec:.1f}")
    print(f"capsulegan_vs_dcgan_ratio={gan['dcgan'] / gan['capsulegan']:.3f}")

    # (c): the capsule discriminator's step alone vs its conv layers alone.
    with torch.no_grad():
        fake = caps.G(torch.randn(B, caps_cfg.latent_dim, generator=torch.Generator().manual_seed(1)))
    real = images * 2 - 1
    torch.manual_seed(0)
    D2 = build_discriminator(caps_cfg, shape)   # a fresh one: the GAN iterations moved D's weights
    conv = ConvOnly(D2)
    lr, betas = caps_cfg.lr_d or caps_cfg.lr, (caps_cfg.beta1, caps_cfg.beta2)

    def caps_loss(out_r, out_f):
        return caps.d_loss(caps.view(out_r, D2.kind), caps.view(out_f, D2.kind))

    def conv_loss(out_r, out_f):
        return (F.binary_cross_entropy_with_logits(out_r, torch.ones_like(out_r))
                + F.binary_cross_entropy_with_logits(out_f, torch.zeros_like(out_f)))

    dsteps = interleaved({
        "capsule_d": d_step(D2, torch.optim.Adam(D2.parameters(), lr, betas), caps_loss, real, fake),
        "conv_only": d_step(conv, torch.optim.Adam(conv.parameters(), lr, betas), conv_loss, real, fake),
    }, args.warmup, args.repeats)
    for n, sec in dsteps.items():   # images per second count the real and the fake batch
        print(f"{n}_step_ms={1000 * sec:.1f} {n}_images_per_s={2 * B / sec:.1f}")
    print(f"capsule_d_vs_conv_ratio={dsteps['conv_only'] / dsteps['capsule_d']:.3f}")


if __name__ == "__main__":
    main()
