"""Throughput of one contrastive-divergence step of Hauser's capsule encoder, and routing's share.

The paper's shapes: 576 primary capsules of 8-D -> 20 code capsules of 16-D, 3 routing
iterations, a batch of squashed random capsules. One CD step = routing by agreement (votes
for all (i, j) pairs, 3 iterations of cosine agreement with softmax over the inputs) + the
forward / reverse / forward-again routes with that coupling + dW (eq. 18) + the SGD update.
Both parts are timed inside the same steps, so the share is measured in one run. The same run
also times capsgen's generic routing (votes [B, I, J, Dout] + dynamic_routing, cosine, softmax
over the inputs) on the same inputs, interleaved with the steps: the routing the CD rule would
use without its votes-free coupling.

    OMP_NUM_THREADS=1 python benchmarks/poe_cd.py [--batch 64] [--steps 20]

Last line: cd_steps_per_s=S routing_share=R
"""
from __future__ import annotations

import argparse
import time

import torch

from capsgen.nn import capsule_votes, dynamic_routing, squash
from capsgen.nn.contrastive import CDOptimizer, encoder_cd_delta, init_capsule_weight, routing_coupling


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--inputs", type=int, default=576)
    ap.add_argument("--in-dim", type=int, default=8)
    ap.add_argument("--outputs", type=int, default=20)
    ap.add_argument("--out-dim", type=int, default=16)
    ap.add_argument("--iterations", type=int, default=3)
    args = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    x = squash(torch.randn(args.batch, args.inputs, args.in_dim, generator=g))
    W = init_capsule_weight(args.inputs, args.outputs, args.out_dim, args.in_dim, 0.01, g)
    opt = CDOptimizer(lr=1.0, momentum=0.9)

    def step() -> tuple[float, float]:
        t0 = time.perf_counter()
        c = routing_coupling(x, W, args.iterations)
        t1 = time.perf_counter()
        delta, _ = encoder_cd_delta(x, W, args.iterations, c=c)
        opt.step(W, delta)
        return t1 - t0, time.perf_counter() - t0

    def generic() -> float:
        t0 = time.perf_counter()
        with torch.no_grad():
            dynamic_routing(capsule_votes(x, W), args.iterations, "cosine", grad_through_iterations=False,
                            normalize="children", return_coupling=True)
        return time.perf_counter() - t0

    for _ in range(2):  # warm-up
        step()
        generic()
    routing = total = generic_total = 0.0
    for _ in range(args.steps):
        r, t = step()
        routing += r
        total += t
        generic_total += generic()
    print(f"threads={torch.get_num_threads()} batch={args.batch} shapes={args.inputs}x{args.in_dim}"
          f"->{args.outputs}x{args.out_dim} iterations={args.iterations} steps={args.steps}")
    print(f"step {1e3 * total / args.steps:.1f} ms (routing {1e3 * routing / args.steps:.1f} ms, "
          f"the rest {1e3 * (total - routing) / args.steps:.1f} ms); {args.batch * args.steps / total:.1f} capsule sets/s")
    print(f"generic votes + dynamic_routing coupling: {1e3 * generic_total / args.steps:.1f} ms "
          f"({generic_total / routing:.2f}x the votes-free coupling)")
    print(f"cd_steps_per_s={args.steps / total:.3f} routing_share={routing / total:.3f}")


if __name__ == "__main__":
    main()
