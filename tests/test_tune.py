"""`bench tune-plan`: tuned plans never worse than their start, a plan file round-trips, bad plan files are
one-line errors."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from bench.cli import main
from bench.tune import calibration_seed

TUNE = ["tune-plan", "--model", "gaussian-oracle", "--calibration-images", "16"]


@pytest.fixture(scope="module")
def plan_file(tmp_path_factory):
    out = tmp_path_factory.mktemp("tune") / "plan.json"
    assert main([*TUNE, "--samplers", "dpmpp-2m", "euler", "--nfe", "5,8", "--out", str(out)]) == 0
    return out


def test_the_tuner_never_returns_a_plan_worse_than_its_start_on_the_calibration_set(plan_file):
    data = json.loads(plan_file.read_text())
    for entry in data["plans"].values():
        for result in entry["steps"].values():
            assert result["calibration_ref_rmse"] <= result["start_ref_rmse"]
            assert result["start_ref_rmse"] == min(result["hand_made"].values())


def test_a_plan_file_round_trips_into_a_run(plan_file, tmp_path):
    data = json.loads(plan_file.read_text())
    out = tmp_path / "r"
    assert main(["run", "--model", "gaussian-oracle", "--samplers", f"dpmpp-2m:plan=file:{plan_file}", "--steps", "5",
                 "--num-samples", "8", "--metrics", "none", "--quiet", "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["jobs"][0]["timesteps"] == data["plans"]["dpmpp-2m"]["steps"]["5"]["timesteps"]
    assert pd.read_csv(out / "results.csv")["params"].str.contains("file:").all()


def test_calibration_noise_is_a_separate_stream():
    assert calibration_seed(0) != 0 and calibration_seed(5) - calibration_seed(0) == 5


def _tampered(plan_file, tmp_path, change):
    data = json.loads(plan_file.read_text())
    change(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("change,steps,words", [
    (lambda d: d["plans"]["dpmpp-2m"]["steps"]["5"].__setitem__("timesteps", [999, 500, 700, 200, 0]), 5,
     ["strictly decreasing"]),
    (lambda d: d["plans"]["dpmpp-2m"]["steps"]["5"].__setitem__("timesteps", [999, 500, 500, 200, 0]), 5,
     ["strictly decreasing"]),
    (lambda d: d["plans"]["dpmpp-2m"]["steps"]["5"].__setitem__("timesteps", [1200, 500, 300, 200, 0]), 5,
     ["integers in 0..999"]),
    (lambda d: None, 7, ["no dpmpp-2m plan with 7 steps", "5, 8"]),
    (lambda d: d.__setitem__("model_fingerprint", "0" * 16), 5, ["tuned on model", "fingerprint"]),
    (lambda d: d.__setitem__("version", 99), 5, ["not a sampler-bench plan file"]),
    (lambda d: d["plans"]["dpmpp-2m"]["steps"]["5"].__setitem__("timesteps", []), 5, ["non-empty list of finite"]),
    (lambda d: d["plans"]["dpmpp-2m"]["steps"]["5"].__setitem__("timesteps", [999, "500", 0]), 5,
     ["non-empty list of finite"]),
    (lambda d: d["plans"]["dpmpp-2m"]["steps"]["5"].__setitem__("timesteps", [999, 700, 400, 0]), 5,
     ["dpmpp-2m @ 5: 4 timesteps listed, not 5"]),
    (lambda d: d["plans"].pop("dpmpp-2m"), 5, ["no plan for sampler 'dpm-solver++'", "it has: euler"]),
    (lambda d: d["plans"].__setitem__("copy", dict(d["plans"]["dpmpp-2m"])), 5,
     ["several plans for sampler 'dpm-solver++'", "copy", "separate files"]),
], ids=["unsorted", "repeated", "beyond-t", "no-such-steps", "other-model", "version", "empty", "a-string",
        "too-few", "no-entry", "two-entries"])
def test_bad_plan_files_are_one_line_errors_that_write_nothing(plan_file, tmp_path, capsys, change, steps, words):
    bad = _tampered(plan_file, tmp_path, change)
    out = tmp_path / "r"
    assert main(["run", "--model", "gaussian-oracle", "--samplers", f"dpmpp-2m:plan=file:{bad}", "--steps", str(steps),
                 "--num-samples", "8", "--metrics", "none", "--quiet", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and all(w in err[0] for w in words), err
    assert not out.exists()


@pytest.mark.parametrize("argv,words", [
    (["--samplers", "dpmpp-2m", "--nfe", "0"], ["--nfe", ">= 1"]),
    (["--samplers", "heun", "--nfe", "4"], ["heun", "exactly 4 network calls"]),
    (["--samplers", "ddim-eta1", "--nfe", "5"], ["stochastic"]),
])
def test_bad_tune_options_are_one_line_errors_that_write_nothing(tmp_path, capsys, argv, words):
    out = tmp_path / "p.json"
    assert main([*TUNE, *argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and all(w in err[0] for w in words), err
    assert not out.exists()


def test_a_missing_or_corrupt_plan_file_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "corrupt.json").write_text("{nope")
    for name, words in (("missing.json", "does not exist"), ("corrupt.json", "not valid JSON")):
        assert main(["run", "--model", "gaussian-oracle", "--samplers", f"ddim:plan=file:{tmp_path / name}",
                     "--steps", "5", "--num-samples", "8", "--metrics", "none", "--quiet",
                     "--out", str(tmp_path / "r")]) == 2
        assert words in capsys.readouterr().err
