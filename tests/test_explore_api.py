"""The explorer's JSON endpoints (capsgen/explore/api.py), called directly, for every family with a
decoder or a generator: what each run says it can show, that the images it returns are the
model's own output, and that bad parameters are one-line BadRequests that leave it working."""
from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from capsgen.cli import main
from capsgen.explore.api import BadRequest, NotFound
from capsgen.explore.server import open_explorer
from capsgen.report.figures import to_uint8_hwc
from tests.conftest import TINY_CAPSNET
from tests.test_acgan_task import TINY as TINY_ACGAN
from tests.test_gan_train import TINY_GAN
from tests.test_gcapsnet_task import TINY as TINY_GCAPS
from tests.test_poe_task import TINY as TINY_POE
from tests.test_poe_task import TOTAL as POE_STEPS
from tests.test_vcaps_task import TINY as TINY_VCAPS
from tests.test_vcaps_task import TINY_CONV, shapes16  # noqa: F401 - a fixture used below

COMMON = ["--data", "digits", "--batch-size", "16", "--seed", "0", "--no-progress", "--set", "threads=1"]
RUNS = {
    "capsnet": ["capsnet", "--steps", "6", *TINY_CAPSNET],
    "gcapsnet": ["gcapsnet", "--steps", "4", *TINY_GCAPS["fc-recon"]],
    "gcapsnet-baseline": ["gcapsnet", "--steps", "2", *TINY_GCAPS["baseline"]],
    "vcaps": ["vcaps", "--steps", "4", *TINY_VCAPS, *TINY_CONV],
    "poe": ["poe", "--steps", str(POE_STEPS), *TINY_POE],
    "dcgan": ["dcgan", "--steps", "2", *TINY_GAN],
    "capsulegan": ["capsulegan", "--steps", "2", *TINY_GAN],
    "acgan": ["acgan", "--steps", "2", *TINY_ACGAN],
}


def pixels(data_url: str) -> np.ndarray:
    """A PNG data URL's pixels as uint8 [H, W, C]."""
    assert data_url.startswith("data:image/png;base64,")
    arr = np.asarray(Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))))
    return arr[..., None] if arr.ndim == 2 else arr


def model_pixels(images: torch.Tensor) -> np.ndarray:
    return to_uint8_hwc(images)[0]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """One tiny trained run per family (trained once for the whole module)."""
    root = tmp_path_factory.mktemp("explore")
    out = {}
    for name, args in RUNS.items():
        out[name] = root / name
        assert main(["train", args[0], *COMMON, *args[1:], "--out", str(out[name])]) == 0, name
    return out


def explorer(runs, name):
    return open_explorer(runs[name])


def refused(ex, endpoint: str, params, needle: str) -> None:
    with pytest.raises(BadRequest, match=needle) as info:
        ex.handle(endpoint, params)
    assert len(str(info.value).splitlines()) == 1


@pytest.mark.parametrize("name", ["capsnet", "gcapsnet"])
def test_class_capsule_runs_encode_decode_and_refuse_bad_values(runs, name):
    ex = explorer(runs, name)
    desc = ex.handle("describe", {})
    layout = desc["layout"]
    assert layout["names"] == [str(k) for k in range(10)] and layout["bound"] == 1.0 and not layout["pairs"]
    want = ["decode-poses", "encode-poses"] + (["routing-maps"] if name == "capsnet" else [])
    assert desc["explorable"] == want and desc["test_images"] == 200
    enc = ex.handle("encode", {"index": 5})
    K, D = 10, layout["dim"]
    assert np.array(enc["poses"]).shape == (K, D) and sum(enc["active"]) == 1
    assert int(np.argmax(enc["scores"])) == enc["active"].index(True)
    if name == "capsnet":
        maps = np.array(enc["routing"])
        assert maps.shape[0] == K and maps.min() >= 0 and maps.max() <= 1
        # one forward pass gives the maps and exactly encode_poses' capsules; each child's
        # coupling sums to 1 over the classes, so the type-averaged maps do too
        x = ex.test.images[5:6]
        for a, b in zip(ex.task.encode_with_routing(x)[:3], ex.task.encode_poses(x)):
            assert torch.equal(a, b)
        assert np.allclose(maps.sum(0), 1, atol=1e-3)
    # Sabour's figure 4: change one value of the active capsule; the image is the model's decoding.
    poses, active = torch.tensor(enc["poses"]), torch.tensor(enc["active"])
    k = int(active.float().argmax())
    poses[k, 0] = 0.9
    got = pixels(ex.handle("decode", {"poses": poses.tolist(), "active": enc["active"]})["image"])
    assert np.array_equal(got, model_pixels(ex.task.decode_poses(poses[None], active[None])))
    assert not np.array_equal(got, pixels(enc["decoded"]))
    # another class's capsule decodes as well
    other = [j == (k + 1) % K for j in range(K)]
    ex.handle("decode", {"poses": poses.tolist(), "active": other})
    # bad parameters: one line each, and the explorer keeps answering
    big = poses.clone()
    big[k, 1] = 1.5
    refused(ex, "decode", {"poses": big.tolist(), "active": enc["active"]}, "outside")
    refused(ex, "decode", {"poses": poses[:, :-1].tolist(), "active": enc["active"]}, "must be a 10 x")
    refused(ex, "decode", {"poses": poses.tolist(), "active": [True] * K}, "exactly one")
    refused(ex, "decode", {"poses": poses.tolist()}, "'active'")
    refused(ex, "decode", {"poses": [["x"] * D] * K, "active": enc["active"]}, "finite numbers")
    refused(ex, "decode", {"poses": poses.tolist(), "active": [1] * K}, "true/false")
    refused(ex, "encode", {"index": 200}, "0..199")
    refused(ex, "encode", {"index": "3"}, "integer")
    refused(ex, "walk", {"seed_a": 0, "seed_b": 1, "t": [0.5]}, "cannot walk")
    refused(ex, "prior", {"seed": 0}, "cannot draw")
    with pytest.raises(NotFound, match="/api/describe"):
        ex.handle("nosuch", {})
    assert ex.handle("image", {"index": 0})["label"] is not None


def test_a_run_without_a_decoder_offers_no_capsules(runs):
    ex = explorer(runs, "gcapsnet-baseline")
    desc = ex.handle("describe", {})
    assert desc["explorable"] == [] and "layout" not in desc
    refused(ex, "decode", {"poses": [], "active": []}, "cannot decode")
    refused(ex, "encode", {"index": 0}, "cannot encode")


def test_vcaps_class_mode_encodes_samples_the_prior_and_decodes(runs):
    ex = explorer(runs, "vcaps")
    desc = ex.handle("describe", {})
    assert desc["explorable"] == ["decode-poses", "encode-poses", "pose-prior"]
    assert desc["layout"]["bound"] == 5.0 and not desc["layout"]["pairs"]
    active = [k == 3 for k in range(10)]
    drawn = ex.handle("prior", {"seed": 7, "active": active})
    poses = torch.tensor(drawn["poses"])
    assert poses[[k for k in range(10) if k != 3]].abs().sum() == 0 and poses[3].abs().sum() > 0
    assert drawn == ex.handle("prior", {"seed": 7, "active": active})          # a seed is a seed
    want = model_pixels(ex.task.decode_poses(poses[None], torch.tensor(active)[None]))
    assert np.array_equal(pixels(drawn["image"]), want)
    enc = ex.handle("encode", {"index": 2})
    assert np.array(enc["scores"]).max() <= 0                                   # -KL
    refused(ex, "prior", {"seed": -1, "active": active}, "'seed'")
    refused(ex, "prior", {"seed": 0, "active": [True] * 10}, "exactly one")
    refused(ex, "decode", {"poses": (poses * 0 + 6).tolist(), "active": active}, "outside")


def test_vcaps_attribute_mode_has_one_active_capsule_per_attribute(tmp_path, shapes16):  # noqa: F811
    run = tmp_path / "attr"
    assert main(["train", "vcaps", "--data", shapes16, "--steps", "2", "--batch-size", "16", "--seed", "0",
                 *TINY_VCAPS, *TINY_CONV, "--out", str(run)]) == 0
    ex = open_explorer(run)
    layout = ex.handle("describe", {})["layout"]
    A = len(layout["names"]) // 2
    assert layout["pairs"] and layout["names"][:2][1].endswith("=1")
    enc = ex.handle("encode", {"index": 0})
    active = np.array(enc["active"]).reshape(A, 2)
    assert (active.sum(1) == 1).all()
    swapped = np.array(enc["active"]).reshape(A, 2)[:, ::-1].reshape(-1).tolist()
    ex.handle("decode", {"poses": enc["poses"], "active": swapped})
    both = list(enc["active"])
    both[0] = both[1] = True
    refused(ex, "decode", {"poses": enc["poses"], "active": both}, "each attribute pair")


def test_poe_draws_one_capsule_on_either_domain_and_decodes_it(runs):
    ex = explorer(runs, "poe")
    desc = ex.handle("describe", {})
    assert desc["explorable"] == ["decode-poses", "capsule-sampling"] and desc["capsules"] == 4
    full = ex.handle("prior", {"seed": 1, "capsule": 2, "domain": "full"})
    half = ex.handle("prior", {"seed": 1, "capsule": 2, "domain": "restricted"})
    assert full["active"] == [False, False, True, False]
    p_full, p_half = torch.tensor(full["poses"]), torch.tensor(half["poses"])
    assert torch.equal(p_full[2].abs(), p_half[2].abs())                        # the same draw, maybe flipped
    # the images are those of capsgen sample --capsule: the same codes, decoded
    g = torch.Generator().manual_seed(1)
    want = model_pixels(ex.task.sample_capsules(1, 2, "full", g))
    assert np.array_equal(pixels(full["image"]), want)
    p_full[2, 0] = -p_full[2, 0]
    ex.handle("decode", {"poses": p_full.tolist(), "active": full["active"]})
    refused(ex, "prior", {"seed": 1, "capsule": 4}, "0..3")
    refused(ex, "prior", {"seed": 1, "capsule": 0, "domain": "half"}, "full or restricted")
    refused(ex, "encode", {"index": 0}, "cannot encode")


@pytest.mark.parametrize("name", ["dcgan", "capsulegan", "acgan"])
def test_gans_walk_between_two_seeds_with_the_discriminator_score(runs, name):
    ex = explorer(runs, name)
    desc = ex.handle("describe", {})
    assert desc["explorable"] == ["latent-walk"] and desc["latent_size"] > 0
    label = {"label": 3} if name == "acgan" else {}
    assert (desc["walk_classes"] is not None) == (name == "acgan")
    out = ex.handle("walk", {"seed_a": 4, "seed_b": 9, "t": [0, 0.5, 1], **label})
    assert len(out["images"]) == 3 and all(0 <= p <= 1 for p in out["p_real"])
    # t = 0 is seed_a's latent itself
    z = torch.randn(desc["latent_size"], generator=torch.Generator().manual_seed(4))[None]
    task = ex.task
    start = task.generate(z, torch.tensor([3])) if name == "acgan" else task.generate(z)
    assert np.array_equal(pixels(out["images"][0]), model_pixels(start))
    assert not np.array_equal(pixels(out["images"][0]), pixels(out["images"][2]))
    refused(ex, "walk", {"seed_a": 4, "seed_b": 9, "t": [1.5], **label}, r"\[0, 1\]")
    refused(ex, "walk", {"seed_a": 4, "seed_b": 9, "t": [], **label}, "'t'")
    refused(ex, "walk", {"seed_a": 4, "t": [0.1], **label}, "'seed_b'")
    refused(ex, "decode", {"poses": [], "active": []}, "cannot decode")
    if name == "acgan":
        refused(ex, "walk", {"seed_a": 4, "seed_b": 9, "t": [0.1], "label": 10}, "'label'")
    else:
        refused(ex, "walk", {"seed_a": 4, "seed_b": 9, "t": [0.1], "label": 1}, "no class")
