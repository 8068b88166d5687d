"""Step cost of the capsule GAN discriminator by routing kind, and of its matched twin, in one run.

    OMP_NUM_THREADS=1 python benchmarks/routing_kinds.py [--preset trunk-hinge] [--batch 32] [--repeats 30]

Builds the preset's discriminator with trainable routing (the preset's), self-attention routing,
dynamic routing (3 iterations) and the non-capsule twin, then times one forward + backward of a
batch of 28x28 images for each, interleaved (kind after kind in every repeat, so a change in the
machine's load hits them alike), and prints the median ms and each kind's ratio to trainable routing.
"""
from __future__ import annotations

import argparse
import statistics
import time

KINDS = (("trainable", ()), ("self-attention", ("model.d_routing_kind=self-attention",)),
         ("dynamic-3", ("model.d_routing_kind=dynamic", "model.d_routing=3")), ("twin", ("model.twin=true",)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="trunk-hinge")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    if args.batch < 1 or args.repeats < 3 or args.threads < 1:
        print("error: --batch and --threads must be >= 1 and --repeats >= 3", flush=True)
        return 2
    import torch

    from capsgen import runs
    from capsgen.models.gan.task import build_discriminator

    torch.set_num_threads(args.threads)
    nets = {}
    for name, pairs in KINDS:
        _, mcfg = runs.make_configs("capsulegan", list(pairs), preset=args.preset, data="mnist-5k")
        torch.manual_seed(0)
        nets[name] = build_discriminator(mcfg, (1, 28, 28))
    x = torch.rand(args.batch, 1, 28, 28) * 2 - 1
    times: dict[str, list[float]] = {name: [] for name in nets}
    for _ in range(args.repeats):
        for name, d in nets.items():
            t0 = time.perf_counter()
            d(x).sum().backward()
            times[name].append(time.perf_counter() - t0)
    base = statistics.median(times["trainable"])
    print(f"torch {torch.__version__}, {args.threads} thread(s); {args.preset} discriminator, batch {args.batch}, "
          f"forward + backward, median of {args.repeats}")
    for name, ts in times.items():
        m = statistics.median(ts)
        print(f"{name:<15} {1000 * m:8.2f} ms   ratio to trainable {m / base:5.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
