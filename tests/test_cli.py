"""The command line as a user meets it: list, run end to end, bad input, resume, faults."""

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from bench.cli import main
from bench.harness import TIMING_COLUMNS
from bench.report import read_results_csv

REQUIRED = ["sampler", "params", "steps", "nfe", "num_samples", "wall_s", "model", "device", "seed", "status"]
ORACLE = ["--model", "gaussian-oracle", "--num-samples", "40", "--batch-size", "16", "--quiet", "--bootstrap", "20"]
ONE_BATCH = ["--model", "gaussian-oracle", "--num-samples", "24", "--batch-size", "24", "--quiet"]


def run_cli(*args, cwd=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "bench", *args], capture_output=True, text=True, cwd=cwd, env=env)


def test_list_shows_every_sampler_with_description_and_plugin():
    out = run_cli("list")
    assert out.returncode == 0
    for name in ("ddpm", "ddpm-large", "stride-uniform", "stride-quadratic", "ddim", "ddim-eta1", "gaussian-oracle"):
        assert name in out.stdout
    assert "(plugin: samplers.ancestral)" in out.stdout


def test_run_all_on_the_oracle_writes_results_with_the_documented_columns(tmp_path):
    out = tmp_path / "run"
    assert main(["run", "--samplers", "all", "--steps", "5,10", *ONE_BATCH, "--out", str(out)]) == 0
    df = pd.read_csv(out / "results.csv")
    assert set(REQUIRED + TIMING_COLUMNS + ["oracle_fd", "expected_nfe"]) <= set(df.columns)
    assert (df["status"] == "ok").all()
    fixed = df[df["sampler"] != "dpm-adaptive"]
    assert (fixed["nfe"] == fixed["expected_nfe"]).all()
    adaptive = df[df["sampler"] == "dpm-adaptive"]  # once, at steps 0, with its counted mean and max
    assert list(adaptive["steps"]) == [0] and adaptive["expected_nfe"].isna().all()
    assert 2 <= float(adaptive["nfe"].iloc[0]) <= float(adaptive["nfe_max"].iloc[0])
    assert set(df[df["sampler"] == "ddpm"]["steps"]) == {1000}
    assert set(df[df["sampler"] == "ddim"]["steps"]) == {5, 10}
    assert {"ddim-eta0.5", "ddim-eta1", "ddim-sigma-hat", "ddpm-large"} <= set(df["sampler"])
    for name in ("config.json", "report.md", "report.html", "plots/quality_vs_nfe.png", "samples/ddim-5.png",
                 "trajectories/ddim-5.png"):
        assert (out / name).exists(), name


@pytest.mark.parametrize("args,message", [
    (["--samplers", "ddimm"], "Did you mean 'ddim'"),
    (["--samplers", "ddim", "--steps", "0"], "between 1 and T=1000"),
    (["--samplers", "ddim", "--steps", "1001"], "between 1 and T=1000"),
    (["--samplers", "ddim", "--steps", "2.5"], "integers"),
    (["--samplers", "ddim:etta=1"], "no parameter 'etta'"),
    (["--samplers", "ddim:eta=abc"], "not a valid float"),
    (["--samplers", "ddim", "--model", "nope"], "unknown model 'nope'"),
])
def test_user_errors_exit_non_zero_with_one_line_and_write_nothing(tmp_path, args, message):
    out = tmp_path / "run"
    proc = run_cli("run", *args, "--model", "gaussian-oracle", "--out", str(out), "--quiet") if "--model" not in args \
        else run_cli("run", *args, "--out", str(out), "--quiet")
    assert proc.returncode != 0
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len([line for line in proc.stderr.splitlines() if line.startswith("error:")]) == 1
    assert not out.exists()


def test_an_existing_results_folder_is_not_overwritten_without_force(tmp_path):
    out = tmp_path / "run"
    assert main(["run", "--samplers", "ddim", "--steps", "3", *ORACLE, "--out", str(out)]) == 0
    before = (out / "results.csv").read_text()
    assert main(["run", "--samplers", "ddim", "--steps", "4", *ORACLE, "--out", str(out)]) == 2
    assert (out / "results.csv").read_text() == before
    assert main(["run", "--samplers", "ddim", "--steps", "4", *ORACLE, "--out", str(out), "--force"]) == 0
    assert set(pd.read_csv(out / "results.csv")["steps"]) == {4}


CRASHER = """
import torch
from bench import SamplerSpec, hookimpl


def crash(denoiser, x, timesteps, noise, **kwargs):
    raise RuntimeError("sampler exploded")


def nan(denoiser, x, timesteps, noise, **kwargs):
    for t in timesteps:
        denoiser(x, t)
    return x * float("nan")


def wrong_shape(denoiser, x, timesteps, noise, **kwargs):
    return x[:, :, :4]


def twice(denoiser, x, timesteps, noise, **kwargs):
    for t in timesteps:
        eps = denoiser(x, t)
        eps = 0.5 * (eps + denoiser(x, t))
    return x - 0 * eps


@hookimpl
def register_samplers(register):
    register(SamplerSpec("crash", crash, "always raises"))
    register(SamplerSpec("nan", nan, "returns NaN"))
    register(SamplerSpec("wrong-shape", wrong_shape, "returns the wrong shape"))
    register(SamplerSpec("twice", twice, "two network calls per step", nfe_per_step=2))
"""


def test_broken_samplers_are_recorded_and_the_run_goes_on(tmp_path):
    plugin = tmp_path / "crasher.py"
    plugin.write_text(CRASHER)
    out = tmp_path / "run"
    assert main(["run", "--plugin", str(plugin), "--samplers", "crash", "nan", "wrong-shape", "ddim",
                 "--steps", "4", *ORACLE, "--out", str(out)]) == 0
    df = read_results_csv(out / "results.csv").set_index("sampler")
    assert "sampler exploded" in df.loc["crash", "error"]
    assert "NaN" in df.loc["nan", "error"]
    assert "shape" in df.loc["wrong-shape", "error"]
    assert df.loc["ddim", "status"] == "ok"


def test_nfe_is_counted_at_the_network_for_a_two_call_sampler(tmp_path):
    plugin = tmp_path / "crasher.py"
    plugin.write_text(CRASHER)
    out = tmp_path / "run"
    assert main(["run", "--plugin", str(plugin), "--samplers", "twice", "--steps", "7", *ORACLE, "--metrics",
                 "none", "--out", str(out)]) == 0
    row = pd.read_csv(out / "results.csv").iloc[0]
    assert row["nfe"] == 14 and row["expected_nfe"] == 14


def test_an_interrupted_run_resumed_gives_the_same_csv(tmp_path, monkeypatch):
    args = ["run", "--samplers", "ddim", "stride-uniform", "--steps", "3,6", *ORACLE]
    full = tmp_path / "full"
    assert main([*args, "--out", str(full)]) == 0

    from bench import harness
    original = harness.Harness.run_job
    calls = {"n": 0}

    def interrupt_third(self, job, progress):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(self, job, progress)

    monkeypatch.setattr(harness.Harness, "run_job", interrupt_third)
    part = tmp_path / "part"
    assert main([*args, "--out", str(part)]) == 130
    assert len(pd.read_csv(part / "results.csv")) == 2
    monkeypatch.setattr(harness.Harness, "run_job", original)
    assert main(["run", "--resume", str(part), "--quiet"]) == 0

    drop = TIMING_COLUMNS + ["run_id", "peak_mem_mb", "mem_kind"]
    a = pd.read_csv(full / "results.csv").drop(columns=drop, errors="ignore")
    b = pd.read_csv(part / "results.csv").drop(columns=drop, errors="ignore")
    pd.testing.assert_frame_equal(a, b)


def test_report_and_compare_rebuild_from_the_folder(tmp_path):
    out = tmp_path / "run"
    assert main(["run", "--samplers", "ddim", "--steps", "3,6", *ORACLE, "--out", str(out)]) == 0
    (out / "report.md").unlink()
    assert main(["report", str(out)]) == 0
    assert "ddim" in (out / "report.md").read_text()
    proc = run_cli("compare", str(out), str(out))
    assert proc.returncode == 0 and "ddim" in proc.stdout


def test_the_readme_starts_with_the_two_setup_commands():
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    blocks = text.split("```bash\n")[1:3]
    assert "python -m bench run --samplers all" in blocks[0]
    assert "pip install -e '.[test]'" in blocks[1] and "python -m pytest" in blocks[1]


def test_run_on_the_shipped_digits_model_scores_fid_against_the_floor(tmp_path):
    out = tmp_path / "digits"
    assert main(["run", "--model", "digits", "--samplers", "ddim", "stride-quadratic", "--steps", "5,10",
                 "--num-samples", "48", "--batch-size", "32", "--quiet", "--bootstrap", "20", "--out", str(out)]) == 0
    df = read_results_csv(out / "results.csv")
    assert (df["status"] == "ok").all()
    assert {"fid", "fid_ci_low", "fid_ci_high", "fid_floor", "kid", "prc_precision", "prc_recall"} <= set(df.columns)
    assert (df["fid_ci_low"] <= df["fid"]).all() and (df["fid"] <= df["fid_ci_high"]).all()
    assert (df["fid_floor"] > 0).all() and df["oracle_fd"].isna().all() if "oracle_fd" in df else True
    assert (df["nfe"] == df["steps"]).all()
    assert (out / "samples" / "ddim-10.png").exists() and (out / "plots" / "quality_vs_wall.png").exists()
    assert "| budget (NFE) | best |" in (out / "report.md").read_text()
