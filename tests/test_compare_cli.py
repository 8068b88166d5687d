"""``capsgen battle`` (GAM) and ``capsgen semisup`` (Label Spreading) on tiny trained runs."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from capsgen.cli import main
from capsgen.compare import battle, semisup
from capsgen.eval.gam import accuracy
from capsgen.runs import open_run
from tests.test_gan_train import TINY_GAN


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("battle")
    caps, conv = root / "caps", root / "conv"
    assert main(["train", "capsulegan", "--data", "digits", "--steps", "6", "--batch-size", "16",
                 "--out", str(caps), *TINY_GAN]) == 0
    assert main(["train", "dcgan", "--data", "digits", "--steps", "6", "--batch-size", "16",
                 "--out", str(conv), *TINY_GAN, "--set", "d_extra_layers=1"]) == 0   # with batch norm
    return caps, conv


def last_json(out: str) -> dict:
    return json.loads(next(l for l in out.splitlines() if l.startswith("{")))


def test_battle_reports_all_pairings_ratios_and_bn_mode(two_runs, capsys):
    caps, conv = two_runs
    assert main(["battle", str(caps), str(conv), "--n", "200", "--tol", "0.1"]) == 0
    out = capsys.readouterr().out
    res = last_json(out)
    assert set(res["pairings"]) == {"A(D_A(G_A(z)))", "A(D_A(G_B(z)))", "A(D_B(G_A(z)))",
                                    "A(D_B(G_B(z)))", "A(D_A(x_test))", "A(D_B(x_test))"}
    assert res["tolerance"] == 0.1 and res["n"] == 200
    p = res["pairings"]
    if p["A(D_A(G_B(z)))"] > 0:
        assert math.isclose(res["r_samples"], p["A(D_B(G_A(z)))"] / p["A(D_A(G_B(z)))"])
    # The DCGAN discriminator has batch norm and is scored with its running statistics.
    assert res["batch_norm"]["layers_in_D"]["B"] > 0 and "running statistics" in res["batch_norm"]["mode"]
    assert "verdict:" in out and "r_test" in out


def test_battle_pairing_matches_direct_scoring(two_runs):
    """Recompute one pairing by hand: D_B on G_A's samples, drawn with the same seed."""
    caps, conv = two_runs
    res = battle(caps, conv, n=100, seed=5)
    ta = open_run(caps).task
    tb = open_run(conv).task
    fakes = ta.sample(100, torch.Generator().manual_seed(5))
    with torch.no_grad():
        p = torch.sigmoid(tb.D(fakes * 2 - 1)).reshape(-1)   # conv D: one logit per image
    assert res["pairings"]["A(D_B(G_A(z)))"] == pytest.approx(float((p <= 0.5).float().mean()))
    assert res["pairings"]["A(D_B(G_A(z)))"] == accuracy(tb.discriminate(fakes), 0)


def test_battle_errors(two_runs, capsys):
    caps, conv = two_runs
    assert main(["battle", str(caps), str(caps)]) == 2
    assert "two different runs" in capsys.readouterr().err
    assert main(["battle", str(caps), str(conv), "--n", "5000"]) == 2
    assert "larger than the" in capsys.readouterr().err
    assert main(["battle", str(caps), str(conv.parent / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing" in err


def test_semisup_from_run_and_file(two_runs, tmp_path, capsys):
    caps, _ = two_runs
    assert main(["semisup", str(caps), "--labelled", "20,50", "--generated", "300", "--test-n", "200"]) == 0
    res = last_json(capsys.readouterr().out)
    assert [r["labelled"] for r in res["rows"]] == [20, 50]
    assert res["generated"] == 300 and res["data"] == "digits" and res["kind"] == "run"
    assert all(0.0 <= r["error"] <= 1.0 for r in res["rows"])
    # The same images from a file give the same errors (sampling is seeded).
    npz = tmp_path / "s.npz"
    assert main(["sample", str(caps), "--n", "300", "--out", str(npz), "--seed", "0"]) == 0
    capsys.readouterr()
    assert main(["semisup", str(npz), "--data", "digits", "--labelled", "20,50", "--generated", "300",
                 "--test-n", "200"]) == 0
    res2 = last_json(capsys.readouterr().out)
    assert [r["error"] for r in res2["rows"]] == [r["error"] for r in res["rows"]]


def test_semisup_labelled_draw_is_the_papers_random_by_default(two_runs, tmp_path, capsys):
    """Jaiswal et al. draw the labelled images at random; --labelled-draw balanced is the option."""
    caps, _ = two_runs
    npz = tmp_path / "s.npz"
    assert main(["sample", str(caps), "--n", "200", "--out", str(npz), "--seed", "0"]) == 0
    capsys.readouterr()
    errors = {}
    for extra, draw in (([], "random"), (["--labelled-draw", "balanced"], "balanced")):
        assert main(["semisup", str(npz), "--data", "digits", "--labelled", "20", "--generated", "200",
                     "--test-n", "200", *extra]) == 0
        out = capsys.readouterr().out
        res = last_json(out)
        assert res["labelled_draw"] == draw and f"labelled images drawn {draw}" in out
        errors[draw] = res["rows"][0]["error"]
    # 20 of digits at random with seed 0 are not 2 per class, so the two fits differ
    assert errors["random"] != errors["balanced"]
    assert main(["semisup", str(npz), "--data", "digits", "--labelled-draw", "stratified"]) == 2
    assert "invalid choice" in capsys.readouterr().err


def test_semisup_real_unlabelled_data_helps_over_none():
    """Sanity of the protocol: real unlabelled digits must not hurt 30 labelled ones, and the
    labelled-only baseline at 30 labels is clearly worse than with 1000 labels."""
    none = semisup(None, "digits", (30, 1000), 0, test_n=300, progress=False)
    errs = {r["labelled"]: r["error"] for r in none["rows"]}
    assert errs[1000] < errs[30]
    from capsgen.data import load_split

    train = load_split("digits", "train")
    npz_images = train.images[:1000]
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "real.npz"
        np.savez(path, images=npz_images)
        real = semisup(path, "digits", (30,), 1000, test_n=300, progress=False)
    assert real["rows"][0]["error"] <= errs[30] + 0.02


def test_semisup_errors(two_runs, tmp_path, capsys):
    caps, _ = two_runs
    assert main(["semisup", str(caps), "--labelled", "10,x"]) == 2
    assert "comma-separated counts" in capsys.readouterr().err
    npz = tmp_path / "few.npz"
    np.savez(npz, images=np.zeros((5, 8, 8, 1), np.uint8))
    assert main(["semisup", str(npz), "--data", "digits", "--generated", "50"]) == 2
    assert "fewer than --generated" in capsys.readouterr().err
    assert main(["semisup", str(npz), "--generated", "5"]) == 2
    assert "--data NAME is required" in capsys.readouterr().err
