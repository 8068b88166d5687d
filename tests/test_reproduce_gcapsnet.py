"""``capsgen reproduce gcapsnet`` end to end on the 8x8 digits with tiny networks and budgets:
report contents beside Chen et al.'s numbers, results per seed, AC-GAN images, attacks, resuming
(kept stages and recomputed ones agree), settings per family, and bad input."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from capsgen.cli import main
from capsgen.reproduce.gcapsnet.report import mean_sd, pct
from capsgen.reproduce.overrides import applicable
from capsgen.reproduce.gcapsnet.spec import MODEL_NAMES, PAPER_TABLE2, Settings

# Every model small enough for 8x8 images; each --set goes to the families that have the field.
SHRINK = ["--set", "threads=1", "--set", "model.conv_channels=8", "--set", "model.conv_kernel=3",
          "--set", "model.primary_caps=4", "--set", "model.primary_capsules=4", "--set", "model.primary_kernel=3",
          "--set", "model.class_dim=4", "--set", "model.decoder_hidden=16", "--set", "model.baseline_conv=8,8",
          "--set", "model.baseline_kernels=3,3", "--set", "model.baseline_strides=1,2",
          "--set", "model.baseline_padding=1,1", "--set", "model.baseline_fc=16", "--set", "model.shift_pixels=1",
          "--set", "model.g_channels=16,8,8", "--set", "model.d_channels=8,16", "--set", "model.d_strides=2,1",
          "--set", "model.sample_every=0", "--set", "model.eval_n=64"]
FAST = ["--data", "digits", "--budget", "0.05", "--epochs", "0.1", "--seeds", "0,1", "--models", "baseline,fc,conv",
        "--gan-epochs", "1", "--per-class", "12", "--attacks", "fgsm", "--attack-n", "40",
        "--substitute-steps", "20", *SHRINK]


def reproduce(out: Path, *args: str) -> int:
    return main(["reproduce", "gcapsnet", "--out", str(out), *args])


@pytest.fixture(scope="module")
def fast(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gcaps") / "rep"
    assert reproduce(out, *FAST) == 0
    return out


def stages(folder: Path) -> dict:
    return json.loads((folder / "results.json").read_text())["stages"]


def test_report_sets_measurements_beside_chen_et_al(fast):
    md = (fast / "report.md").read_text()
    for heading in ("## Scale", "## Test error versus parameters (Chen et al., table 2)",
                    "### capsgen's paper-size networks against every count Chen et al. print",
                    "## Error on AC-GAN images (Chen et al., table 3)",
                    "## Adversarial attacks (Chen et al., 4.3 and supplementary 6.2)",
                    "## Did Chen et al.'s claims hold at this scale?", "## Timing"):
        assert heading in md, heading
    st = stages(fast)
    for name in ("baseline", "fc", "conv"):
        errors = [st[f"train/{name}/seed{k}"]["test_error"] for k in (0, 1)]
        assert all(0 <= e <= 1 for e in errors)
        assert f"| {name} |" in md and pct(errors) in md          # mean ± sd over the two seeds
    assert "| vanilla CNN | " in md and "0.91 ± 0.09" in md and "35.4M" in md     # table 2, MNIST side
    assert "| fc | total | 6.8M | 6,815,744 | yes |" in md                          # paper-size counts
    assert "19.800" in md and "23.500" in md and "11.35" in md and "8.92" in md     # tables 3 and 4.3
    assert "digits (1,438 training and 359 test images, 8x8x1)" in md and "at most 0.1 epochs" in md
    assert "random shifts of up to 1 pixels" in md
    assert "capsgen reproduce gcapsnet --out" in md
    html = (fast / "report.html").read_text()
    assert "<table>" in html and "Chen et al." in html


def test_results_files_and_pictures(fast):
    st = stages(fast)
    assert sorted(st) == sorted([f"train/{m}/seed{k}" for m in ("baseline", "fc", "conv") for k in (0, 1)]
                                + ["table3/epoch1", "attack/baseline/fgsm", "attack/fc/fgsm", "attack/conv/fgsm"])
    fc = st["train/fc/seed0"]
    assert fc["describe"]["arch"] == "fc" and fc["params"] == fc["describe"]["params"]
    assert fc["steps"] == 2 and (fast / fc["run"] / "checkpoints" / "last.safetensors").is_file()   # 0.1 epoch of 14
    t3 = st["table3/epoch1"]
    assert set(t3["errors"]) == {"baseline", "fc", "conv"} and all(len(v) == 2 for v in t3["errors"].values())
    saved = np.load(fast / "acgan" / "epoch-1.npz")
    assert saved["images"].shape == (120, 8, 8, 1) and saved["images"].dtype == np.uint8
    assert np.array_equal(saved["labels"], np.repeat(np.arange(10), 12))
    assert (fast / t3["grid"]).is_file() and t3["epochs_done"] == 1
    att = st["attack/fc/fgsm"]
    assert att["n"] == 40 and att["mode"].startswith("black-box") and 0 <= att["attacked_accuracy"] <= 1
    for rel in att["files"].values():
        assert (fast / rel).is_file()


def test_running_again_keeps_every_stage(fast, capsys):
    before = (fast / "results.json").read_text()
    capsys.readouterr()
    assert reproduce(fast, *FAST) == 0
    out = capsys.readouterr().out
    assert out.count("done before, kept") == 10 and "training for" not in out
    assert json.loads((fast / "results.json").read_text())["stages"] == json.loads(before)["stages"]


def test_an_interrupted_reproduction_recomputes_the_same_numbers(fast, tmp_path):
    # A stage lost before it was recorded is redone from the run folders: training continues the
    # run (already at its budget here), the AC-GAN draws the same images, so the numbers agree.
    copy = tmp_path / "rep"
    shutil.copytree(fast, copy)
    data = json.loads((copy / "results.json").read_text())
    lost = ("train/fc/seed1", "table3/epoch1")
    for key in lost:
        del data["stages"][key]
    (copy / "results.json").write_text(json.dumps(data))
    assert reproduce(copy, *FAST) == 0
    again, first = stages(copy), stages(fast)
    assert again["train/fc/seed1"]["test_error"] == first["train/fc/seed1"]["test_error"]
    assert again["train/fc/seed1"]["steps"] == first["train/fc/seed1"]["steps"]
    assert again["table3/epoch1"]["errors"] == first["table3/epoch1"]["errors"]


def test_other_settings_in_the_same_folder_are_refused(fast, capsys):
    capsys.readouterr()
    assert reproduce(fast, *[a if a != "0,1" else "0,1,2" for a in FAST]) == 2
    err = capsys.readouterr().err
    assert "other settings (seeds)" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("args,message", [
    (["--budget", "0"], "--budget must be a positive"),
    (["--set", "model.nosuch=1"], "no model of this experiment has that field"),
    (["--gan-family", "capsnet"], "cannot draw images of a chosen class"),
    (["--models", "multilayer"], "none of --models multilayer trains on 1-channel data"),
    (["--seeds", "1,1"], "--seeds must be distinct"),
    (["--set", "train.batch_size=8"], "the reproduction sets it; use --batch-size"),
])
def test_bad_input_is_one_line_and_makes_no_folder(tmp_path, capsys, args, message):
    base = ["--data", "digits", "--budget", "0.05", *SHRINK]
    assert reproduce(tmp_path / "r", *base, *args) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_each_family_takes_only_the_settings_it_has_and_uses():
    extra = ("model.primary_caps=4", "model.primary_capsules=4", "model.baseline_fc=16", "model.decoder_hidden=16",
             "model.g_channels=16,8,8", "threads=1", "model.lr=0.01")
    assert applicable("capsnet", [], extra) == ["model.primary_capsules=4", "model.decoder_hidden=16", "threads=1",
                                                "model.lr=0.01"]
    # fc without a decoder: neither the baseline's fields nor the decoder's take effect
    assert applicable("gcapsnet", ["model.preset=fc", "model.arch=fc"], extra) == [
        "model.primary_caps=4", "threads=1", "model.lr=0.01"]
    assert applicable("gcapsnet", ["model.arch=fc", "model.reconstruction=true"], extra) == [
        "model.primary_caps=4", "model.decoder_hidden=16", "threads=1", "model.lr=0.01"]
    assert applicable("acgan", [], extra) == ["model.g_channels=16,8,8", "threads=1", "model.lr=0.01"]


def test_models_per_channel_count_and_paper_rows():
    gray = Settings("digits", 1.0, "x", channels=1).model_specs()
    color = Settings("cifar10", 1.0, "x", channels=3).model_specs()
    assert [m.name for m in gray] == [n for n in MODEL_NAMES if n != "multilayer"]
    assert [m.name for m in color] == list(MODEL_NAMES)
    for m in gray + color:
        assert m.paper_row_for(1) in ("", *PAPER_TABLE2) and m.paper_row_for(3) in ("", *PAPER_TABLE2)
    # the paper's CIFAR-10 G-CapsNets (2.67M) have no decoder: their figures stand beside ours without one
    by = {m.name: m for m in color}
    assert by["fc"].paper_row_for(3) == "FC G-CapsNets" and by["fc-recon"].paper_row_for(3) == ""
    assert by["fc"].preset_for(3) == "cifar-fc" and by["multilayer"].preset_for(1) == "-"
    assert mean_sd([0.1, 0.3])[1] == pytest.approx(0.1414213, rel=1e-5) and mean_sd([0.2])[1] is None


@pytest.mark.slow
def test_every_model_and_attack_with_two_gan_epochs(tmp_path):
    out = tmp_path / "all"
    args = ["--data", "digits", "--budget", "0.05", "--epochs", "0.1", "--seeds", "0,1", "--gan-epochs", "2",
            "--per-class", "10", "--attack-n", "40", "--uap-iters", "5", "--substitute-steps", "20", *SHRINK]
    assert reproduce(out, *args) == 0
    st = stages(out)
    trained = {k.split("/")[1] for k in st if k.startswith("train/")}
    assert trained == set(MODEL_NAMES) - {"multilayer"}
    assert {"table3/epoch1", "table3/epoch2"} <= set(st) and st["table3/epoch2"]["epochs_done"] == 2
    attacked = {f"attack/{m}/{a}" for m in ("baseline", "capsnet", "fc", "conv") for a in ("fgsm", "pgd", "uap")}
    assert attacked <= set(st)
    assert len({st[k]["n"] for k in attacked}) == 1           # every model meets the same images
    md = (out / "report.md").read_text()
    assert "| capsnet |" in md and "| conv-recon |" in md and "uap, white-box" in md
    assert "| capsnet | pgd, white-box |" in md and "White-box PGD (no claim of the paper" in md
    assert "## Deviations from the paper" in md and "read as ε = 8/255" in md
    assert "1135/10000 and 892/10000" in md                   # Chen et al.'s black-box figures named
    assert "Table 3: the FC G-CapsNet errs less than the baseline" in md


def test_claims_call_a_difference_inside_the_seed_spread_not_resolved():
    from capsgen.reproduce.gcapsnet.report import lower, verdict
    assert lower([0.10, 0.11, 0.12], [0.14, 0.15, 0.16]) == "lower"
    assert lower([0.14, 0.15, 0.16], [0.10, 0.11, 0.12]) == "higher"
    assert lower([0.139, 0.140, 0.142], [0.135, 0.139, 0.144]) == "not resolved"     # overlapping ± sd
    assert lower([0.10], [0.20]) == "not resolved"                                  # one seed: no spread
    assert verdict(["lower", "lower"]) == "held"
    assert verdict(["lower", "not resolved"]) == "not resolved"
    assert verdict(["lower", "higher", "not resolved"]) == "did not hold"
    assert verdict([]) == "not resolved"
