"""``capsgen sample`` / ``capsgen interpolate``: output contract and one-line errors."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from capsgen.cli import main
from capsgen.report.figures import CAPTION_LINE
from tests.conftest import TINY_CAPSNET
from tests.test_gan_train import TINY_GAN


@pytest.fixture(scope="module")
def gan_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("gan") / "run"
    assert main(["train", "dcgan", "--data", "digits", "--steps", "4", "--batch-size", "16",
                 "--out", str(run), *TINY_GAN]) == 0
    return run


def load(path: Path) -> np.ndarray:
    with np.load(path) as f:
        assert list(f.keys()) == ["images"]
        return f["images"]


def test_sample_contract(gan_run, tmp_path, capsys):
    out, grid = tmp_path / "s.npz", tmp_path / "s.png"
    assert main(["sample", str(gan_run), "--n", "10", "--out", str(out), "--grid", str(grid), "--seed", "3"]) == 0
    images = load(out)
    assert images.dtype == np.uint8 and images.shape == (10, 8, 8, 1)
    assert images.std() > 0
    with Image.open(grid) as im:                       # 4 x 3 grid of 8x8 images, 2-px gaps, x2, under a caption
        assert im.width == (4 * 10 + 2) * 2 and (im.height - (3 * 10 + 2) * 2) % CAPTION_LINE == 2
        assert "seed 3" in im.info["Description"]
    assert '"shape": [10, 8, 8, 1]' in capsys.readouterr().out
    again = tmp_path / "again.npz"
    assert main(["sample", str(gan_run), "--n", "10", "--out", str(again), "--seed", "3"]) == 0
    assert np.array_equal(load(again), images)          # same seed, same images
    assert main(["sample", str(gan_run), "--n", "10", "--out", str(again), "--seed", "4", "--force"]) == 0
    assert not np.array_equal(load(again), images)


def test_interpolate_grid(gan_run, tmp_path):
    out = tmp_path / "i.png"
    assert main(["interpolate", str(gan_run), "--out", str(out), "--rows", "3", "--cols", "5"]) == 0
    with Image.open(out) as im:
        assert im.width == (5 * 10 + 2) * 2 and (im.height - (3 * 10 + 2) * 2) % CAPTION_LINE == 2


@pytest.fixture(scope="module")
def capsnet_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("caps") / "run"
    assert main(["train", "capsnet", "--data", "digits", "--steps", "1", "--batch-size", "8",
                 "--out", str(run), "--no-progress", "--set", "threads=1", "--set", "eval_limit=16",
                 *TINY_CAPSNET]) == 0
    return run


def one_line_error(capsys, argv: list[str], fragment: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert fragment in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_sample_errors(gan_run, capsnet_run, tmp_path, capsys):
    out = str(tmp_path / "s.npz")
    one_line_error(capsys, ["sample", str(capsnet_run), "--n", "4", "--out", out], "capsnet run, which cannot generate")
    one_line_error(capsys, ["sample", str(tmp_path), "--n", "4", "--out", out], "not a capsgen run folder")
    for n in ("0", "-3"):
        one_line_error(capsys, ["sample", str(gan_run), "--n", n, "--out", out], "--n must be a positive")
    one_line_error(capsys, ["sample", str(gan_run), "--n", "4", "--out", str(tmp_path / "s.npy")], "must end in .npz")
    one_line_error(capsys, ["sample", str(gan_run), "--n", "4", "--out", str(tmp_path / "no" / "s.npz")],
                   "does not exist")
    one_line_error(capsys, ["sample", str(gan_run), "--n", "4", "--out", out, "--grid", str(tmp_path / "g.jpg")],
                   "must end in .png")
    one_line_error(capsys, ["sample", str(gan_run), "--out", out], "required: --n")
    one_line_error(capsys, ["interpolate", str(gan_run), "--out", str(tmp_path / "i.png"), "--cols", "1"],
                   "--cols >= 2")
    assert not (tmp_path / "s.npz").exists()


def test_sample_unwritable_output(gan_run, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        target = locked if not os.access(locked, os.W_OK) else Path("/sys")  # root ignores file modes
        err = one_line_error(capsys, ["sample", str(gan_run), "--n", "4", "--out", str(target / "s.npz")],
                             f"{target / 's.npz'}: ")
        assert "not writable" in err or "cannot write" in err
        assert not (target / "s.npz").exists()
    finally:
        locked.chmod(0o700)
