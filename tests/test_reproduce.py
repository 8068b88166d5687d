"""``capsgen reproduce capsulegan`` end to end on tiny shapes: report contents, resume, bad input."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from capsgen.cli import main

TINY = ["--data", "digits", "--budget", "0.01", "--n", "150", "--battle-n", "80", "--labelled", "20,40",
        "--generated", "200", "--semisup-test-n", "150", "--batch-size", "32",
        "--set", "threads=1", "--set", "model.d_conv_kernel=3", "--set", "model.d_primary_kernel=3",
        "--set", "model.g_width=8", "--set", "model.d_width=8", "--set", "model.d_conv_channels=8",
        "--set", "model.d_primary_caps=4", "--set", "model.d_caps=4", "--set", "model.d_dense=16",
        "--set", "model.n_fixed=16", "--set", "model.eval_n=64", "--set", "train.eval_limit=64"]


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("reproduce")
    mp = pytest.MonkeyPatch()
    mp.setenv("CAPSGEN_CACHE", str(root / "cache"))
    try:
        assert main(["reproduce", "capsulegan", "--out", str(root / "rep"), *TINY]) == 0
    finally:
        mp.undo()
    return root / "rep"


def test_report_has_every_section_with_measured_and_paper_numbers(report):
    md = (report / "report.md").read_text()
    for heading in ("## Models and training", "## Samples", "## Sample metrics", "## Generative Adversarial Metric",
                    "## Semi-supervised classification", "## Did the papers' claims hold", "## Scale and timing"):
        assert heading in md
    # Measured rows and the papers' rows side by side.
    for row in ("| dcgan |", "| capsulegan-bce |", "| capsulegan-margin |", "| real-vs-real floor |",
                "| capsulegan-margin (A) vs dcgan (B) |", "| Jaiswal et al. 2018, MNIST |", "| Jaiswal et al. 2018, CIFAR-10 |",
                "| labelled-only (no unlabelled images) |", "Jaiswal et al. 2018, MNIST: CapsuleGAN"):
        assert row in md, row
    assert "0.79" in md and "0.2724" in md                      # the paper's GAM and table 1 numbers
    assert "capsgen reproduce capsulegan --out" in md          # the exact command
    # Every picture the report shows exists, relative to the report.
    pics = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert len(pics) >= 7 and all((report / p).is_file() for p in pics)
    html = (report / "report.html").read_text()
    assert html.count("<table>") == sum(l.startswith("|---") for l in md.splitlines()) == 4
    assert html.count("<img") == len(pics)


def test_results_json_holds_every_stage(report):
    res = json.loads((report / "results.json").read_text())
    st = res["stages"]
    assert {"evaluator", "train/dcgan", "train/capsulegan-bce", "train/capsulegan-margin",
            "battle/capsulegan-margin-vs-dcgan", "semisup/real-unlabelled"} <= set(st)
    for name in ("dcgan", "capsulegan-bce", "capsulegan-margin"):
        t = st[f"train/{name}"]
        assert t["steps"] >= 1 and t["seconds"] >= 0.6          # the 0.01-minute budget was spent
        assert st[f"metrics/{name}"]["counts"]["samples"] == 150
        assert [r["labelled"] for r in st[f"semisup/{name}"]["rows"]] == [20, 40]
    assert st["train/capsulegan-margin"]["model"]["discriminator"] == "caps1"
    assert st["train/capsulegan-bce"]["model"]["objective"] == "bce"


def test_rerun_keeps_finished_stages_and_redoes_missing_ones(report, capsys, monkeypatch):
    monkeypatch.setenv("CAPSGEN_CACHE", str(report.parent / "cache"))
    path = report / "results.json"
    res = json.loads(path.read_text())
    kept = res["stages"]["metrics/dcgan"]
    del res["stages"]["battle/capsulegan-bce-vs-dcgan"]          # as if interrupted during this stage
    path.write_text(json.dumps(res))
    capsys.readouterr()
    assert main(["reproduce", "capsulegan", "--out", str(report), *TINY]) == 0
    out = capsys.readouterr().out
    assert "train/dcgan: done before, kept" in out and "battle/capsulegan-bce-vs-dcgan …" in out
    again = json.loads(path.read_text())["stages"]
    assert again["metrics/dcgan"] == kept and "battle/capsulegan-bce-vs-dcgan" in again


def test_other_settings_refuse_the_folder_and_bad_input_is_one_line(report, capsys, tmp_path):
    before = (report / "results.json").read_bytes()
    argv = ["reproduce", "capsulegan", "--out", str(report), *TINY]
    argv[argv.index("--budget") + 1] = "0.02"
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "other settings (budget)" in err and err.count("\n") == 1
    assert (report / "results.json").read_bytes() == before
    assert main(["reproduce", "capsulegan", "--data", "digits", "--budget", "0", "--out", str(tmp_path / "x")]) == 2
    assert "--budget must be a positive" in capsys.readouterr().err
    assert main(["reproduce", "capsulegan", "--data", "mnist", "--data-dir", str(tmp_path), "--budget", "1",
                 "--out", str(tmp_path / "y")]) == 2
    assert capsys.readouterr().err.count("\n") == 1 and not (tmp_path / "y").exists()
    assert main(["reproduce", "nosuch", "--data", "digits", "--budget", "1"]) == 2
    assert "capsulegan" in capsys.readouterr().err


def test_real_unlabelled_row_uses_what_is_left_when_labelled_subsets_overlap_little():
    # Independent draws of 400 and 800 labelled digits cover more than 800 of the 1,438 training
    # images, so fewer than `generated` remain: the row uses all of them, none labelled.
    from capsgen.data import load_split
    from capsgen.eval.semisup import stratified_labelled_subset
    from capsgen.reproduce.capsulegan.run import real_unlabelled, semisup_real_row
    from capsgen.reproduce.capsulegan.spec import Settings

    s = Settings(data="digits", budget=0.01, out="unused", labelled=(400, 800), generated=1000,
                 semisup_test_n=100)
    train = load_split("digits", "train", None)
    used = np.zeros(len(train), bool)
    for n in s.labelled:
        used[stratified_labelled_subset(train.labels, n, s.seed)] = True
    images = real_unlabelled(s)
    assert len(images) == (~used).sum() < s.generated
    assert np.array_equal(images, train.images[~used])
    row = semisup_real_row(s)                                   # used to raise "fewer than generated"
    assert row["generated"] == len(images) and [r["labelled"] for r in row["rows"]] == [400, 800]
