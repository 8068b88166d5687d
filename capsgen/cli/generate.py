"""``capsgen sample`` and ``capsgen interpolate``."""
from __future__ import annotations

import json


def add_parsers(sub) -> None:
    from capsgen.cli import add_device, add_force

    p = sub.add_parser("sample", help="draw images from a trained generative run into an .npz")
    p.add_argument("run", help="run folder of a model that generates (see capsgen models)")
    p.add_argument("--n", type=int, required=True, help="number of images")
    p.add_argument("--out", required=True, help="FILE.npz: uint8 [N, H, W, C] under the key 'images'")
    p.add_argument("--grid", help="also write a PNG grid of the first images")
    add_force(p)
    p.add_argument("--seed", type=int, default=0, help="seed of the latent noise")
    p.add_argument("--class", dest="label", type=int, metavar="K", help="draw images of class K "
                   "(class-conditional runs)")
    p.add_argument("--attributes", metavar="NAME=0|1,…", help="draw images with these attributes "
                   "(attribute-conditional runs; unnamed attributes are 0)")
    p.add_argument("--capsule", type=int, metavar="J", help="draw images from code capsule J alone "
                   "(capsule models, e.g. poe)")
    p.add_argument("--domain", choices=["full", "restricted"], help="poses from the whole sphere or the half "
                   "seen in training (capsule models; default: the run's model.sample_domain)")
    add_device(p, "cpu")
    p.set_defaults(func=cmd_sample)
    p = sub.add_parser("interpolate", help="latent interpolation grid of a trained generative run")
    p.add_argument("run", help="run folder of a model that generates (see capsgen models)")
    p.add_argument("--out", required=True, help="FILE.png")
    add_force(p)
    p.add_argument("--rows", type=int, default=8, help="pairs of latents, one per row")
    p.add_argument("--cols", type=int, default=10, help="images per row (both ends included)")
    p.add_argument("--seed", type=int, default=0, help="seed of the latent noise")
    add_device(p, "cpu")
    p.set_defaults(func=cmd_interpolate)


def cmd_sample(args) -> int:
    from capsgen.sampling import sample_to_files

    print(json.dumps(sample_to_files(args.run, args.n, args.out, args.grid, args.seed, args.label,
                                     args.attributes, args.device, args.capsule, args.domain,
                                     force=args.force)))
    return 0


def cmd_interpolate(args) -> int:
    from capsgen.sampling import interpolate_to_file

    print(json.dumps(interpolate_to_file(args.run, args.out, args.rows, args.cols, args.seed, args.device,
                                         force=args.force)))
    return 0
