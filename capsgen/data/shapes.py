"""``shapes-attributes``: a procedurally drawn colour image set with 9 independent binary attributes.

A stand-in for CelebA's attribute experiments that runs anywhere: each image shows one main
object on a background, drawn with numpy from a seed, with these attributes (value 1 = the
name holds):

=================  =====================================================  =====================
attribute          0                                                      1
=================  =====================================================  =====================
square             circle                                                 square (equal area)
blue               red object                                             blue object
large              small (radius ~0.10 of the image)                      large (~0.19)
right              object in the left half                                in the right half
bottom             object in the top half                                 in the bottom half
striped            plain object                                           darker horizontal stripes
second_object      nothing else                                           a small green diamond
light_background   dark background                                        light background
frame              no border                                              a yellow border
=================  =====================================================  =====================

Every attribute is exactly balanced within a split (half the images have it, in a seeded random
order) and drawn independently of the others; within each value, nuisance variation (position
and size jitter, rotation of squares, shade, stripe period and phase, background gradient)
gives the capsules something to model beyond the attribute. The class label is the object's
kind, shape x colour (4 classes), so class-conditional models and the evaluator classifier
work on it too.

The attributes differ in difficulty. Measured at 32x32 with the CPU-default residual encoder
of ``capsgen.models.vcaps`` (batch 32, Adam 1e-3, 500 test images): colour, size, position,
background and frame are read perfectly within 300 steps; stripes and the second object need
~600 without reconstruction; the equal-area circle/square stays at chance for ~1,000 steps and
reaches 98 % at 1,500 (a plain classifier head) — the area cue is removed on purpose.

Images are rendered directly at the requested size (coordinates in the unit square, edges
anti-aliased over one pixel), default 64x64; smaller sizes (16 to 63) are drawn, not resized.
At 32x32 every attribute still reads back from simple pixel statistics (the tests); at 16x16 the
stripes alias and small squares look round. Drawing the default 20,000 + 2,000 images at 64x64
takes 4.5 s of CPU on this machine (1 thread, 0.20 s per 1,000 images; 12-14 s of wall time while
other jobs shared the 2 cores), 32x32 about a quarter of that. Each split is cached per process,
and with ``limit`` only the first ``limit`` images are drawn.
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from capsgen.data.base import ImageData, frozen
from capsgen.errors import ConfigError

ATTRIBUTE_NAMES = ("square", "blue", "large", "right", "bottom", "striped", "second_object",
                   "light_background", "frame")
CLASS_NAMES = ["red circle", "blue circle", "red square", "blue square"]   # label = 2 square + blue
DEFAULT_IMAGE_SIZE = 64
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 16, 256
SPLIT_SIZES = {"train": 20_000, "test": 2_000}
# Distinct seeds per split: independent draws, so no test image repeats a training image.
SPLIT_SEEDS = {"train": 20_190, "test": 20_191}
# Images rendered at once. Small chunks keep the float32 work arrays (3 MB each at 64x64) in
# cache: measured per 1,000 images at 64x64, 1 thread: 0.60 s in chunks of 1000, 0.38 s of 250,
# 0.25 s of 64, 0.23 s of 32 (before the in-place blending below).
_CHUNK = 64

_SQUARE_HALF = float(np.sqrt(np.pi) / 2)   # half-side of a square / radius: the circle's area
_A = {name: i for i, name in enumerate(ATTRIBUTE_NAMES)}   # attribute -> column

_FRAME_RGB = np.array([0.95, 0.80, 0.15], dtype=np.float32)
_SECOND_RGB = np.array([0.15, 0.75, 0.25], dtype=np.float32)


def _balanced(rng: np.random.RandomState, n: int, k: int) -> np.ndarray:
    """``k`` independent columns, each with floor(n/2) ones (+ a coin for odd n), shuffled."""
    cols = []
    for _ in range(k):
        col = np.zeros(n, dtype=np.int64)
        col[: n // 2] = 1
        if n % 2:
            col[-1] = rng.randint(2)
        cols.append(rng.permutation(col))
    return np.stack(cols, axis=1)


def draw_parameters(n: int, seed: int) -> dict[str, np.ndarray]:
    """Attributes int64 [n, 9] and every nuisance value of ``n`` images, from ``seed``.

    Uses numpy's legacy RandomState, whose streams are frozen across numpy versions, so a seed
    gives the same images everywhere. Everything is drawn for all ``n`` images up front: the
    first m images of a split do not depend on how many are rendered.
    """
    rng = np.random.RandomState(seed)
    a = _balanced(rng, n, len(ATTRIBUTE_NAMES))
    u = lambda lo, hi, size=n: rng.uniform(lo, hi, size).astype(np.float32)  # noqa: E731
    p: dict[str, np.ndarray] = {"attributes": a}
    square, blue, large, right, bottom, striped, second, light, frame = a.T
    p["radius"] = np.where(large == 1, u(0.17, 0.21), u(0.085, 0.115)).astype(np.float32)
    p["cx"] = np.where(right == 1, 0.70, 0.30).astype(np.float32) + u(-0.05, 0.05)
    p["cy"] = np.where(bottom == 1, 0.70, 0.30).astype(np.float32) + u(-0.05, 0.05)
    p["angle"] = u(-0.35, 0.35)                          # rotation of squares (radians, ~ +-20 deg)
    red = np.stack([u(0.75, 0.95), u(0.05, 0.20), u(0.05, 0.20)], axis=1)
    blu = np.stack([u(0.05, 0.20), u(0.20, 0.40), u(0.75, 0.95)], axis=1)
    p["rgb"] = np.where(blue[:, None] == 1, blu, red).astype(np.float32)
    p["stripe_freq"] = u(5.0, 7.0)                       # stripes per image height
    p["stripe_phase"] = u(0.0, 2 * np.pi)
    p["bg_level"] = np.where(light == 1, u(0.70, 0.88), u(0.08, 0.26)).astype(np.float32)
    p["bg_tint"] = u(-0.04, 0.04, (n, 3))
    p["bg_slope"] = u(-0.08, 0.08)                       # top-to-bottom brightness gradient
    p["second_r"] = u(0.06, 0.085)
    # the diamond sits in the quadrant diagonally opposite the object, so they never overlap
    p["second_cx"] = 1.0 - p["cx"] + u(-0.03, 0.03)
    p["second_cy"] = 1.0 - p["cy"] + u(-0.03, 0.03)
    p["frame_w"] = u(0.035, 0.05)
    return p


def _blend(img: np.ndarray, cover: np.ndarray, colour: np.ndarray, tmp: np.ndarray) -> None:
    """img += cover * (colour - img), in place through the scratch buffer ``tmp`` (img's shape).

    Reusing one buffer instead of fresh multi-megabyte temporaries saved ~10 % of the CPU time
    (0.22 -> 0.20 s per 1,000 images at 64x64).
    """
    np.subtract(colour, img, out=tmp)
    tmp *= cover
    img += tmp


def _render(p: dict[str, np.ndarray], sl: slice, size: int) -> np.ndarray:
    """uint8 [m, size, size, 3] for the images ``sl`` of the parameters ``p`` (vectorised)."""
    a = p["attributes"][sl]
    m = len(a)
    col = lambda k: p[k][sl].reshape(m, 1, 1)  # noqa: E731  a per-image scalar broadcast over pixels
    on = lambda name: a[:, _A[name], None, None].astype(np.float32)  # noqa: E731  [m, 1, 1]
    g = (np.arange(size, dtype=np.float32) + 0.5) / size
    v, h = g.reshape(1, size, 1), g.reshape(1, 1, size)      # row (y) and column (x) coordinates
    aa = np.float32(size)                                     # one pixel in unit coordinates = 1/size

    def soft(signed: np.ndarray) -> np.ndarray:
        """Coverage [m, S, S, 1] of a region with signed distance ``signed`` (> 0 inside), over one pixel."""
        signed *= aa
        signed += np.float32(0.5)
        return np.clip(signed, 0.0, 1.0, out=signed)[..., None]

    # Every colour and background level lies in [0, 1] and blending is convex, so img stays in
    # [0, 1] and needs no clipping before the conversion to uint8.
    bg = col("bg_level") + col("bg_slope") * (v - 0.5)                        # [m, S, 1]
    img = np.empty((m, size, size, 3), dtype=np.float32)
    img[...] = bg[..., None] + p["bg_tint"][sl].reshape(m, 1, 1, 3)
    tmp = np.empty_like(img)

    edge = np.minimum(np.minimum(h, 1.0 - h), np.minimum(v, 1.0 - v))          # distance to the border
    frame = np.where(on("frame") == 1, col("frame_w") - edge, np.float32(-1.0))  # -1: nowhere
    _blend(img, soft(frame), _FRAME_RGB, tmp)

    dx, dy = np.abs(h - col("second_cx")), np.abs(v - col("second_cy"))
    diamond = col("second_r") - (dx + dy)                                        # |dx| + |dy| < r
    _blend(img, soft(np.where(on("second_object") == 1, diamond, np.float32(-1.0))), _SECOND_RGB, tmp)

    dx, dy = h - col("cx"), v - col("cy")
    r = col("radius")
    circle = r - np.sqrt(dx * dx + dy * dy)
    c, s = np.cos(col("angle")), np.sin(col("angle"))
    square = r * np.float32(_SQUARE_HALF) - np.maximum(np.abs(c * dx + s * dy), np.abs(c * dy - s * dx))
    stripes = np.sin(np.float32(2 * np.pi) * col("stripe_freq") * v + col("stripe_phase")) > 0   # [m, S, 1]
    shade = np.where((stripes & (on("striped") == 1))[..., None], np.float32(0.45), np.float32(1.0))
    colour = p["rgb"][sl].reshape(m, 1, 1, 3) * shade                          # [m, S, 1, 3]
    _blend(img, soft(np.where(on("square") == 1, square, circle)), colour, tmp)
    img *= np.float32(255.0)
    img += np.float32(0.5)                                                      # round to nearest
    return img.astype(np.uint8)


def generate_shapes(n: int, seed: int, image_size: int = DEFAULT_IMAGE_SIZE,
                    count: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 [count, S, S, 3] and attributes int64 [count, 9]: the first ``count``
    (default all) of the ``n`` images that ``seed`` defines."""
    count = n if count is None else min(count, n)
    p = draw_parameters(n, seed)
    images = np.empty((count, image_size, image_size, 3), dtype=np.uint8)
    for start in range(0, count, _CHUNK):
        sl = slice(start, min(start + _CHUNK, count))
        images[sl] = _render(p, sl, image_size)
    return images, p["attributes"][:count].copy()


@functools.lru_cache(maxsize=4)
def _cached_split(split: str, image_size: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    images, attributes = generate_shapes(SPLIT_SIZES[split], SPLIT_SEEDS[split], image_size, count)
    return frozen(images), frozen(attributes)


def load_shapes_attributes(
    directory: Path | None, split: str, image_size: int | None = None, limit: int | None = None
) -> ImageData:
    """The ``shapes-attributes`` split: uint8 [20000 | 2000, S, S, 3] (S = image_size, default 64),
    attributes int64 {0, 1} [N, 9], labels = 2 * square + blue (4 classes).

    Only the first ``limit`` images are drawn. Nothing is read from disk: ``directory`` must be None.
    """
    if directory is not None:
        raise ConfigError(f"shapes-attributes is generated, not read from files; drop --data-dir {directory}")
    size = DEFAULT_IMAGE_SIZE if image_size is None else image_size
    if not MIN_IMAGE_SIZE <= size <= MAX_IMAGE_SIZE:
        raise ConfigError(f"shapes-attributes draws images of {MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE} "
                          f"pixels a side, got image_size={size}")
    count = SPLIT_SIZES[split] if limit is None else min(limit, SPLIT_SIZES[split])
    images, attributes = _cached_split(split, size, count)
    labels = frozen(2 * attributes[:, 0] + attributes[:, 1])
    return ImageData(images=images, labels=labels, class_names=list(CLASS_NAMES),
                     attributes=attributes, attribute_names=list(ATTRIBUTE_NAMES))
