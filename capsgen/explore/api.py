"""What ``capsgen explore`` answers: one method per JSON endpoint, over a reopened run.

Each endpoint takes the request's parameters (a dict: the JSON body) and returns a JSON-able dict;
parameters that do not fit raise :class:`BadRequest`, which the server sends as HTTP 400 with
``{"error": "<one line>"}``. What an endpoint may do follows the run's declared capabilities
(:data:`~capsgen.train.capabilities.EXPLORABLE`), never its family's name. The model is used under
one lock (requests come from a threading server) in eval mode without gradients; nothing is
written anywhere. Images travel as PNG data URLs of the uint8 pixels
(:func:`~capsgen.report.figures.to_uint8_hwc`), so a client sees the model's exact output.
"""
from __future__ import annotations

import base64
import io
import math
import threading
from typing import Any, Callable

import torch
from PIL import Image

from capsgen.data.batch import Batch
from capsgen.errors import CapsgenError
from capsgen.report.figures import to_uint8_hwc
from capsgen.runs import OpenRun
from capsgen.train.capabilities import capabilities_of, explorable_of

TEST_IMAGES = 200      # test images offered to pick from (the first ones of the split)
MAX_WALK_POINTS = 16   # images one /api/walk request may ask for
MAX_SEED = 2 ** 31 - 1


class BadRequest(CapsgenError):
    """Parameters an endpoint cannot use; the message says which and what it accepts."""


class NotFound(CapsgenError):
    """An endpoint that does not exist."""


def png_data_url(image: torch.Tensor) -> str:
    """One image [C, H, W] in [0, 1] -> "data:image/png;base64,…" of its uint8 pixels."""
    arr = to_uint8_hwc(image[None])[0]
    buf = io.BytesIO()
    Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


# -- parameters ------------------------------------------------------------------------------
def _int(params: dict, name: str, lo: int, hi: int, default: int | None = None) -> int:
    value = params.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise BadRequest(f"'{name}' must be an integer in {lo}..{hi}, got {value!r}")
    return value


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BadRequest(f"'{name}' must hold finite numbers, got {value!r}")
    return float(value)


def _tensor(params: dict, name: str, shape: tuple[int, ...], kind: str = "number") -> torch.Tensor:
    """A nested JSON list of ``shape`` as a float32 tensor ("number") or a bool tensor ("bool")."""
    value = params.get(name)

    def walk(v: Any, dims: tuple[int, ...]) -> list:
        if not dims:
            if kind == "bool":
                if not isinstance(v, bool):
                    raise BadRequest(f"'{name}' must hold true/false values, got {v!r}")
                return v
            return _number(v, name)
        if not isinstance(v, list) or len(v) != dims[0]:
            raise BadRequest(f"'{name}' must be a {' x '.join(map(str, shape))} list")
        return [walk(x, dims[1:]) for x in v]

    data = walk(value, shape)
    return torch.tensor(data, dtype=torch.bool if kind == "bool" else torch.float32)


class Explorer:
    """The endpoints over one reopened run and (when its data could be read) its first test images."""

    def __init__(self, opened: OpenRun, test: Batch | None, test_problem: str = ""):
        self.opened, self.task = opened, opened.task
        self.test, self.test_problem = test, test_problem
        self.capabilities = capabilities_of(self.task)
        self.explorable = explorable_of(self.task)
        self.lock = threading.Lock()
        self.routes: dict[str, Callable[[dict], dict]] = {
            "describe": self.describe, "image": self.image, "encode": self.encode,
            "decode": self.decode, "prior": self.prior, "walk": self.walk}

    def handle(self, name: str, params: dict) -> dict:
        """The answer of endpoint ``name``; NotFound / BadRequest for what it cannot answer."""
        if name not in self.routes:
            raise NotFound(f"no endpoint /api/{name}; the endpoints are: "
                           + ", ".join(f"/api/{n}" for n in self.routes))
        with self.lock, torch.no_grad():
            try:
                return self.routes[name](params)
            except BadRequest:
                raise
            except (CapsgenError, ValueError) as exc:    # the model's own refusal of a value
                raise BadRequest(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None

    def _need(self, name: str, what: str) -> None:
        if name not in self.explorable:
            raise BadRequest(f"this {self.opened.train_config.family} run cannot {what}")

    def _test_index(self, params: dict, name: str = "index") -> int:
        if self.test is None:
            raise BadRequest(f"no test images: {self.test_problem}")
        return _int(params, name, 0, len(self.test) - 1)

    # -- endpoints ---------------------------------------------------------------------------
    def describe(self, params: dict) -> dict:
        """What the page may offer for this run."""
        info, cfg = self.opened.info, self.opened.train_config
        out: dict[str, Any] = {
            "run": str(self.opened.run.path), "family": cfg.family, "data": info.name,
            "shape": list(info.shape), "checkpoint": self.opened.checkpoint.stem,
            "capabilities": self.capabilities, "explorable": self.explorable,
            "classes": info.class_names, "test_images": 0 if self.test is None else len(self.test),
            "test_problem": self.test_problem}
        if "decode-poses" in self.explorable:
            layout = self.task.pose_layout()
            out["layout"] = {"names": list(layout.names), "dim": layout.dim, "bound": layout.bound,
                             "pairs": layout.pairs}
        if "capsule-sampling" in self.explorable:
            out["capsules"] = self.task.num_capsules()
            out["domains"] = ["full", "restricted"]
        if "latent-walk" in self.explorable:
            out["latent_size"] = self.task.latent_size()
            out["walk_classes"] = info.class_names if "class-conditional" in self.capabilities else None
        return out

    def image(self, params: dict) -> dict:
        """Test image ``index``: {"image", "label"}."""
        k = self._test_index(params)
        labels = self.test.labels
        return {"index": k, "image": png_data_url(self.test.images[k]),
                "label": None if labels is None else int(labels[k])}

    def encode(self, params: dict) -> dict:
        """Test image ``index`` as capsules: poses [K][D], scores [K], active [K], the image, its
        decoding from those poses and, with routing maps, the coupling maps [K][h][w]."""
        self._need("encode-poses", "encode images into capsules")
        k = self._test_index(params)
        x = self.test.images[k:k + 1]
        routing = "routing-maps" in self.explorable
        poses, scores, active, *maps = (self.task.encode_with_routing(x) if routing
                                        else self.task.encode_poses(x))
        out = {"index": k, "image": png_data_url(x[0]), "poses": poses[0].tolist(),
               "scores": scores[0].tolist(), "active": active[0].tolist(),
               "decoded": png_data_url(self.task.decode_poses(poses, active)[0]),
               "label": None if self.test.labels is None else int(self.test.labels[k])}
        if routing:
            out["routing"] = maps[0][0].round(decimals=4).tolist()
        return out

    def decode(self, params: dict) -> dict:
        """{"poses": [K][D], "active": [K] booleans} -> {"image"} (and "p_real" with a discriminator)."""
        self._need("decode-poses", "decode capsule values")
        layout = self.task.pose_layout()
        poses = _tensor(params, "poses", (len(layout.names), layout.dim))[None]
        active = _tensor(params, "active", (len(layout.names),), "bool")[None]
        image = self.task.decode_poses(poses, active)
        return {"image": png_data_url(image[0])}

    def prior(self, params: dict) -> dict:
        """Capsule values drawn from the prior: {"seed", "active": [K]} (pose prior) or {"seed",
        "capsule", "domain"} (capsule sampling) -> {"poses", "active", "image"}."""
        seed = _int(params, "seed", 0, MAX_SEED, 0)
        g = torch.Generator().manual_seed(seed)
        if "capsule-sampling" in self.explorable:
            n = self.task.num_capsules()
            capsule = _int(params, "capsule", 0, n - 1)
            domain = params.get("domain")
            if domain not in (None, "full", "restricted"):
                raise BadRequest(f"'domain' must be full or restricted, got {domain!r}")
            poses = self.task.capsule_poses(1, capsule, domain, g)
            active = torch.zeros(1, n, dtype=torch.bool)
            active[0, capsule] = True
        else:
            self._need("pose-prior", "draw capsule values from a prior")
            active = _tensor(params, "active", (len(self.task.pose_layout().names),), "bool")[None]
            poses = self.task.sample_poses(active, g)
        image = self.task.decode_poses(poses, active)
        return {"poses": poses[0].tolist(), "active": active[0].tolist(), "image": png_data_url(image[0])}

    def walk(self, params: dict) -> dict:
        """{"seed_a", "seed_b", "t": [fractions], "label"?} -> {"images": [...], "p_real": [...]}:
        the generator along its path from the latent of seed_a to that of seed_b, and the
        discriminator's P(real) of each image when the run has one."""
        self._need("latent-walk", "walk between latents")
        size = self.task.latent_size()
        ends = [torch.randn(size, generator=torch.Generator().manual_seed(_int(params, name, 0, MAX_SEED)))
                for name in ("seed_a", "seed_b")]
        t = params.get("t")
        if not isinstance(t, list) or not 1 <= len(t) <= MAX_WALK_POINTS:
            raise BadRequest(f"'t' must be a list of 1..{MAX_WALK_POINTS} fractions in [0, 1]")
        t = torch.tensor([_number(v, "t") for v in t])
        labels = None
        if "class-conditional" in self.capabilities:
            labels = torch.full((len(t),), _int(params, "label", 0, self.opened.info.num_classes - 1))
        elif "label" in params:
            raise BadRequest("this generator takes no class ('label')")
        images = self.task.walk(ends[0], ends[1], t, labels)
        out: dict[str, Any] = {"images": [png_data_url(im) for im in images]}
        if "discriminate" in self.capabilities:
            out["p_real"] = [round(float(p), 4) for p in self.task.discriminate(images)]
        return out
