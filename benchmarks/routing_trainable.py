"""Trainable routing (Chen et al., G-CapsNets) versus dynamic routing at equal shapes.

(a) Speed: a capsule layer [B, I, Din] -> [B, J, Dout] (default Sabour's 1152 x 8-D -> 10 x 16-D,
    batch 100), forward + backward with respect to the input and the parameters, for
    - ``dynamic``: capsgen.nn.DenseCapsules, 3 iterations (dot agreement, softmax over parents);
    - ``trainable``: capsgen.nn.TrainableDenseCapsules (c_ij folded into W_ij, one matmul);
    - ``trainable-votes``: the same maths on explicit votes (capsule_votes + trainable_routing),
      to show what the folding saves.
    All three use the exp-squash, in one run, timed A B C A B C ... and summarised by medians.
    Last line: trainable_vs_dynamic_ratio=R (dynamic seconds / trainable seconds, > 1 = faster).

(b) ``--init-study ARCH``: which initial coupling coefficients train best. A small G-CapsNet of
    architecture ARCH (fc, conv or multilayer; conv 64 and 8 primary types for fc / conv) is
    trained on mnist-5k (4,500 training digits) for ``--steps`` Adam steps per coupling init and
    seed, and its error on the 500 test digits printed.

    OMP_NUM_THREADS=1 python benchmarks/routing_trainable.py [--batch 100] [--repeats 20]
    OMP_NUM_THREADS=1 python benchmarks/routing_trainable.py --init-study fc [--steps 300]
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch

from capsgen.nn import DenseCapsules, capsule_votes, squash_exp
from capsgen.nn.trainable_routing import COUPLING_INITS, TrainableDenseCapsules, trainable_routing


def interleaved(variants: dict[str, Callable[[], None]], warmup: int, repeats: int) -> dict[str, float]:
    """Median seconds per call of each variant, timed A B C A B C ... after ``warmup`` rounds."""
    for _ in range(warmup):
        for fn in variants.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def speed(args: argparse.Namespace) -> None:
    I, Din, J, Dout = args.shape
    torch.manual_seed(0)
    u = torch.rand(args.batch, I, Din).mul_(0.5).requires_grad_()
    g = torch.randn(args.batch, J, Dout)
    dyn = DenseCapsules(I, Din, J, Dout, routing_iterations=3, squash="exp")
    tr = TrainableDenseCapsules(I, Din, J, Dout, squash="exp")
    with torch.no_grad():
        tr.weight.copy_(dyn.weight)

    def step(forward):
        def run():
            u.grad = None
            for p in (*dyn.parameters(), *tr.parameters()):
                p.grad = None
            (forward() * g).sum().backward()
        return run

    variants = {
        "dynamic": step(lambda: dyn(u)),
        "trainable": step(lambda: tr(u)),
        "trainable-votes": step(lambda: trainable_routing(capsule_votes(u, tr.weight), tr.coupling, squash_exp)),
    }
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, batch {args.batch}, "
          f"{I} x {Din}-D -> {J} x {Dout}-D, forward + backward, median of {args.repeats}")
    sec = interleaved(variants, args.warmup, args.repeats)
    for name, s in sec.items():
        print(f"{name:<16} {1000 * s:8.2f} ms  {args.batch / s:9.0f} samples/s")
    print(f"trainable_votes_vs_dynamic_ratio={sec['dynamic'] / sec['trainable-votes']:.2f}")
    print(f"trainable_vs_dynamic_ratio={sec['dynamic'] / sec['trainable']:.2f}")


def init_study(args: argparse.Namespace) -> None:
    from capsgen.data import load_split
    from capsgen.models.gcapsnet.config import GCapsNetConfig
    from capsgen.models.gcapsnet.nets import build_gcapsnet, classification_loss

    x, y = load_split("mnist-5k", "train").to_tensors()
    xt, yt = load_split("mnist-5k", "test").to_tensors()
    small = {"fc": dict(conv_channels=64, primary_caps=8),
             "conv": dict(conv_channels=64, primary_caps=8, caps_matrix=4),
             "multilayer": dict(caps_relu=True)}[args.init_study]
    print(f"init study: {args.init_study} G-CapsNet {small}, mnist-5k {len(x)} train / {len(xt)} test, "
          f"{args.steps} Adam steps (lr 1e-3), batch {args.study_batch}, threads {torch.get_num_threads()}")
    for how in COUPLING_INITS:
        errors, losses = [], []
        for seed in range(args.seeds):
            torch.manual_seed(seed)
            cfg = GCapsNetConfig(arch=args.init_study, coupling_init=how, **small)
            model = build_gcapsnet(cfg, tuple(x.shape[1:]), 10)
            opt = torch.optim.Adam(model.parameters(), cfg.lr)
            gen = torch.Generator().manual_seed(seed)
            t0 = time.perf_counter()
            for _ in range(args.steps):
                idx = torch.randint(0, len(x), (args.study_batch,), generator=gen)
                loss, _ = classification_loss(model, x[idx], y[idx], cfg)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            with torch.no_grad():
                model.eval()
                pred = torch.cat([model.class_scores(xt[i:i + 250]).argmax(1) for i in range(0, len(xt), 250)])
            errors.append(100.0 * (pred != yt).float().mean().item())
            losses.append(loss.item())
            print(f"  coupling_init={how:<9} seed {seed}: test error {errors[-1]:5.1f} %, last loss "
                  f"{losses[-1]:.4f}, {time.perf_counter() - t0:.0f} s")
        print(f"coupling_init={how}: mean test error {statistics.mean(errors):.1f} %")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--shape", type=lambda s: tuple(int(v) for v in s.split(",")), default=(1152, 8, 10, 16),
                    help="I,Din,J,Dout")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--init-study", choices=("fc", "conv", "multilayer"))
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--study-batch", type=int, default=32)
    args = ap.parse_args()
    if args.init_study:
        init_study(args)
    else:
        speed(args)


if __name__ == "__main__":
    main()
