"""``capsgen reproduce capsulegan`` end to end on tiny shapes: report contents, seeds, both arms,
segmented training equal to one run, resume, bad input; and the verdict arithmetic."""
from __future__ import annotations

import json
import math
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch

from capsgen.cli import main

SHRINK = ["--set", "threads=1", "--set", "model.d_conv_kernel=3", "--set", "model.d_primary_kernel=3",
          "--set", "model.g_width=8", "--set", "model.d_width=8", "--set", "model.d_conv_channels=8",
          "--set", "model.d_primary_caps=4", "--set", "model.d_caps=4", "--set", "model.d_dense=16",
          "--set", "model.g_channels=16,8,8,3", "--set", "model.n_fixed=16", "--set", "model.eval_n=64",
          "--set", "train.eval_limit=64", "--set", "model.sample_every=0"]
EVAL = ["--n", "150", "--battle-n", "80", "--labelled", "20,40", "--generated", "200", "--semisup-test-n", "150",
        "--curve-n", "40"]
TINY = ["--data", "digits", "--budget", "0.005", "--steps", "2", "--seeds", "0,1", "--curve-points", "2",
        *EVAL, *SHRINK]
MODELS = ("karmakar-dcgan", "karmakar-capsulegan", "jaiswal-dcgan", "jaiswal-capsulegan")


def reproduce(out: Path, *args: str) -> int:
    return main(["reproduce", "capsulegan", "--out", str(out), *args])


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("reproduce")
    mp = pytest.MonkeyPatch()
    mp.setenv("CAPSGEN_CACHE", str(root / "cache"))
    try:
        assert reproduce(root / "rep", *TINY) == 0
    finally:
        mp.undo()
    return root / "rep"


def test_report_has_every_section_with_measured_and_paper_numbers(report):
    md = (report / "report.md").read_text()
    for heading in ("## Models: what \"cpu scale\" means", "## Deviations from the papers", "## Confounds within each",
                    "## Training", "### equal wall clock (0.005 minutes", "### equal iterations (2 steps",
                    "## Samples", "## Sample quality along training", "## Sample metrics",
                    "## Generative Adversarial Metric", "## Semi-supervised classification",
                    "## Did the papers' claims hold", "## Scale and timing"):
        assert heading in md, heading
    for row in ("| karmakar-dcgan | Karmakar |", "| jaiswal-capsulegan | Jaiswal et al. 2018 |", "| real-vs-real floor |",
                "| jaiswal-capsulegan (A) vs jaiswal-dcgan (B), seed 1 |", "| **mean ± sd over 2 seeds** |",
                "| Jaiswal et al. 2018, MNIST |", "| labelled-only (no unlabelled images) |",
                "Jaiswal et al. 2018, MNIST: CapsuleGAN"):
        assert row in md, row
    assert "0.79" in md and "0.2724" in md and "30,000" in md                 # the papers' numbers
    assert "capsgen reproduce capsulegan --out" in md
    # what the scale means, from the configs: Karmakar's recipe, in words, with parameter counts
    assert "alternate: 1 D step(s) on 16 real + 16 fake" in md and "+ prelu -> primary capsules" in md
    assert "Karmakar: linear -> 3x3 convs 16,8,8,3,C" in md and "LeakyReLU" in md
    # generated deviations: the --set shrinkage against the paper preset, the data, the length
    assert re.search(r"\*\*karmakar-capsulegan\*\* \(Karmakar\): data: digits \(paper: MNIST\);.*"
                     r"model\.d_conv_channels: 8 \(paper: 256\);.*model\.d_primary_kernel: 3 \(paper: 7\)", md)
    assert "equal iterations: training length: 2 steps (paper: 10,000 iterations)" in md
    assert "jaiswal-capsulegan vs jaiswal-dcgan (Jaiswal et al. 2018): none — the pair differs only" in md
    for claim in ("Karmakar §5.2: CapsuleGAN reaches a given sample quality in fewer iterations",
                  "GAM (Jaiswal et al. 2018, §5.3)", "Semi-supervised (Jaiswal et al. 2018, §5.4)"):
        assert claim in md
    assert "paper 00" not in md                                               # papers named by author
    pics = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert "figures/fid_curves.png" in pics and len(pics) >= 10 and all((report / p).is_file() for p in pics)
    html = (report / "report.html").read_text()
    assert html.count("<table>") == sum(l.startswith("|---") for l in md.splitlines())
    assert html.count("<img") == len(pics)


def test_results_json_holds_every_stage_of_every_arm_model_and_seed(report):
    st = json.loads((report / "results.json").read_text())["stages"]
    for seed in (0, 1):
        for name in MODELS:
            t = st[f"train/steps/{name}/seed{seed}"]
            assert t["steps"] == 2 and [p["steps"] for p in t["curve"]] == [1, 2]
            assert all(math.isfinite(p["fid"]) for p in t["curve"])
            tt = st[f"train/time/{name}/seed{seed}"]
            assert tt["seconds"] >= 0.3 and len(tt["curve"]) == 2 and tt["train"]["steps"] is None
            assert st[f"metrics/steps/{name}/seed{seed}"]["counts"]["samples"] == 150
        assert st[f"battle/time/jaiswal-capsulegan-vs-jaiswal-dcgan/seed{seed}"]["seed"] == seed
        assert [r["labelled"] for r in st[f"semisup/steps/jaiswal-capsulegan/seed{seed}"]["rows"]] == [20, 40]
        assert st[f"semisup/labelled-only/seed{seed}"]["labelled_draw"] == "random"
    kc, kd = st["train/steps/karmakar-capsulegan/seed0"], st["train/steps/karmakar-dcgan/seed0"]
    assert kc["model"]["preset"] == kd["model"]["preset"] == "karmakar"
    for m in (kc["model"], kd["model"]):     # both arms of Karmakar's pair with Karmakar's settings
        assert m["generator"] == "karmakar" and m["schedule"] == "alternate" and m["objective"] == "bce"
        assert m["lr"] == 2e-4 and m["lr_d"] is None
    assert kc["train"]["batch_size"] == kd["train"]["batch_size"] == 16
    assert kc["model"]["d_conv_act"] == "prelu" and kc["model"]["discriminator"] == "caps-dense"
    assert kd["model"]["d_norm"] == "none" and kd["model"]["d_extra_layers"] == 2
    jc = st["train/steps/jaiswal-capsulegan/seed0"]
    assert jc["model"]["discriminator"] == "caps1" and jc["model"]["lr_d"] is None
    # different seeds are different runs
    assert st["train/steps/jaiswal-dcgan/seed0"]["curve"] != st["train/steps/jaiswal-dcgan/seed1"]["curve"]


def test_segmented_run_equals_the_printed_train_command(report, tmp_path):
    # The reproduction stops at its curve points and resumes; the report's one-line command must
    # give the very same weights.
    from capsgen.train.checkpoint import read_checkpoint

    md = (report / "report.md").read_text()
    line = next(l for l in md.splitlines() if l.startswith("capsgen train capsulegan --preset jaiswal")
                and "--steps 2" in l)
    argv = shlex.split(line)[1:]
    ours = Path(argv[argv.index("--out") + 1])
    argv[argv.index("--out") + 1] = str(tmp_path / "again")
    assert main([*argv, "--no-progress"]) == 0
    a, _ = read_checkpoint(ours / "checkpoints" / "last.safetensors")
    b, _ = read_checkpoint(tmp_path / "again" / "checkpoints" / "last.safetensors")
    keys = [k for k in a if k.startswith(("module.", "optim."))]
    assert keys and all(torch.equal(a[k], b[k]) for k in keys)


def test_rerun_keeps_finished_stages_and_redoes_missing_ones(report, capsys, monkeypatch):
    monkeypatch.setenv("CAPSGEN_CACHE", str(report.parent / "cache"))
    path = report / "results.json"
    res = json.loads(path.read_text())
    kept = res["stages"]["metrics/steps/jaiswal-dcgan/seed0"]
    del res["stages"]["battle/steps/jaiswal-capsulegan-vs-jaiswal-dcgan/seed1"]   # as if interrupted here
    path.write_text(json.dumps(res))
    capsys.readouterr()
    assert reproduce(report, *TINY) == 0
    out = capsys.readouterr().out
    assert "train/steps/karmakar-dcgan/seed1: done before, kept" in out
    assert "battle/steps/jaiswal-capsulegan-vs-jaiswal-dcgan/seed1 …" in out
    again = json.loads(path.read_text())["stages"]
    assert again["metrics/steps/jaiswal-dcgan/seed0"] == kept


def test_other_settings_refuse_the_folder_and_bad_input_is_one_line(report, capsys, tmp_path):
    before = (report / "results.json").read_bytes()
    argv = [*TINY]
    argv[argv.index("--steps") + 1] = "3"
    assert reproduce(report, *argv) == 2
    err = capsys.readouterr().err
    assert "other settings (steps)" in err and err.count("\n") == 1
    assert (report / "results.json").read_bytes() == before
    bad = [
        (["--data", "digits"], "give --budget MINUTES"),
        (["--data", "digits", "--budget", "0"], "--budget must be a positive"),
        (["--data", "digits", "--steps", "2", "--curve-n", "5"], "--curve-n must be at least 10"),
        (["--data", "digits", "--steps", "2", "--seeds", "1,1"], "seeds must be distinct"),
        (["--data", "digits", "--steps", "2", "--models", "dcgan"], "choose from karmakar-dcgan"),
        (["--data", "digits", "--steps", "2", "--lr", "slow"], "invalid choice"),
        (["--data", "digits", "--steps", "2", "--labelled-draw", "stratified"], "invalid choice"),
        (["--data", "digits", "--steps", "2", "--set", "model.nope=1"], "unknown --set key"),
        (["--data", "digits", "--steps", "2", "--scale", "paper"], "too small for kernels 9 and 7"),
        (["--data", "mnist", "--data-dir", str(tmp_path), "--budget", "1"], ""),
    ]
    for k, (args, message) in enumerate(bad):
        out = tmp_path / f"x{k}"
        assert reproduce(out, *args) == 2, args
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (args, err)
        assert not out.exists(), args                       # refused before any folder is made
    assert main(["reproduce", "nosuch", "--data", "digits", "--budget", "1"]) == 2
    assert "capsulegan" in capsys.readouterr().err


def test_asymmetric_rates_are_named_as_a_confound_and_one_seed_resolves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("CAPSGEN_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "rep"
    assert reproduce(out, "--data", "digits", "--steps", "1", "--seeds", "3", "--curve-points", "0",
                     "--models", "jaiswal-capsulegan,jaiswal-dcgan", "--lr", "asymmetric",
                     "--labelled-draw", "balanced", *EVAL, *SHRINK) == 0
    md = (out / "report.md").read_text()
    assert ("**the discriminators learn at different rates (2e-05 for jaiswal-capsulegan, 0.0002 for "
            "jaiswal-dcgan)**") in md
    assert "discriminator learning rate: 2e-05 (jaiswal-capsulegan) vs 0.0002 (jaiswal-dcgan)" in md
    assert "model.lr_d: 2e-05 (paper: 0.0002)" in md                           # and a deviation from the paper
    assert "**asymmetric** (capsule discriminators at 2e-5" in md
    assert "not resolved (one seed: no spread)" in md and "claim **held**" not in md and "claim **did not" not in md
    assert "karmakar" not in md.split("## Models")[1].split("## Deviations")[0]   # only the models asked for
    st = json.loads((out / "results.json").read_text())["stages"]
    assert set(k.split("/")[0] for k in st) == {"evaluator", "segment", "train", "metrics", "battle", "semisup"}
    assert st["semisup/labelled-only/seed3"]["labelled_draw"] == "balanced"
    assert "## Sample quality along training" not in md and st["train/steps/jaiswal-dcgan/seed3"]["curve"] == []


def test_real_unlabelled_row_uses_what_is_left_when_labelled_subsets_overlap_little():
    # Independent draws of 400 and 800 labelled digits cover more than 800 of the 1,438 training
    # images, so fewer than `generated` remain: the row uses all of them, none labelled.
    from capsgen.data import load_split
    from capsgen.eval.semisup import labelled_subset
    from capsgen.reproduce.capsulegan.run import real_unlabelled, semisup_real_row
    from capsgen.reproduce.capsulegan.spec import Settings

    train = load_split("digits", "train", None)
    for draw in ("random", "balanced"):
        s = Settings(data="digits", out="unused", steps=1, labelled=(400, 800), generated=1000, semisup_test_n=100,
                     labelled_draw=draw)
        used = np.zeros(len(train), bool)
        for n in s.labelled:
            used[labelled_subset(train.labels, n, 5, draw)] = True
        images = real_unlabelled(s, 5)
        assert len(images) == (~used).sum() < s.generated
        assert np.array_equal(images, train.images[~used])
    row = semisup_real_row(s, 5)
    assert row["generated"] == len(images) and [r["labelled"] for r in row["rows"]] == [400, 800]


# ----------------------------------------------------------------------- verdict arithmetic
def test_mean_sd_and_the_non_overlap_rule():
    from capsgen.reproduce.capsulegan.report import compare, mean_sd, pm

    m, sd, n = mean_sd([1.0, 2.0, 3.0])
    assert (m, n) == (2.0, 3) and sd == pytest.approx(1.0)
    assert math.isnan(mean_sd([4.0])[1]) and mean_sd([1.0, math.inf])[0] == math.inf
    assert pm([1.0, 2.0, 3.0], ".1f") == "2.0 ± 1.0" and pm([4.0], ".1f") == "4.0" and pm([]) == "–"
    assert compare([10, 11, 12], [20, 21, 22]) == "a"               # intervals apart: A lower
    assert compare([20, 21, 22], [10, 11, 12]) == "b"
    assert compare([10, 12, 14], [13, 15, 17]) == "spread"          # 12 ± 2 and 15 ± 2 overlap
    assert compare([10, 12, 14], [13, 15, 17], lower_is_better=False) == "spread"
    assert compare([0.9, 0.91], [0.5, 0.52], lower_is_better=False) == "a"
    assert compare([1.0], [5.0, 6.0]) == "one seed" and compare([1, math.inf], [2, 3]) == "not finite"


def test_gam_verdict_over_seeds():
    from capsgen.reproduce.capsulegan.report import gam_verdict

    def battles(rs, rt):
        return [{"r_samples": a, "r_test": b} for a, b in zip(rs, rt)]

    assert gam_verdict(battles([0.7, 0.8, 0.75], [1.0, 1.02, 0.99]), 0.05)[0] == "a"
    assert gam_verdict(battles([1.3, 1.4, 1.35], [1.0, 1.0, 1.0]), 0.05)[0] == "b"
    assert gam_verdict(battles([0.7, 1.2, 0.9], [1.0, 1.0, 1.0]), 0.05)[0] == "spread"     # 0.93 ± 0.25
    assert gam_verdict(battles([0.7, 0.8], [0.7, 0.8]), 0.05)[0] == "r_test"
    assert gam_verdict(battles([0.7], [1.0]), 0.05)[0] == "one seed"


def test_deviations_and_confounds_come_from_the_configs():
    from capsgen.config import to_dict
    from capsgen.reproduce.capsulegan.spec import confounds, deviations, spec_of
    from capsgen.runs import make_configs

    def cfg(family, *pairs, **train):
        t, m = make_configs(family, list(pairs), preset="karmakar", data="digits", **train)
        return to_dict(m), to_dict(t)

    paper, _ = cfg("capsulegan")
    caps, tcaps = cfg("capsulegan", "model.d_conv_channels=64", "model.lr_d=2e-5", steps=500)
    spec = spec_of("karmakar-capsulegan")
    assert deviations(paper, {"batch_size": 16, "steps": 10000}, paper, spec, "mnist") == []
    # a run's config as read back from config.json (lists) against the in-memory preset (tuples)
    assert deviations(json.loads(json.dumps(paper)), {"batch_size": 16, "steps": 10000}, paper, spec,
                      "mnist") == []
    devs = deviations(caps, tcaps, paper, spec, "fashion-mnist")
    assert devs == ["data: fashion-mnist (paper: MNIST)", "model.d_conv_channels: 64 (paper: 256)",
                    "model.lr_d: 2e-05 (paper: 0.0002)", "training length: 500 steps (paper: 10,000 iterations)"]
    conv, tconv = cfg("dcgan", steps=500)
    # the discriminator and objective are the treatment; the slowed capsule D is a confound
    assert confounds(caps, conv, tcaps, tconv, ("c", "d")) == ["discriminator learning rate: 2e-05 (c) vs 0.0002 (d)"]
    conv2, tconv2 = cfg("dcgan", "model.g_channels=64,32,16,3", "model.diffaugment=cutout", steps=500,
                        batch_size=32)
    found = confounds(paper, conv2, tcaps, tconv2, ("c", "d"))
    assert any(f.startswith("model.g_channels: 128,64,32,3 (c) vs 64,32,16,3 (d)") for f in found)
    assert any(f.startswith("model.diffaugment: none (c) vs cutout (d)") for f in found)
    assert "train.batch_size: 16 (c) vs 32 (d)" in found


# ------------------------------------------------------------------ every report: deviations and verdicts
VERDICTS = ("**held**", "**did not hold**", "**not resolved")
REPORTS = sorted(Path(__file__).resolve().parents[1].glob("reports/*/report.md"))


def test_a_report_without_a_deviations_list_is_refused(tmp_path):
    from capsgen.reproduce.common import write_report

    with pytest.raises(ValueError, match="Deviations"):
        write_report(tmp_path, "t", "# t\n\n## Results\n\n- a number\n")
    with pytest.raises(ValueError, match="Deviations"):
        write_report(tmp_path, "t", "# t\n\n## Deviations from the paper\n\nnone\n\n## Other\n\n- x\n")
    assert not (tmp_path / "report.md").exists()
    assert write_report(tmp_path, "t", "# t\n\n## Deviations from the paper\n\n- smaller\n").is_file()


@pytest.mark.parametrize("report", REPORTS, ids=lambda p: p.parent.name)
def test_every_committed_report_lists_deviations_and_gives_every_claim_a_verdict(report):
    from capsgen.reproduce.common import check_deviations

    md = report.read_text()
    check_deviations(md)
    lines = md.splitlines()
    claims = [k for k, line in enumerate(lines) if line.startswith("## Did ")]
    for k in claims:
        for line in lines[k + 1:]:
            if line.startswith("## "):
                break
            # a measurement no paper makes a claim on says so, and needs no verdict
            if line.startswith("- ") and not any(m in line for m in ("no claim of the paper", "neither paper reports it")):
                assert any(v in line for v in VERDICTS), line[:160]
