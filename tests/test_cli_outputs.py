"""Every option that names an output path refuses a file that already exists (untouched, one line)
unless --force is given; list arguments with an empty item get one line; a closed stdout is no
traceback."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from capsgen.cli import main
from tests.test_reliability_runs import one_line_error

VCAPS_TINY = ["train", "vcaps", "--data", "digits", "--seed", "0", "--batch-size", "16", "--steps", "4",
              "--no-progress", "--set", "threads=1", "--set", "caps_dim=4", "--set", "eval_n=32",
              "--set", "n_fixed=8", "--set", "enc_channels=8,8,8", "--set", "dec_hidden=32"]
USER_BYTES = b"the user's own file\n"


@pytest.fixture(scope="module")
def vcaps_run(tmp_path_factory) -> Path:
    """A tiny vcaps run on digits: it generates and classifies."""
    out = tmp_path_factory.mktemp("outputs") / "run"
    assert main([*VCAPS_TINY, "--out", str(out)]) == 0
    return out



# Every capsgen command with an option naming an output path, the file it names already existing.
# {run} is the trained run, {tmp} a scratch folder, {file} the user's existing file.
EXISTING_OUTPUTS = {
    "sample --out": ["sample", "{run}", "--n", "4", "--out", "{file}.npz"],
    "sample --grid": ["sample", "{run}", "--n", "4", "--out", "{tmp}/new.npz", "--grid", "{file}.png"],
    "interpolate --out": ["interpolate", "{run}", "--rows", "1", "--cols", "2", "--out", "{file}.png"],
    "export --out": ["export", "{run}", "--out", "{file}.safetensors"],
    "train --out": [*VCAPS_TINY, "--out", "{file}"],
    "demo --out": ["demo", "--steps", "1", "--no-verdict", "--out", "{file}"],
    "attack --out": ["attack", "{run}", "--method", "pgd", "--n", "4", "--out", "{file}"],
    "reproduce vcaps --out": ["reproduce", "vcaps", "--data", "digits", "--budget", "1", "--out", "{file}"],
}


@pytest.mark.parametrize("name", sorted(EXISTING_OUTPUTS))
def test_an_existing_output_file_is_refused_untouched(vcaps_run, tmp_path, capsys, name):
    argv = EXISTING_OUTPUTS[name]
    suffix = next((Path(a).suffix for a in argv if a.startswith("{file}")), "")
    existing = tmp_path / f"mine{suffix}"
    existing.write_bytes(USER_BYTES)
    fill = {"{run}": str(vcaps_run), "{tmp}": str(tmp_path), "{file}": str(tmp_path / "mine")}
    concrete = []
    for a in argv:
        for k, v in fill.items():
            a = a.replace(k, v)
        concrete.append(a)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert "mine" in one_line_error(capsys, concrete)   # refused for naming the file, not for another reason
    assert existing.read_bytes() == USER_BYTES
    assert sorted(p.name for p in tmp_path.iterdir()) == before   # nothing else written either


def test_force_replaces_sample_files_and_without_it_says_how(vcaps_run, tmp_path, capsys):
    out, grid = tmp_path / "s.npz", tmp_path / "g.png"
    out.write_bytes(USER_BYTES)
    grid.write_bytes(USER_BYTES)
    argv = ["sample", str(vcaps_run), "--n", "4", "--out", str(out), "--grid", str(grid)]
    assert "--force" in one_line_error(capsys, argv)
    assert main([*argv, "--force"]) == 0
    assert out.read_bytes()[:2] == b"PK" and grid.read_bytes()[:4] == b"\x89PNG"
    assert main(["interpolate", str(vcaps_run), "--rows", "1", "--cols", "2", "--out", str(grid), "--force"]) == 0


@pytest.mark.parametrize("argv", [
    ["semisup", "{run}", "--labelled", "100,,5"],
    ["semisup", "{run}", "--labelled", "100,"],
    ["semisup", "{run}", "--labelled", ","],
    ["reproduce", "capsulegan", "--data", "digits", "--seeds", "0,,1"],
    ["reproduce", "gcapsnet", "--data", "digits", "--models", "capsnet,,"],
    ["sample", "{run}", "--n", "4", "--out", "{tmp}/a.npz", "--attributes", "a=1,,b=0"],
])
def test_a_list_with_an_empty_item_gets_one_line(vcaps_run, tmp_path, capsys, argv):
    argv = [a.replace("{run}", str(vcaps_run)).replace("{tmp}", str(tmp_path)) for a in argv]
    err = one_line_error(capsys, argv)
    assert "empty item" in err, err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("argv", [["models"], ["--help"], ["models", "--json"], ["reproduce", "--list"]])
def test_a_closed_stdout_is_no_traceback(argv):
    # `capsgen models | head -2`: the reader goes away before capsgen has written. Closing the pipe
    # before the process writes makes the failed write certain rather than 1 in 3.
    proc = subprocess.Popen([sys.executable, "-m", "capsgen", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.wait(timeout=60)
    assert "Traceback" not in err and "BrokenPipe" not in err and "Exception ignored" not in err, err
    # as a program killed by SIGPIPE (128 + 13); argparse itself swallows a failed write of --help
    assert proc.returncode == (0 if argv == ["--help"] else 141)


def test_sample_and_interpolation_grids_carry_a_caption(vcaps_run, tmp_path):
    from PIL import Image

    grid = tmp_path / "threes.png"
    assert main(["sample", str(vcaps_run), "--n", "4", "--class", "3", "--out", str(tmp_path / "s.npz"),
                 "--grid", str(grid)]) == 0
    with Image.open(grid) as img:
        caption = img.info["Description"]
        width, height = img.size
    assert caption == "vcaps run, step 4: class 3 (3), seed 0"   # digits' class names are the digits
    assert height > width                      # 2 x 2 square images under a caption strip
    path = tmp_path / "walk.png"
    assert main(["interpolate", str(vcaps_run), "--rows", "2", "--cols", "3", "--out", str(path)]) == 0
    with Image.open(path) as img:
        assert img.info["Description"] == "vcaps run, step 4: 2 interpolations (rows) of 3 steps, seed 0"
