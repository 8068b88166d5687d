"""Milliseconds per image of ``capsgen explore``, for each family's default model, on one CPU thread.

What is timed is what the page waits for when a slider moves: the endpoint that makes one image,
called through :meth:`Explorer.handle` (parameter checks, the model, PNG + base64) — /api/decode
for models that decode capsules, /api/walk with one point (and the discriminator's score) for
GANs — and /api/encode (pose encoding, routing maps, the decoded image) for models that encode.
The issue's target is < 50 ms per image. Weights are fresh (training does not change the cost);
the shapes are the families' usual data: 1x28x28 with 10 classes, and CelebA's 3x64x64 with 40
attributes for variational capsules in attribute mode.

    python benchmarks/explore_latency.py [--repeats 20]

One line per model and endpoint: the median milliseconds of one request. /api/decode and
/api/walk make one image (what a slider drag waits for); /api/encode encodes a picked test image
and decodes it (one click).
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from capsgen.config import TrainConfig
from capsgen.data.batch import Batch
from capsgen.explore.api import Explorer
from capsgen.runs import OpenRun, build_task, make_configs
from capsgen.train.rundir import RunDir
from capsgen.train.task import DataInfo

DIGITS = DataInfo("mnist", (1, 28, 28), 10, [str(k) for k in range(10)], 60000)
CELEBA = DataInfo("celeba", (3, 64, 64), None, None, 162770, [f"attr{a}" for a in range(40)])
MODELS = [  # (label, family, preset (None: the defaults), data); gcapsnet's default has no decoder
    ("capsnet", "capsnet", None, DIGITS),
    ("gcapsnet fc-recon", "gcapsnet", "fc-recon", DIGITS),
    ("vcaps class", "vcaps", None, DIGITS),
    ("vcaps attributes", "vcaps", None, CELEBA),
    ("poe", "poe", None, DIGITS),
    ("dcgan", "dcgan", None, DIGITS),
    ("capsulegan", "capsulegan", None, DIGITS),
    ("acgan", "acgan", None, DIGITS),
]


def explorer_of(family: str, preset: str | None, info: DataInfo) -> Explorer:
    tcfg, mcfg = make_configs(family, [], preset)
    task = build_task(tcfg, mcfg, info)
    task.train_mode(False)
    if family == "poe":
        task.model.stage_steps[3] = 1     # fresh U counts as trained, so decoding may be timed
    images = torch.rand(8, *info.shape, generator=torch.Generator().manual_seed(0))
    labels = None if info.num_classes is None else torch.arange(8) % info.num_classes
    opened = OpenRun(RunDir("benchmark"), TrainConfig(family=family), mcfg, info, task, Path("fresh"))
    return Explorer(opened, Batch(images, labels), "")


def median_ms(call, repeats: int) -> float:
    call()   # warm-up: first-call allocations
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(1)
    for label, family, preset, info in MODELS:
        ex = explorer_of(family, preset, info)
        shape = "x".join(map(str, info.shape))
        if "decode-poses" in ex.explorable:
            if "encode-poses" in ex.explorable:
                enc = ex.handle("encode", {"index": 0})
                poses, active = enc["poses"], enc["active"]
                ms = median_ms(lambda: ex.handle("encode", {"index": 1}), args.repeats)
                parts = "encoding, routing maps" if "routing-maps" in ex.explorable else "encoding"
                print(f"{label} ({shape}) /api/encode: {ms:.1f} ms per request ({parts}, its decoded image)")
            else:
                drawn = ex.handle("prior", {"seed": 0, "capsule": 0, "domain": "full"})
                poses, active = drawn["poses"], drawn["active"]
            ms = median_ms(lambda: ex.handle("decode", {"poses": poses, "active": active}), args.repeats)
            print(f"{label} ({shape}) /api/decode: {ms:.1f} ms per image")
        if "latent-walk" in ex.explorable:
            walk = {"seed_a": 0, "seed_b": 1, "t": [0.5]}
            if "class-conditional" in ex.capabilities:
                walk["label"] = 3
            ms = median_ms(lambda: ex.handle("walk", walk), args.repeats)
            print(f"{label} ({shape}) /api/walk: {ms:.1f} ms per image (with the discriminator's score)")


if __name__ == "__main__":
    main()
