"""``capsgen reproduce twins`` end to end on tiny budgets (the 8x8 digits): the three arms per seed,
equal steps taken from the capsule run, verdicts in the report, resuming, and bad input."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from capsgen.cli import main
from capsgen.reproduce.twins.spec import METRICS, headline

# Small enough for 8x8 digits; each --set goes to the families that have it.
SHRINK = ["--set", "threads=1", "--set", "model.g_width=8", "--set", "model.d_width=8", "--set", "model.d_caps=4",
          "--set", "model.d_dense=16", "--set", "model.sample_every=0", "--set", "model.eval_n=32",
          "--set", "eval_limit=32"]


def reproduce(out: Path, *args: str) -> int:
    return main(["reproduce", "twins", "--data", "digits", "--out", str(out), "--budget", "0.03", "--n", "40",
                 "--pairs", "capsulegan:trunk-hinge", *SHRINK, *args])


def results(folder: Path) -> dict:
    return json.loads((folder / "results.json").read_text())


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CAPSGEN_CACHE", str(tmp_path / "cache"))


def test_three_arms_per_seed_equal_steps_and_verdicts(tmp_path, cache, capsys):
    out = tmp_path / "rep"
    assert reproduce(out, "--seeds", "0,1") == 0
    st = results(out)["stages"]
    for seed in (0, 1):
        cap, tt, ts = (st[f"train/capsulegan:trunk-hinge/s{seed}/{arm}"] for arm in ("capsule", "twin-time", "twin-steps"))
        assert ts["steps"] == cap["steps"] >= 1                      # equal steps: the capsule run's count
        assert tt["steps"] >= 1 and tt["ms_per_step"] > 0
        assert cap["params"].keys() == ts["params"].keys() == {"generator", "discriminator"}
        assert cap["params"]["generator"] == ts["params"]["generator"]
        for arm in ("capsule", "twin-time", "twin-steps"):
            m = st[f"eval/capsulegan:trunk-hinge/s{seed}/{arm}"]["metrics"]
            assert {"fid", "precision", "recall", "coverage"} <= m.keys()
    cfg = json.loads((out / st["train/capsulegan:trunk-hinge/s0/twin-steps"]["run"] / "config.json").read_text())
    assert cfg["model"]["twin"] is True and cfg["model"]["preset"] == "trunk-hinge"
    assert cfg["train"]["steps"] == st["train/capsulegan:trunk-hinge/s0/capsule"]["steps"]
    md = (out / "report.md").read_text()
    assert "## Summary" in md and "## Deviations and limits" in md and "## capsulegan:trunk-hinge" in md
    rows = [line for line in md.splitlines() if line.startswith("| capsulegan:trunk-hinge |")]
    assert len(rows) == 8                                      # 2 axes x 4 sample metrics
    assert all(any(v in r for v in ("**capsule better**", "**twin better**", "**not resolved**")) for r in rows)
    for arm in ("capsule", "twin-time", "twin-steps"):
        assert (out / "figures" / f"capsulegan-trunk-hinge-{arm}.png").is_file()
    assert (out / "report.html").is_file()
    before = (out / "results.json").read_text()
    capsys.readouterr()
    assert reproduce(out, "--seeds", "0,1") == 0                # continuing a finished one changes nothing
    assert "done before, kept" in capsys.readouterr().out
    assert results(out)["stages"] == json.loads(before)["stages"]


def test_equal_steps_first_gives_the_twin_the_capsule_runs_wall_clock(tmp_path, cache):
    out = tmp_path / "rep"
    assert main(["reproduce", "twins", "--data", "digits", "--out", str(out), "--steps", "6", "--n", "40",
                 "--seeds", "0", "--pairs", "capsulegan:trunk-hinge", "--no-grids", *SHRINK]) == 0
    st = results(out)["stages"]
    cap = st["train/capsulegan:trunk-hinge/s0/capsule"]
    assert cap["steps"] == st["train/capsulegan:trunk-hinge/s0/twin-steps"]["steps"] == 6
    cfg = json.loads((out / st["train/capsulegan:trunk-hinge/s0/twin-time"]["run"] / "config.json").read_text())
    assert cfg["train"]["steps"] is None and cfg["train"]["minutes"] == pytest.approx(cap["seconds"] / 60)
    assert "6 steps per capsule run" in (out / "report.md").read_text()


@pytest.mark.parametrize("args,message", [
    (["--pairs", "dcgan"], "dcgan has no twin"),
    (["--pairs", "nosuch:x"], "unknown family"),
    (["--set", "model.nosuch=1"], "no model of this experiment has that field"),
    (["--set", "train.steps=5"], "the reproduction sets it"),
    (["--budget", "0"], "--budget must be a positive"),
    (["--n", "3"], "--n must be at least 10"),
    (["--steps", "5"], "not both"),
    (["--pairs", "capsnet"], "too small for kernels"),         # the network, checked before any folder
    (["--steps", "0"], "not both"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, cache, capsys, args, message):
    out = tmp_path / "rep"
    argv = ["reproduce", "twins", "--data", "digits", "--out", str(out), "--budget", "0.03",
            "--pairs", "capsulegan:trunk-hinge", *args]
    # a later --pairs / --budget / --n wins over the defaults above
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not out.exists()


def test_headline_picks_every_capability_metric_present():
    res = {"classify": {"test_error": 0.1}, "generate": {"samples": {"fid": 3.0, "precision": 0.5}},
           "class-conditional": {"mean": 0.7}}
    assert headline(res) == {"test_error": 0.1, "fid": 3.0, "precision": 0.5, "class_fidelity": 0.7}
    assert len({m[0] for m in METRICS}) == len(METRICS)


def test_listed():
    from capsgen.reproduce import EXPERIMENTS

    assert "twins" in EXPERIMENTS
