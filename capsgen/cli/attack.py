"""``capsgen attack RUN --method fgsm|pgd|uap``: adversarial attacks on a run that classifies."""
from __future__ import annotations

import json

ATTACK_DESCRIPTION = (
    "Attack the first N test images of a run that classifies (capsnet, classifier, acgan, ...) as Chen et al. "
    "(G-CapsNets) do: fgsm (black-box through a LeNet substitute trained on the run's training data, or "
    "--white-box), pgd (white-box, random start) or uap (white-box universal-perturbation generator). "
    "Prints clean and attacked accuracy (one JSON line, then a table) and writes examples.png "
    "(clean / perturbation / attacked rows), adversarial.npz (float32 clean and adversarial images "
    "[N, C, H, W] in [0, 1], labels, predictions) and a curve (fgsm: accuracy vs epsilon for "
    "2, 4, 8, 16, 32 /255; uap: accuracy vs iteration) into a new folder, never into the run.")


def add_parsers(sub) -> None:
    from capsgen.cli import add_device

    p = sub.add_parser("attack", help="adversarial attacks (FGSM, PGD, universal perturbation) on a run "
                       "that classifies", description=ATTACK_DESCRIPTION)
    p.add_argument("run", help="run folder of a model that classifies (see capsgen models)")
    p.add_argument("--method", required=True, choices=["fgsm", "pgd", "uap"], help="the attack")
    p.add_argument("--eps", help="L-inf budget in [0, 1] pixel units, a number or a fraction "
                   "(default 8/255, Chen et al.'s L-inf <= 8)")
    p.add_argument("--n", type=int, help="attack the first N test images (default 1000)")
    p.add_argument("--steps", type=int, help="pgd: gradient steps (default 10; step size 2.5 eps / steps)")
    p.add_argument("--iters", type=int, help="uap: training iterations of the perturbation generator (default 300)")
    p.add_argument("--objective", help="uap: random-wrong (Chen et al.: pull towards a random wrong class, "
                   "the default) or untargeted (push away from the true class)")
    p.add_argument("--white-box", action="store_true", help="fgsm: the run's own gradients instead of a substitute's")
    p.add_argument("--substitute-steps", type=int, help="black-box fgsm: Adam steps (batch 64) of the LeNet "
                   "substitute (default 2000)")
    p.add_argument("--out", help="new or empty folder for pictures and examples "
                   "(default ./attacks-RUNNAME-METHOD)")
    p.add_argument("--seed", type=int, default=0, help="seed of the substitute, PGD start and UAP draws")
    p.add_argument("--checkpoint", choices=["best", "last"], default="best")
    p.add_argument("--data-dir", help="folder holding the run's dataset files (default: as trained)")
    add_device(p)
    p.set_defaults(func=cmd_attack)


def cmd_attack(args) -> int:
    from capsgen.eval.attack_runs import attack_run, format_attack

    res = attack_run(args.run, args.method, args.eps, args.n, args.steps, args.iters, args.substitute_steps,
                     args.white_box, args.objective, args.out, args.seed, args.checkpoint, args.device,
                     args.data_dir)
    print(json.dumps(res))
    print(format_attack(res))
    return 0
