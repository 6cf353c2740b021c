"""torchrun: N processes give the results of one; bad launches fail with a line a user can act on."""

import os
import re
import subprocess
import sys

import pandas as pd
import pytest

from bench import harness
from bench.cli import main
from bench.config import RunConfig
from bench.distributed import Processes, init_processes, interleave
from bench.errors import UserError
from bench.report import read_results_csv
from bench.timing import BatchTimes, MachineState, summarize_ranks

QUALITY = ["nfe", "fid", "fid_ci_low", "fid_ci_high", "kid", "kid_std", "prc_precision", "prc_recall", "oracle_fd",
           "mean_err", "var_err", "ref_rmse", "ref_rmse_ci_low", "ref_rmse_ci_high"]
QUIET = MachineState(load=0.1, cores=2, threads=1)


def torchrun(*args, processes=2):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc-per-node={processes}", "-m", "bench", *args],
                          capture_output=True, text=True, env=env, timeout=600)


def assert_same_quality(one: pd.DataFrame, many: pd.DataFrame) -> None:
    assert list(one["sampler"]) == list(many["sampler"]) and list(one["steps"]) == list(many["steps"])
    for column in QUALITY:
        if column in one:
            assert many[column].to_numpy() == pytest.approx(one[column].to_numpy(), rel=1e-9, abs=1e-12,
                                                            nan_ok=True), column


def test_sharding_and_interleaving_give_back_the_global_order():
    batches = list(range(11))
    shares = [Processes(rank, 3).share(batches) for rank in range(3)]
    assert shares[1] == [1, 4, 7, 10]
    assert interleave(shares) == batches


def test_a_launch_without_rendezvous_endpoint_is_a_clear_error():
    with pytest.raises(UserError, match="MASTER_ADDR, MASTER_PORT are not set: launch with `torchrun"):
        init_processes(__import__("torch").device("cpu"), {"WORLD_SIZE": "2", "RANK": "0"})
    with pytest.raises(UserError, match="RANK=2 is not in 0..WORLD_SIZE-1"):
        init_processes(__import__("torch").device("cpu"), {"WORLD_SIZE": "2", "RANK": "2"})


def test_more_processes_on_a_node_than_gpus_is_a_clear_error():
    env = {"WORLD_SIZE": "128", "RANK": "64", "LOCAL_RANK": "64", "MASTER_ADDR": "localhost", "MASTER_PORT": "1"}
    with pytest.raises(UserError, match="LOCAL_RANK=64 but this node has .* CUDA device"):
        init_processes(__import__("torch").device("cuda"), env)


def test_more_processes_than_images_is_refused_before_anything_is_written(registry, tmp_path, monkeypatch):
    monkeypatch.setattr(harness, "init_processes", lambda device: (Processes(0, 3), device))
    config = RunConfig(samplers=("ddim",), steps=(2,), model="gaussian-oracle", num_samples=2)
    with pytest.raises(UserError, match="3 processes for 2 images"):
        harness.run_benchmark(config, registry, out=str(tmp_path / "run"), quiet=True)
    assert not (tmp_path / "run").exists()


def test_wall_time_is_the_slowest_ranks_and_throughput_counts_every_image():
    fast, slow = BatchTimes([1.0, 1.0], [10, 10], 1), BatchTimes([3.0], [10], 1)
    row = summarize_ranks([fast, slow], [20, 10], [QUIET, QUIET], [QUIET, QUIET], num_images=30)
    assert row["wall_s"] == pytest.approx(3.0) and row["images_per_s"] == pytest.approx(10.0)
    assert row["world_size"] == 2 and row["timing_batches"] == 3


@pytest.mark.slow
def test_two_processes_give_the_results_of_one_on_the_oracle_and_on_digits(tmp_path):
    runs = {"oracle": ["--model", "gaussian-oracle", "--samplers", "ddim", "ddim-eta1", "--steps", "5",
                       "--num-samples", "200", "--batch-size", "24"],
            "digits": ["--model", "digits", "--samplers", "ddim", "--steps", "5", "--num-samples", "96",
                       "--batch-size", "32", "--metrics", "fid"]}
    for name, args in runs.items():
        common = ["run", *args, "--bootstrap", "20", "--grid-images", "40", "--quiet"]
        assert main([*common, "--out", str(tmp_path / f"{name}-1")]) == 0
        launched = torchrun(*common, "--out", str(tmp_path / f"{name}-2"))
        assert launched.returncode == 0, launched.stderr[-2000:]
        one = read_results_csv(tmp_path / f"{name}-1" / "results.csv")
        two = read_results_csv(tmp_path / f"{name}-2" / "results.csv")
        assert_same_quality(one, two)
        assert set(two["world_size"]) == {2} and set(one["world_size"]) == {1}
        for grid in ("samples/ddim-5.png", "trajectories/ddim-5.png", "features/ddim-5.npy"):
            assert (tmp_path / f"{name}-1" / grid).read_bytes() == (tmp_path / f"{name}-2" / grid).read_bytes()


CRASHER = """
import os
from bench import SamplerSpec, hookimpl
from samplers.ddim import sample_ddim


def fails_on_rank_1(denoiser, x, timesteps, noise, **kwargs):
    if os.environ.get("RANK") == "1":
        raise RuntimeError("out of memory on rank 1")
    return sample_ddim(denoiser, x, timesteps, noise, **kwargs)


def dies_on_rank_1(denoiser, x, timesteps, noise, **kwargs):
    if os.environ.get("RANK") == "1":
        os._exit(3)
    return sample_ddim(denoiser, x, timesteps, noise, **kwargs)


@hookimpl
def register_samplers(register):
    register(SamplerSpec("fails-on-rank-1", fails_on_rank_1, "raises on rank 1"))
    register(SamplerSpec("dies-on-rank-1", dies_on_rank_1, "kills rank 1"))
"""


@pytest.mark.slow
def test_a_failing_rank_is_recorded_and_a_dead_rank_stops_the_run_keeping_finished_rows(tmp_path):
    plugin = tmp_path / "crasher.py"
    plugin.write_text(CRASHER)
    out = tmp_path / "run"
    launched = torchrun("run", "--plugin", str(plugin), "--model", "gaussian-oracle", "--samplers", "ddim",
                        "fails-on-rank-1", "dies-on-rank-1", "--steps", "3", "--num-samples", "8", "--batch-size",
                        "2", "--quiet", "--out", str(out))
    assert launched.returncode != 0
    rows = read_results_csv(out / "results.csv").set_index("sampler")
    assert rows.loc["ddim", "status"] == "ok"
    assert rows.loc["fails-on-rank-1", "status"] == "error"
    assert rows.loc["fails-on-rank-1", "error"] == "rank 1: RuntimeError: out of memory on rank 1"
    assert re.search(r"exitcode\s*:\s*3", launched.stderr)  # torchrun names the rank that died and stops the rest
    assert "dies-on-rank-1" not in rows.index


@pytest.mark.slow
def test_resume_under_another_world_size_changes_no_result(tmp_path):
    out = tmp_path / "run"
    args = ["run", "--model", "gaussian-oracle", "--samplers", "ddim", "ddim-eta1", "--steps", "5",
            "--num-samples", "160", "--batch-size", "32", "--quiet", "--bootstrap", "20"]
    assert main([*args, "--out", str(out)]) == 0
    full = read_results_csv(out / "results.csv")
    full.iloc[:1].to_csv(out / "results.csv", index=False)  # as if the run had stopped after its first row
    launched = torchrun("run", "--resume", str(out), "--quiet")
    assert launched.returncode == 0, launched.stderr[-2000:]
    resumed = read_results_csv(out / "results.csv")
    assert_same_quality(full, resumed)
    assert list(resumed["world_size"]) == [1, 2]


@pytest.mark.slow
def test_ref_rmse_under_torchrun_equals_one_process(tmp_path):
    from bench.cli import main

    common = ["run", "--model", "gaussian-oracle", "--samplers", "ddim", "dpmpp-2m", "ddim-eta1", "--steps", "5",
              "--num-samples", "48", "--batch-size", "16", "--metrics", "ref-error", "--bootstrap", "20", "--quiet"]
    assert main([*common, "--out", str(tmp_path / "one")]) == 0
    launched = torchrun(*common, "--out", str(tmp_path / "two"))
    assert launched.returncode == 0, launched.stderr[-2000:]
    one, two = (pd.read_csv(tmp_path / name / "results.csv") for name in ("one", "two"))
    assert_same_quality(one, two)
    assert one["ref_rmse"].notna().sum() == 2 and set(two["world_size"]) == {2}


@pytest.mark.slow
def test_an_adaptive_sampler_under_torchrun_counts_the_same_calls_per_image_as_one_process(tmp_path):
    # more images than the oracle's 64 pixels: with fewer, the sample covariance is singular and the Frechet
    # distance's matrix square root turns the last-bit differences of summing shards in another order into 1e-8
    common = ["run", "--model", "gaussian-oracle", "--samplers", "dpm-adaptive", "--num-samples", "96",
              "--batch-size", "24", "--bootstrap", "20", "--metrics", "oracle-fd", "--quiet"]
    assert main([*common, "--out", str(tmp_path / "one")]) == 0
    launched = torchrun(*common, "--out", str(tmp_path / "two"))
    assert launched.returncode == 0, launched.stderr[-2000:]
    one = read_results_csv(tmp_path / "one" / "results.csv")
    two = read_results_csv(tmp_path / "two" / "results.csv")
    assert_same_quality(one, two)
    assert list(two["status"]) == ["ok"] and list(two["world_size"]) == [2]
    assert two["nfe"].iloc[0] == one["nfe"].iloc[0] and two["nfe_max"].iloc[0] == one["nfe_max"].iloc[0]
    saved = "features/dpm-adaptive-0.npy"  # the samples themselves, bit for bit
    assert (tmp_path / "one" / saved).read_bytes() == (tmp_path / "two" / saved).read_bytes()
