"""``capsgen battle`` (GAM) and ``capsgen semisup`` (Label Spreading)."""
from __future__ import annotations

import json

from capsgen.errors import CapsgenError


def add_parsers(sub) -> None:
    from capsgen.cli import add_device
    from capsgen.data import dataset_names
    from capsgen.reproduce.args import LABELLED_DRAWS, labelled_counts

    p = sub.add_parser("battle", help="GAM battle of two generative runs (Im et al.; Jaiswal et al. 2018 §5.3)")
    p.add_argument("run_a", metavar="RUN_A", help="model A (the paper puts the CapsuleGAN here)")
    p.add_argument("run_b", metavar="RUN_B", help="model B (the convolutional GAN in the paper)")
    p.add_argument("--n", type=int, default=1000, help="samples per generator and real test images")
    p.add_argument("--tol", type=float, default=0.05, help="|r - 1| <= tol counts as r ≈ 1")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", help="folder holding the dataset's standard files")
    add_device(p, "cpu")
    p.set_defaults(func=cmd_battle)
    p = sub.add_parser("semisup", help="Label Spreading error with generated images as unlabelled "
                       "data (Jaiswal et al. 2018 §5.4)")
    p.add_argument("source", metavar="RUN_DIR|FILE.npz", help="generative run or .npz of uint8 'images'")
    p.add_argument("--data", choices=dataset_names(), help="dataset (required for FILE.npz)")
    p.add_argument("--data-dir", help="folder holding the dataset's standard files")
    p.add_argument("--labelled", type=labelled_counts, default=(100, 1000, 10000),
                   help="real labelled training images per row (default 100,1000,10000)")
    p.add_argument("--generated", type=int, default=50_000, help="generated unlabelled images (default 50000)")
    p.add_argument("--labelled-draw", choices=LABELLED_DRAWS, default=LABELLED_DRAWS[0],
                   help="labelled images drawn uniformly at random (Jaiswal et al., default) or "
                        "class-balanced")
    p.add_argument("--test-n", type=int, help="score on the first N real test images (default all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the labelled subsets and the latents")
    add_device(p, "cpu")
    p.set_defaults(func=cmd_semisup)


def cmd_battle(args) -> int:
    from capsgen.compare import battle, format_battle

    if not 0 <= args.tol < 1:
        raise CapsgenError(f"--tol must be in [0, 1), got {args.tol}")
    res = battle(args.run_a, args.run_b, n=args.n, seed=args.seed, tol=args.tol, data_dir=args.data_dir,
                 device=args.device)
    print(json.dumps(res))
    print(format_battle(res))
    return 0


def cmd_semisup(args) -> int:
    from capsgen.compare import format_semisup, semisup

    if args.test_n is not None and args.test_n < 1:
        raise CapsgenError(f"--test-n must be positive, got {args.test_n}")
    res = semisup(args.source, args.data, args.labelled, args.generated, seed=args.seed,
                  data_dir=args.data_dir, test_n=args.test_n, draw=args.labelled_draw, device=args.device)
    print(json.dumps(res))
    print(format_semisup(res))
    return 0
