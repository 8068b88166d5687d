"""``capsgen reproduce vcaps`` end to end on tiny budgets: the 8x8 digits (class mode: test error
beside a CapsNet, class fidelity, sample quality beside DCGAN and CapsuleGAN) and shapes-attributes
drawn at 16x16 (attribute mode: per-attribute accuracy, attribute-conditioned fidelity); the
paper's numbers in the report, resuming, and bad input."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from capsgen.cli import main
from capsgen.reproduce.vcaps.report import fmt
from tests.test_vcaps_task import shapes16  # noqa: F401 - the fixture

# Every model small enough for 8x8 / 16x16 images; each --set goes to the families that have it.
SHRINK = ["--set", "threads=1", "--set", "model.caps_dim=4", "--set", "model.enc_channels=8,8,8",
          "--set", "model.dec_hidden=32", "--set", "model.res_base=4", "--set", "model.res_max_channels=8",
          "--set", "model.res_group_width=4", "--set", "model.d_width=4",
          "--set", "model.conv_channels=8", "--set", "model.conv_kernel=3", "--set", "model.primary_capsules=4",
          "--set", "model.primary_kernel=3", "--set", "model.class_dim=4", "--set", "model.decoder_hidden=16",
          "--set", "model.g_width=8", "--set", "model.d_conv_channels=8", "--set", "model.d_conv_kernel=3",
          "--set", "model.d_primary_caps=4", "--set", "model.d_primary_kernel=3", "--set", "model.d_caps=4",
          "--set", "model.d_dense=16", "--set", "model.sample_every=0", "--set", "model.eval_n=64",
          "--set", "batch_size=16", "--set", "eval_limit=64"]


def reproduce(out: Path, *args: str) -> int:
    return main(["reproduce", "vcaps", "--out", str(out), "--budget", "0.04", "--n-metrics", "40", *SHRINK, *args])


def stages(folder: Path) -> dict:
    return json.loads((folder / "results.json").read_text())["stages"]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CAPSGEN_CACHE", str(tmp_path / "cache"))


@pytest.mark.slow
def test_class_data_report_resume_and_numbers(tmp_path, cache, capsys):
    out = tmp_path / "rep"
    assert reproduce(out, "--data", "digits", "--seeds", "0,1") == 0
    md = (out / "report.md").read_text()
    st = stages(out)
    for heading in ("## Scale", "## What was trained", "## Test error (Huang et al. §4.2)", "## Conditional fidelity",
                    "## Sample quality at equal wall clock", "## Pictures", "## Did Huang et al.'s claims hold",
                    "## Deviations from the paper"):
        assert heading in md, heading
    assert "0.30 (without reconstruction 0.36)" in md and "0.25 (without reconstruction 0.35)" in md
    for name in ("vcaps", "capsnet"):
        errors = [st[f"analysis/{name}/seed{k}"]["test_error"] for k in (0, 1)]
        assert all(0 <= e <= 1 for e in errors) and fmt(errors, 100) in md
        assert st[f"analysis/{name}/seed0"]["n"] == 359              # the whole digits test split
    for name in ("vcaps", "dcgan", "capsulegan"):
        assert st[f"samples/{name}/seed0"]["counts"]["samples"] == 40
        assert f"| {name} |" in md
        assert all(st[f"train/{name}/seed{k}"]["steps"] >= 1 for k in (0, 1))
    assert "capsnet" not in {k.split("/")[1] for k in st if k.startswith("samples/")}
    fid = st["conditional/vcaps/seed0"]["classes"]
    assert len(fid["per_class"]) == 10 and fid["samples_per_class"] == 4
    for png in ("vcaps_reconstructions.png", "vcaps_interpolation.png", "vcaps_class_grid.png", "dcgan_samples.png"):
        assert (out / "figures" / png).stat().st_size > 0 and f"figures/{png}" in md
    assert (out / "report.html").read_text().count("<table>") >= 4
    # running the same command again keeps every stage, retrains nothing, rewrites the report
    capsys.readouterr()
    assert reproduce(out, "--data", "digits", "--seeds", "0,1") == 0
    said = capsys.readouterr().out
    assert "train/vcaps/seed1: done before, kept" in said and "training for" not in said
    assert stages(out) == st
    # other settings in the same folder: refused in one line, nothing changed
    assert reproduce(out, "--data", "digits", "--seeds", "0") == 2
    assert "holds a reproduction with other settings (seeds)" in capsys.readouterr().err
    assert stages(out) == st


@pytest.mark.slow
def test_attribute_data_reports_per_attribute_accuracy_and_fidelity(tmp_path, cache, shapes16):  # noqa: F811
    out = tmp_path / "rep"
    assert reproduce(out, "--data", shapes16, "--models", "vcaps,dcgan") == 0
    st = stages(out)
    md = (out / "report.md").read_text()
    assert "## Attribute prediction (Huang et al. §4.1.1)" in md and "91.36" in md and "91.53" in md
    assert "## Test error" not in md and "analysis/capsnet/seed0" not in st
    acc = st["analysis/vcaps/seed0"]
    assert set(acc["per_attribute"]) == {"square", "blue", "large", "right", "bottom", "striped", "second_object",
                                         "light_background", "frame"} and acc["n"] == 400
    fid = st["conditional/vcaps/seed0"]["attributes"]
    assert fid["samples"] == 40 and 0 <= fid["all_equal"] <= fid["mean"] <= 1
    assert "all attributes at once" in md and st["evaluators"]["attributes"]["accuracy"] > 0.8
    assert "**attribute-conditioned generation follows the requested attributes**" in md
    cfg = json.loads((out / "runs" / "vcaps-s0" / "config.json").read_text())["model"]
    assert (cfg["mode"], cfg["alpha"], cfg["beta"], cfg["lr"]) == ("attributes", 0.025, 10.0, 2e-4)   # the paper's
    # ... with alpha meant for 256x256x3 images, and presence vectors, each named as a deviation
    assert cfg["alpha_pixels"] == 256 * 256 * 3 and cfg["presence_vectors"] is True
    assert "`model.alpha_pixels`" in md and "`model.presence_vectors`, not in the paper" in md
    for png in ("vcaps_attribute_grid.png", "vcaps_attribute_swap.png"):
        assert (out / "figures" / png).stat().st_size > 0


@pytest.mark.parametrize("args,message", [
    (["--data", "digits", "--budget", "0"], "--budget must be a positive number of minutes"),
    (["--data", "digits", "--set", "model.nope=1"], "--set model.nope: no model of this experiment has that field"),
    (["--data", "digits", "--set", "seed=3"], "--set seed: the reproduction sets it; use --seeds"),
    (["--data", "digits", "--models", "dcgan"], "vcaps always"),
    (["--data", "digits", "--n-metrics", "5"], "--n-metrics must be at least 10"),
])
def test_bad_input_is_one_line_and_makes_no_folder(tmp_path, capsys, args, message):
    out = tmp_path / "rep"
    assert main(["reproduce", "vcaps", "--out", str(out), "--budget", "1", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
