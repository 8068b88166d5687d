"""The per-dataset evaluator network: a capsgen ``classifier`` run, trained once and cached.

FID, KID, IS, precision/recall and density/coverage need an embedding of images. The usual one,
Inception-v3 trained on ImageNet, is not available here (its weights cannot be downloaded) and
is the wrong lens for 28x28 greyscale images anyway. So capsgen trains its own small CNN per
dataset (:mod:`capsgen.models.classifier`) through the ordinary training loop, with a fixed
recipe and seed, and uses its penultimate features and class probabilities.

Cache layout (``$CAPSGEN_CACHE``, default ``~/.cache/capsgen``)::

    evaluators/
      fashion-mnist-<hash>/      a normal capsgen run folder (config.json, checkpoints/, ...)
        evaluator.json           written last: test accuracy, recipe, checkpoint SHA-256
      fashion-mnist-<hash>.lock  held while one process loads or trains the entry

``<hash>`` covers everything that changes the weights (recipe version, data, seed, epochs, batch
size, model config), so changing the recipe trains a new evaluator beside the old one. An entry
without ``evaluator.json`` (training interrupted), with a checkpoint whose SHA-256 differs from
the recorded one (truncated or modified), or with an unreadable config is reported and retrained.
Weights are read from safetensors only: loading a cache entry cannot execute code.
"""
from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from capsgen.errors import CapsgenError
from capsgen.train.rundir import RunDir

RECIPE_VERSION = 1          # bump when the classifier code changes what a recipe trains
META_FILE = "evaluator.json"
CHECKPOINT = "last"         # fixed epochs: the final weights, never a test-selected 'best'


@dataclass(frozen=True)
class Recipe:
    """How the evaluator of one dataset is trained: fixed seed, fixed budget, fixed config."""

    epochs: float | None = 5.0
    steps: int | None = None            # wins over epochs (used by tests)
    batch_size: int = 128
    seed: int = 0
    model: tuple[str, ...] = ()         # --set pairs for the classifier config
    min_accuracy: float | None = None   # warn when the trained evaluator falls below this


# Budgets chosen so each evaluator trains in minutes on a laptop CPU.
RECIPES: dict[str, Recipe] = {
    # expected 92-93 % after 5 epochs (the issue asks for >= 91 %); 2,340 steps of batch 128.
    "fashion-mnist": Recipe(epochs=5, min_accuracy=0.91),
    "mnist": Recipe(epochs=3, min_accuracy=0.98),
    "mnist-5k": Recipe(epochs=15, batch_size=100, model=("model.shift_pixels=1",), min_accuracy=0.93),
    # 1,438 8x8 images: a narrower net, 10 epochs of 22 steps, ~98.6 % in about 5 s.
    "digits": Recipe(epochs=10, batch_size=64, model=("model.channels=16,32,64", "model.hidden=64"),
                     min_accuracy=0.9),
    "cifar10": Recipe(epochs=10, model=("model.hflip=true", "model.shift_pixels=2"), min_accuracy=0.75),
}
DEFAULT_RECIPE = Recipe(epochs=5)


def recipe_for(data: str) -> Recipe:
    return RECIPES.get(_canonical(data), DEFAULT_RECIPE)


def _canonical(data: str) -> str:
    from capsgen.data.registry import get_spec

    return get_spec(data).name


def own_size(data: str, image_size: int | None) -> int | None:
    """``image_size``, or None when it is the dataset's own size (so that evaluator is shared)."""
    from capsgen.data.registry import image_shape
    from capsgen.errors import ConfigError

    if image_size is None:
        return None
    try:
        _, h, w = image_shape(data)
    except ConfigError:           # a folder dataset: no fixed own size
        return image_size
    return None if (h, w) == (image_size, image_size) else image_size


def cache_root() -> Path:
    """``$CAPSGEN_CACHE/evaluators`` (default ``~/.cache/capsgen/evaluators``)."""
    base = os.environ.get("CAPSGEN_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "capsgen")
    return Path(base) / "evaluators"


def make_configs(data: str, recipe: Recipe, data_dir: str | os.PathLike | None = None,
                 image_size: int | None = None):
    """(TrainConfig, ClassifierConfig) of ``recipe`` for ``data`` (resized to ``image_size`` when given)."""
    from capsgen import runs

    tcfg, mcfg = runs.make_configs("classifier", list(recipe.model), data=data,
                                   data_dir=None if data_dir is None else str(data_dir),
                                   epochs=None if recipe.steps is not None else recipe.epochs,
                                   steps=recipe.steps, batch_size=recipe.batch_size, seed=recipe.seed,
                                   image_size=image_size)
    return tcfg, mcfg


def cache_key(tcfg: Any, mcfg: Any) -> str:
    """12 hex digits of SHA-256 over everything that changes the evaluator's weights."""
    from capsgen.config import to_dict

    data_dir = str(Path(tcfg.data_dir).resolve()) if tcfg.data_dir else None
    payload = {"recipe_version": RECIPE_VERSION, "family": tcfg.family, "data": tcfg.data,
               "data_dir": data_dir, "seed": tcfg.seed, "batch_size": tcfg.batch_size,
               "steps": tcfg.steps, "epochs": tcfg.epochs, "model": to_dict(mcfg)}
    if tcfg.image_size is not None:   # only then: the native-size evaluators keep their cached keys
        payload["image_size"] = tcfg.image_size
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _say(msg: str) -> None:
    print(f"capsgen: {msg}", file=sys.stderr, flush=True)


class CorruptCache(CapsgenError):
    """A cache entry exists but cannot be trusted (half-written, truncated, modified)."""


# ----------------------------------------------------------------------------- Evaluator
class Evaluator:
    """A trained classifier seen as an embedding: ``features``, ``probs`` and its ``accuracy``.

    Images are either uint8 numpy ``[N, H, W, C]`` (what sample files and datasets hold) or a
    float tensor ``[N, C, H, W]`` in [0, 1]. Outputs are float32 CPU tensors, computed in eval
    mode in batches (deterministic: the same images give the same numbers).
    """

    def __init__(self, task: Any, meta: dict, path: Path):
        self.task, self.meta, self.path = task, meta, Path(path)
        self.data: str = meta["data"]
        self.accuracy: float = float(meta["accuracy"])
        self.n_test: int = int(meta["n_test"])
        self.shape: tuple[int, int, int] = tuple(task.info.shape)   # (C, H, W)
        self.num_classes: int = task.info.num_classes
        self.class_names: list[str] | None = task.info.class_names
        self.feature_dim: int = task.config.hidden

    def __repr__(self) -> str:
        return (f"Evaluator(data={self.data!r}, accuracy={self.accuracy:.4f}, "
                f"features={self.feature_dim}, path='{self.path}')")

    def _tensor(self, images) -> torch.Tensor:
        C, H, W = self.shape
        if isinstance(images, np.ndarray):
            if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (H, W, C):
                raise CapsgenError(f"the {self.data} evaluator takes uint8 [N, {H}, {W}, {C}] arrays, "
                                   f"got {images.dtype} {list(images.shape)}")
            return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)
        if isinstance(images, torch.Tensor):
            if images.ndim != 4 or tuple(images.shape[1:]) != (C, H, W) or not images.is_floating_point():
                raise CapsgenError(f"the {self.data} evaluator takes float tensors [N, {C}, {H}, {W}] in "
                                   f"[0, 1], got {images.dtype} {list(images.shape)}")
            return images.float()
        raise CapsgenError(f"images must be a numpy uint8 array or a torch tensor, got {type(images).__name__}")

    def features_and_probs(self, images, batch: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
        """Penultimate features [N, F] and class probabilities [N, K] in one pass."""
        x = self._tensor(images)
        if len(x) == 0:
            return torch.zeros(0, self.feature_dim), torch.zeros(0, self.num_classes)
        return self.task.features_and_probs(x, batch)

    def features(self, images, batch: int = 500) -> torch.Tensor:
        return self.features_and_probs(images, batch)[0]

    def probs(self, images, batch: int = 500) -> torch.Tensor:
        return self.features_and_probs(images, batch)[1]


# ----------------------------------------------------------------------------- cache
@contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive lock so two processes never train the same entry at once."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _say(f"waiting for another capsgen process using {lock_path.with_suffix('')} ...")
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def load_evaluator(path: str | os.PathLike, expect_key: str | None = None) -> Evaluator:
    """Open a cached evaluator folder; CorruptCache (one line) for anything untrustworthy.

    Needs no dataset: the run's config.json records the image shape and classes.
    """
    from capsgen import runs

    path = Path(path)
    meta_path = path / META_FILE
    if not meta_path.is_file():
        raise CorruptCache(f"{path}: no {META_FILE}, so its training never finished")
    try:
        meta = json.loads(meta_path.read_text())
        if not isinstance(meta, dict):
            raise TypeError("not a JSON object")
        missing = [k for k in ("data", "accuracy", "n_test", "key", "sha256") if k not in meta]
        if missing:
            raise KeyError(", ".join(missing))
        float(meta["accuracy"]), int(meta["n_test"])
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise CorruptCache(f"{meta_path}: unreadable or incomplete ({type(exc).__name__}: {exc})") from None
    if expect_key is not None and meta["key"] != expect_key:
        raise CorruptCache(f"{meta_path}: records key {meta['key']}, expected {expect_key}")
    ckpt = RunDir(path).checkpoint(CHECKPOINT)
    if not ckpt.is_file():
        raise CorruptCache(f"{ckpt}: checkpoint missing")
    if _sha256(ckpt) != meta["sha256"]:
        raise CorruptCache(f"{ckpt}: SHA-256 differs from the one recorded in {META_FILE} "
                           "(truncated or modified)")
    try:
        opened = runs.open_run(path, CHECKPOINT, device="cpu", fallback=False)
        if opened.train_config.family != "classifier":
            raise CapsgenError(f"{path}: a {opened.train_config.family} run, not a classifier")
        task = opened.task
    except CorruptCache:
        raise
    except (CapsgenError, KeyError, TypeError, ValueError) as exc:
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CorruptCache(f"{path}: cannot rebuild the classifier ({why})") from None
    task.train_mode(False)
    return Evaluator(task, meta, path)


def _train(folder: Path, tcfg: Any, mcfg: Any, key: str, recipe: Recipe, progress: bool) -> None:
    """Train the classifier into ``folder`` (a fresh run folder) and write evaluator.json."""
    from capsgen import runs
    from capsgen.train.loop import Interrupted

    budget = f"{recipe.steps} steps" if recipe.steps is not None else f"{recipe.epochs:g} epochs"
    _say(f"training the {tcfg.data} evaluator network (classifier, seed {tcfg.seed}, {budget}, "
         f"batch {tcfg.batch_size}) into {folder}; this happens once per dataset")
    t0 = time.perf_counter()
    # The loop seeds the global torch RNG for weight init; keep the caller's RNG untouched.
    with torch.random.fork_rng(devices=[]):
        try:
            run, final = runs.train_new(tcfg, mcfg, folder, progress=progress)
        except Interrupted:
            raise Interrupted(f"interrupted while training the {tcfg.data} evaluator; the next "
                              "evaluation retrains it from scratch") from None
    ckpt = run.checkpoint(CHECKPOINT)
    accuracy = 1.0 - float(final["test_error"])
    meta = {"data": tcfg.data, "accuracy": accuracy, "test_error": float(final["test_error"]),
            "test_nll": final.get("test_nll"), "n_test": int(final["n"]), "key": key,
            "recipe": dataclasses.asdict(recipe), "recipe_version": RECIPE_VERSION,
            "checkpoint": str(ckpt.relative_to(folder)), "sha256": _sha256(ckpt),
            "train_seconds": round(time.perf_counter() - t0, 1),
            "created": time.strftime("%Y-%m-%d %H:%M:%S")}
    from capsgen import __version__
    from capsgen.train.checkpoint import atomic_write_text

    meta["capsgen"] = __version__
    atomic_write_text(folder / META_FILE, json.dumps(meta, indent=2, sort_keys=True))
    _say(f"{tcfg.data} evaluator: test accuracy {100 * accuracy:.2f}% on {meta['n_test']} test images "
         f"({meta['train_seconds']:.0f} s); cached in {folder}")
    if recipe.min_accuracy is not None and accuracy < recipe.min_accuracy:
        _say(f"warning: the {tcfg.data} evaluator is below the expected {100 * recipe.min_accuracy:.0f}% "
             "test accuracy; its metrics are less trustworthy")


def get_evaluator(data: str, data_dir: str | os.PathLike | None = None, train_if_missing: bool = True,
                  *, recipe: Recipe | None = None, retrain: bool = False,
                  progress: bool = True, image_size: int | None = None) -> Evaluator:
    """The cached evaluator of ``data`` (of images resized to ``image_size`` when given, as a run
    with ``train.image_size`` sees them); trains it first (printing progress) when missing.

    ``recipe`` overrides the dataset's fixed :data:`RECIPES` entry (it is part of the cache
    key). A damaged entry is reported on stderr and retrained; with ``train_if_missing=False``
    a missing or damaged entry is a one-line :class:`CapsgenError` instead. ``retrain`` throws
    the entry away and trains again.
    """
    data = _canonical(data)
    recipe = recipe or recipe_for(data)
    image_size = own_size(data, image_size)
    tcfg, mcfg = make_configs(data, recipe, data_dir, image_size)
    key = cache_key(tcfg, mcfg)
    folder = cache_root() / f"{data}-{key}"
    how = f"capsgen evaluator --data {data}" + (f" --data-dir {data_dir}" if data_dir else "") + \
        (f" --image-size {image_size}" if image_size else "")
    with _locked(folder.parent / f"{folder.name}.lock"):
        if folder.exists() and not retrain:
            try:
                return load_evaluator(folder, expect_key=key)
            except CorruptCache as exc:
                if not train_if_missing:
                    raise CorruptCache(f"damaged evaluator cache: {exc}; retrain it with: {how} --retrain") from None
                _say(f"damaged evaluator cache, retraining: {exc}")
        elif not folder.exists() and not train_if_missing:
            raise CapsgenError(f"no {data} evaluator in {folder.parent}; train it with: {how}")
        if folder.exists():
            if folder.is_dir() and not folder.is_symlink():
                shutil.rmtree(folder)
            else:
                folder.unlink()
        _train(folder, tcfg, mcfg, key, recipe, progress)
        return load_evaluator(folder, expect_key=key)
