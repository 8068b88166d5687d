"""``capsgen attack RUN --method fgsm|pgd|uap``: on a tiny classifier trained on the 8x8 digits,
each attack keeps its examples in the ε-ball and [0, 1], lowers the accuracy and writes its
pictures into a new folder; every mistake is one line that leaves no folder and no change."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from capsgen.cli import main
from capsgen.data import load_split
from capsgen.errors import CapsgenError
from capsgen.eval.attack_runs import attack_run, parse_epsilon
from capsgen.eval.attacks import CURVE_EPSILONS
from capsgen.runs import open_run

TINY_CLASSIFIER = ["--no-progress", "--set", "threads=1", "--set", "channels=8,16", "--set", "hidden=32"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A small CNN, 60 steps on the digits (about 87 % test accuracy)."""
    out = tmp_path_factory.mktemp("classifier") / "run"
    assert main(["train", "classifier", "--data", "digits", "--steps", "60", "--batch-size", "32", "--seed", "0",
                 "--out", str(out), *TINY_CLASSIFIER]) == 0
    return out


@pytest.fixture(scope="module")
def gan_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dcgan") / "run"
    assert main(["train", "dcgan", "--data", "digits", "--steps", "1", "--batch-size", "16", "--out", str(out),
                 "--no-progress", "--set", "g_width=8", "--set", "d_width=8", "--set", "n_fixed=4",
                 "--set", "eval_n=16", "--set", "eval_limit=16"]) == 0
    return out


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory) -> tuple[Path, Path]:
    """A classifier trained on a folder of two classes, and the same images without class folders."""
    root = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(0)
    for k, name in enumerate(("dark", "light")):
        for i in range(20):
            pixels = rng.integers(0, 128, (8, 8), dtype=np.uint8) + 127 * k
            for where in (root / "labelled" / name, root / "flat"):
                where.mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels, mode="L").save(where / f"{name}{i:02d}.png")
    out = root / "run"
    assert main(["train", "classifier", "--data", "folder", "--data-dir", str(root / "labelled"), "--steps", "3",
                 "--batch-size", "8", "--out", str(out), *TINY_CLASSIFIER]) == 0
    return out, root / "flat"


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def attack(capsys, run: Path, *args: str) -> tuple[dict, list[str]]:
    assert main(["attack", str(run), "--device", "cpu", *args]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    return json.loads(lines[0]), lines[1:]


METHODS = [
    ("fgsm", ["--eps", "0.1", "--substitute-steps", "150"], "black-box (LeNet substitute)", "accuracy_vs_epsilon.png"),
    ("fgsm", ["--eps", "8/255", "--white-box"], "white-box", "accuracy_vs_epsilon.png"),
    ("pgd", ["--eps", "0.1", "--steps", "5"], "white-box", None),
    ("uap", ["--eps", "0.2", "--iters", "60", "--objective", "untargeted"], "white-box", "accuracy_vs_iteration.png"),
]


@pytest.mark.parametrize("method,args,mode,curve", METHODS, ids=["fgsm-black", "fgsm-white", "pgd", "uap"])
def test_each_attack_stays_in_the_ball_and_lowers_accuracy(run, tmp_path, capsys, method, args, mode, curve):
    out = tmp_path / "out"
    before = snapshot(run)
    res, table = attack(capsys, run, "--method", method, "--out", str(out), *args)
    eps = parse_epsilon(args[1])
    assert res["method"] == method and res["mode"] == mode and res["epsilon"] == eps and res["n"] == 359
    assert res["attacked_accuracy"] < res["clean_accuracy"] - 0.05 and res["clean_accuracy"] > 0.6
    expected = {"examples.png", "adversarial.npz"} | ({curve} if curve else set())
    assert {p.name for p in out.iterdir()} == expected and snapshot(run) == before   # the run is untouched
    for name in expected - {"adversarial.npz"}:
        assert Image.open(out / name).size[0] > 0
    # examples.png: clean / perturbation / attacked rows of 10 digits (2-pixel gaps, scale 4)
    assert Image.open(out / "examples.png").size == ((10 * 10 + 2) * 4, (3 * 10 + 2) * 4)

    data = np.load(out / "adversarial.npz")
    clean, adv = torch.from_numpy(data["clean"]), torch.from_numpy(data["adversarial"])
    assert adv.dtype == torch.float32 and adv.shape == (359, 1, 8, 8) and float(data["epsilon"]) == eps
    assert (adv - clean).abs().max() <= eps and adv.min() >= 0 and adv.max() <= 1
    assert res["max_abs_perturbation"] == pytest.approx((adv - clean).abs().max().item())
    x, y = load_split("digits", "test").to_tensors()
    assert torch.equal(clean, x) and np.array_equal(data["labels"], y.numpy())
    # the saved examples are the ones scored: the reopened run predicts what the file says
    task = open_run(run, "best").task
    with torch.no_grad():
        pred = task.class_scores(adv).argmax(1)
    assert np.array_equal(data["pred_adversarial"], pred.numpy())
    assert (pred == y).float().mean().item() == pytest.approx(res["attacked_accuracy"])

    assert table[1].startswith("attack:") and f"{100 * res['attacked_accuracy']:.2f}%" in table[4]
    if method == "fgsm":
        c = res["curve"]
        assert set(CURVE_EPSILONS) <= set(c["epsilon"]) and eps in c["epsilon"]
        assert c["accuracy"][c["epsilon"].index(eps)] == pytest.approx(res["attacked_accuracy"])
        assert c["accuracy"][-1] < res["clean_accuracy"]                       # ε = 32/255
        if mode.startswith("black"):
            assert res["substitute"]["steps"] == 150 and res["substitute"]["clean_accuracy"] > 0.5
    if method == "uap":
        c = res["curve"]
        assert c["iteration"][0] == 0 and c["iteration"][-1] == 60
        assert c["accuracy"][-1] == pytest.approx(res["attacked_accuracy"])


def test_same_seed_same_examples_and_default_folder(run, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["--method", "pgd", "--eps", "0.05", "--steps", "2", "--n", "40"]
    res, _ = attack(capsys, run, *args, "--seed", "3")
    default = tmp_path / f"attacks-{run.name}-pgd"
    assert Path(res["out"]) == Path(f"attacks-{run.name}-pgd") and default.is_dir() and res["n"] == 40
    again, _ = attack(capsys, run, *args, "--seed", "3", "--out", "again")
    other, _ = attack(capsys, run, *args, "--seed", "4", "--out", "other")
    a, b, c = (np.load(Path(p) / "adversarial.npz")["adversarial"] for p in (default, "again", "other"))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    # the default folder now exists: a second attack must not write into it
    listing = snapshot(default)
    assert main(["attack", str(run), "--device", "cpu", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert "is not empty; give a new or empty folder with --out" in err and len(err.splitlines()) == 1
    assert snapshot(default) == listing


BAD = [
    (["--method", "fgsm", "--eps", "2"], "--eps must be in [0, 1]"),
    (["--method", "fgsm", "--eps=-1/255"], "--eps must be in [0, 1]"),
    (["--method", "pgd", "--eps", "abc"], "--eps must be a number in [0, 1] or a fraction such as 8/255"),
    (["--method", "pgd", "--eps", "8/0"], "--eps must be a number"),
    (["--method", "pgd", "--eps", "nan"], "--eps must be in [0, 1]"),
    (["--method", "cw"], "invalid choice: 'cw'"),
    (["--method", "fgsm", "--n", "0"], "--n must be a positive integer"),
    (["--method", "fgsm", "--steps", "5"], "--steps applies to pgd only"),
    (["--method", "pgd", "--white-box"], "--white-box applies to fgsm"),
    (["--method", "fgsm", "--white-box", "--substitute-steps", "9"], "--substitute-steps applies to black-box fgsm"),
    (["--method", "uap", "--objective", "targeted"], "unknown --objective 'targeted'"),
]


@pytest.mark.parametrize("args,message", BAD)
def test_bad_input_is_one_line_and_writes_nothing(run, tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    before = snapshot(run)
    assert main(["attack", str(run), "--device", "cpu", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert list(tmp_path.iterdir()) == [] and snapshot(run) == before


def test_unknown_method_is_refused_by_the_library_too(run, tmp_path):
    with pytest.raises(CapsgenError, match="unknown attack method 'cw'; choose one of: fgsm, pgd, uap"):
        attack_run(run, "cw", out=tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_a_run_that_cannot_classify_names_what_it_can_do(gan_run, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["attack", str(gan_run), "--method", "fgsm", "--out", str(out), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert "a dcgan run, which cannot classify images; it can: generate, discriminate" in err
    assert len(err.splitlines()) == 1 and not out.exists()


def test_out_folders_that_are_not_new_or_are_in_the_run_are_refused(run, tmp_path, capsys):
    full = tmp_path / "full"
    full.mkdir()
    (full / "notes.txt").write_text("mine")
    afile = tmp_path / "file"
    afile.write_text("x")
    before = snapshot(run)
    for out, message in [(full, "is not empty"), (afile, "exists and is not a folder"),
                         (run / "attacks", "inside the run folder"), (run, "inside the run folder"),
                         (tmp_path / "no" / "such", "does not exist")]:
        assert main(["attack", str(run), "--method", "pgd", "--out", str(out), "--device", "cpu"]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
    assert (full / "notes.txt").read_text() == "mine" and [p.name for p in full.iterdir()] == ["notes.txt"]
    assert afile.read_text() == "x" and snapshot(run) == before and not (tmp_path / "no").exists()
    empty = tmp_path / "empty"
    empty.mkdir()   # an existing empty folder is fine
    res, _ = attack(capsys, run, "--method", "pgd", "--steps", "1", "--n", "5", "--out", str(empty))
    assert res["out"] == str(empty) and (empty / "adversarial.npz").is_file()


def test_data_without_labels_cannot_train_a_substitute(folder_run, tmp_path, capsys):
    run, flat = folder_run
    out = tmp_path / "out"
    argv = ["attack", str(run), "--method", "fgsm", "--data-dir", str(flat), "--out", str(out), "--device", "cpu"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "train split has no class labels, so a LeNet substitute cannot be trained on it" in err
    assert len(err.splitlines()) == 1 and not out.exists()
    assert main([*argv, "--white-box"]) == 2
    err = capsys.readouterr().err.strip()
    assert "test split has no class labels, so there is no accuracy to attack" in err and not out.exists()
    # with its labelled data the same run is attacked
    res, _ = attack(capsys, run, "--method", "fgsm", "--substitute-steps", "5", "--out", str(out))
    assert res["n"] == 4 and res["data"] == "folder"
