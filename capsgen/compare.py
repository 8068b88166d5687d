"""Comparisons of trained generative runs: the GAM battle and semi-supervised Label Spreading.

Both are the CapsuleGAN paper's evaluations (Jaiswal et al. 2018, sections 5.3 and 5.4). The
metric arithmetic lives in :mod:`capsgen.eval.gam` and :mod:`capsgen.eval.semisup`; this module
opens runs, draws samples, loads the real data and assembles the tables the CLI and
``capsgen reproduce`` print.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from capsgen.errors import CapsgenError

SEMISUP_LABELLED = (100, 1000, 10000)   # the paper's table rows
SEMISUP_GENERATED = 50_000


def _batch_norm_layers(module: torch.nn.Module) -> int:
    return sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in module.modules())


def _real_test(data: str, data_dir: str | None, n: int, seed: int) -> torch.Tensor:
    """n real test images [n, C, H, W] in [0, 1], a seeded subset of the test split."""
    from capsgen.data import load_split

    test = load_split(data, "test", data_dir)
    if n > len(test):
        raise CapsgenError(f"--n {n} is larger than the {len(test)} {data} test images; lower --n")
    idx = np.sort(np.random.default_rng(seed).permutation(len(test))[:n])
    x, _ = test.to_tensors()
    return x[torch.as_tensor(idx)]


def battle(run_a: str | Path, run_b: str | Path, n: int = 1000, seed: int = 0, tol: float = 0.05,
           data_dir: str | None = None, device: str | None = "cpu") -> dict[str, Any]:
    """GAM battle of two generative runs (A against B; the paper puts CapsuleGAN as A).

    Each generator draws ``n`` samples (latents seeded by ``seed``); each discriminator scores
    both sample sets and the same ``n`` real test images. Both discriminators are scored in eval
    mode: batch norm uses its running statistics, so a score does not depend on what else is
    in the batch. Returns :func:`capsgen.eval.gam.gam_ratios`' dict plus the four pairings under
    ``pairings``, the runs, counts and ``batch_norm``.
    """
    from capsgen.eval.gam import accuracy, gam_ratios
    from capsgen.sampling import open_for, require

    if n < 1:
        raise CapsgenError(f"--n must be a positive number of samples, got {n}")
    if Path(run_a).resolve() == Path(run_b).resolve():
        raise CapsgenError("a battle needs two different runs; got the same folder twice")
    oa, ob = open_for(run_a, "generate", device=device), open_for(run_b, "generate", device=device)
    task_a, task_b = require(oa, "discriminate"), require(ob, "discriminate")
    ra, rb, ta, tb = oa.run, ob.run, oa.train_config, ob.train_config
    if ta.data != tb.data or oa.info.shape != ob.info.shape:
        raise CapsgenError(f"{ra.path} was trained on {ta.data} {oa.info.shape} and {rb.path} on "
                           f"{tb.data} {ob.info.shape}; a battle needs two models of the same data")
    x_test = _real_test(ta.data, data_dir or ta.data_dir, n, seed)
    g = torch.Generator().manual_seed(seed)
    samples_a = task_a.sample(n, g)
    samples_b = task_b.sample(n, torch.Generator().manual_seed(seed + 1))
    acc = {
        "A(D_A(G_A(z)))": accuracy(task_a.discriminate(samples_a), 0),
        "A(D_A(G_B(z)))": accuracy(task_a.discriminate(samples_b), 0),
        "A(D_B(G_A(z)))": accuracy(task_b.discriminate(samples_a), 0),
        "A(D_B(G_B(z)))": accuracy(task_b.discriminate(samples_b), 0),
        "A(D_A(x_test))": accuracy(task_a.discriminate(x_test), 1),
        "A(D_B(x_test))": accuracy(task_b.discriminate(x_test), 1),
    }
    res = gam_ratios(acc["A(D_B(G_A(z)))"], acc["A(D_A(G_B(z)))"], acc["A(D_B(x_test))"],
                     acc["A(D_A(x_test))"], tol=tol)
    # the module named "discriminator" by the checkpoint contract, else every module of the task
    bn = {k: sum(_batch_norm_layers(m) for name, m in t.modules.items()
                 if name == "discriminator" or "discriminator" not in t.modules)
          for k, t in (("A", task_a), ("B", task_b))}
    bn_mode = ("eval mode: batch norm uses its running statistics" if any(bn.values())
               else "neither discriminator has batch norm (train and eval mode agree)")
    return {"A": str(ra.path), "B": str(rb.path), "data": ta.data, "n": n, "seed": seed,
            "pairings": acc, **res, "batch_norm": {"layers_in_D": bn, "mode": bn_mode}}


def format_battle(res: dict[str, Any]) -> str:
    """The battle as a small text table with the ratios and the verdict."""
    lines = [f"A = {res['A']}", f"B = {res['B']}",
             f"{res['n']} samples per generator, {res['n']} real {res['data']} test images; "
             f"discriminators in {res['batch_norm']['mode']}", "",
             f"{'accuracy':<18} {'value':>7}"]
    lines += [f"{k:<18} {v:>7.4f}" for k, v in res["pairings"].items()]
    lines += ["", f"r_samples = A(D_B(G_A(z))) / A(D_A(G_B(z))) = {res['r_samples']:.4f}",
              f"r_test    = A(D_B(x_test)) / A(D_A(x_test)) = {res['r_test']:.4f}",
              f"tolerance for ≈ 1: ±{res['tolerance']:g}",
              f"verdict: {res['verdict']}  (Im et al. 2016 reading: {res['verdict_im2016']})",
              f"note: {res['note']}"]
    return "\n".join(lines)


def _unlabelled_images(source: str | Path | np.ndarray, data: str | None, generated: int, seed: int,
                       device: str | None = "cpu") -> tuple[str, str | None, np.ndarray, str]:
    """(data, data_dir, uint8 [m, H, W, C], kind) from a generative run, a .npz of samples or an array."""
    from capsgen.data.registry import get_spec
    from capsgen.eval.report_metrics import read_samples_npz
    from capsgen.sampling import generate_images, is_sample_file

    if isinstance(source, np.ndarray):
        if not data:
            raise CapsgenError("name the dataset the images come from (data=...)")
        if len(source) < generated:
            raise CapsgenError(f"{len(source)} unlabelled images given, fewer than generated={generated}")
        return get_spec(data).name, None, source[:generated], "array"
    if is_sample_file(str(source)):
        if not data:
            raise CapsgenError(f"--data NAME is required with a sample file (the dataset {source} imitates)")
        images = read_samples_npz(source)
        if len(images) < generated:
            raise CapsgenError(f"{source} holds {len(images)} images, fewer than --generated {generated}; "
                               "lower --generated or sample more")
        return get_spec(data).name, None, images[:generated], "file"
    run_data, data_dir, images = generate_images(str(source), generated, seed, device)
    if data and get_spec(data).name != run_data:
        raise CapsgenError(f"{source} was trained on {run_data}, not {data}; leave --data out")
    return run_data, data_dir, images, "run"


def semisup(source: str | Path | np.ndarray | None, data: str | None, labelled: tuple[int, ...] = SEMISUP_LABELLED,
            generated: int = SEMISUP_GENERATED, seed: int = 0, data_dir: str | None = None,
            test_n: int | None = None, progress: bool = True, draw: str = "random",
            device: str | None = "cpu") -> dict[str, Any]:
    """Label Spreading test error with n labelled real images + ``generated`` unlabelled ones.

    ``source`` is a generative run, a .npz of uint8 [N, H, W, C] samples, such an array (e.g.
    real images, for a reference row) or None for the "no unlabelled data" baseline. Each
    labelled set is a seeded subset of the real training split, drawn ``draw="random"``
    (uniformly, as Jaiswal et al. do; the default) or ``"balanced"`` over the classes; the error is measured on the
    first ``test_n`` real test images (default all). Returns ``{"rows": [{"labelled", "error",
    "seconds"}], ...}``.
    """
    from capsgen.data import load_split
    from capsgen.eval.semisup import LABELLED_DRAWS, label_spreading_error, labelled_subset

    if generated < 0:
        raise CapsgenError(f"--generated must be >= 0, got {generated}")
    if draw not in LABELLED_DRAWS:
        raise CapsgenError(f"unknown labelled draw {draw!r}; choose one of: {', '.join(LABELLED_DRAWS)}")
    if not labelled or min(labelled) < 1:
        raise CapsgenError(f"--labelled must list positive counts, e.g. 100,1000,10000; got {labelled}")
    kind = "none"
    if source is not None and generated > 0:
        data, src_dir, unl, kind = _unlabelled_images(source, data, generated, seed, device)
        data_dir = data_dir or src_dir
        unl = unl.reshape(len(unl), -1).astype(np.float32) / 255.0
    elif not data:
        raise CapsgenError("--data NAME is required without generated images")
    else:
        from capsgen.data.registry import get_spec

        data, unl = get_spec(data).name, None
    train, test = load_split(data, "train", data_dir), load_split(data, "test", data_dir)
    if train.labels is None:
        raise CapsgenError(f"{data} has no class labels; semi-supervised classification needs them")
    if max(labelled) > len(train):
        raise CapsgenError(f"--labelled {max(labelled)} is more than the {len(train)} {data} training images")
    t = len(test) if test_n is None else min(test_n, len(test))
    x_test = test.images[:t].reshape(t, -1).astype(np.float32) / 255.0
    y_test = test.labels[:t]
    rows = []
    for n in labelled:
        idx = labelled_subset(train.labels, n, seed, draw)
        xl = train.images[idx].reshape(n, -1).astype(np.float32) / 255.0
        t0 = time.perf_counter()
        if progress:
            print(f"label spreading: {n} labelled + {0 if unl is None else len(unl)} unlabelled, "
                  f"{t} test images …", flush=True)
        err = label_spreading_error(xl, train.labels[idx], unl, x_test, y_test)
        rows.append({"labelled": n, "error": err, "seconds": round(time.perf_counter() - t0, 1)})
    name = None if source is None else "array" if isinstance(source, np.ndarray) else str(source)
    return {"source": name, "kind": kind, "data": data,
            "generated": 0 if unl is None else len(unl), "test_images": t, "seed": seed,
            "labelled_draw": draw,
            "method": "sklearn LabelSpreading(kernel='knn', n_neighbors=7) on raw pixels in [0, 1]",
            "rows": rows}


def format_semisup(res: dict[str, Any]) -> str:
    lines = [f"{res['data']}: {res['generated']} unlabelled images from {res['source'] or 'nowhere'}, "
             f"labelled images drawn {res['labelled_draw']}, "
             f"error on {res['test_images']} real test images ({res['method']})", "",
             f"{'labelled':>9} {'error %':>8} {'seconds':>8}"]
    lines += [f"{r['labelled']:>9} {100 * r['error']:>8.2f} {r['seconds']:>8.1f}" for r in res["rows"]]
    return "\n".join(lines)
