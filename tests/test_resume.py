"""Resume redoes exactly the rows that did not finish well, and a results folder never holds a key twice."""

import json
from pathlib import Path

import pandas as pd
import pytest

from bench.cli import main
from bench.jobs import Harness
from bench.schedule import NoiseSchedule
from bench.selection import resolve_samplers

FLAKY = """
import os

from bench import SamplerSpec, hookimpl
from samplers.ddim import sample_ddim


def flaky(denoiser, x, timesteps, noise, **kwargs):
    if os.path.exists(os.environ["FLAKY_FLAG"]):
        raise RuntimeError("flaky failure")
    return sample_ddim(denoiser, x, timesteps, noise, **kwargs)


@hookimpl
def register_samplers(register):
    register(SamplerSpec("flaky", flaky, "DDIM that fails while a flag file exists"))
"""
RUN = ["run", "--model", "gaussian-oracle", "--steps", "3", "--num-samples", "8", "--batch-size", "8",
       "--metrics", "oracle-fd", "--grid-images", "0", "--trajectory-images", "0", "--quiet"]


def test_resume_reruns_failed_rows_and_only_those(tmp_path, monkeypatch):
    plugin, flag, out = tmp_path / "flaky.py", tmp_path / "fail-now", tmp_path / "run"
    plugin.write_text(FLAKY)
    flag.write_text("")
    monkeypatch.setenv("FLAKY_FLAG", str(flag))
    assert main(["--plugin", str(plugin), *RUN, "--samplers", "flaky", "ddim", "--out", str(out)]) == 0
    first = pd.read_csv(out / "results.csv").set_index("sampler")
    assert first.loc["flaky", "status"] == "error" and first.loc["ddim", "status"] == "ok"

    flag.unlink()
    ran = []
    original = Harness.run_job

    def counting_run_job(self, job, bar):
        ran.append(job.choice.label)
        return original(self, job, bar)

    monkeypatch.setattr(Harness, "run_job", counting_run_job)
    assert main(["--plugin", str(plugin), "run", "--resume", str(out), "--quiet"]) == 0
    second = pd.read_csv(out / "results.csv")
    assert ran == ["flaky"]
    assert sorted(second["sampler"]) == ["ddim", "flaky"] and (second["status"] == "ok").all()
    assert second.set_index("sampler").loc["ddim", "oracle_fd"] == first.loc["ddim", "oracle_fd"]


def test_repeated_step_counts_and_samplers_give_one_row_each(tmp_path, registry):
    from bench.selection import plan_jobs, validate_steps

    assert validate_steps(["3", 3, "6", 3], 1000) == (3, 6)
    jobs = plan_jobs(resolve_samplers(["ddim", "ddim", "ddim-eta1,ddim"], registry), (3, 6),
                     NoiseSchedule.linear(1000))
    assert len({job.key for job in jobs}) == len(jobs) == 4
    out = tmp_path / "run"
    assert main([*RUN, "--samplers", "ddim", "ddim", "--steps", "3,3", "--out", str(out)]) == 0
    assert len(pd.read_csv(out / "results.csv")) == 1


def _config_edit(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data["config"].update(changes)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("argv,edit,words", [
    (["--out", "elsewhere"], {}, ["continues that folder; drop --out elsewhere"]),
    ([], {"bootstrap": -5}, ["r/config.json", "config.bootstrap must be an integer"]),
    ([], {"no_such_option": 1}, ["not a run config this version can resume"]),
], ids=["another-out", "invalid-value", "unknown-key"])
def test_a_resume_that_cannot_continue_the_folder_is_a_one_line_error_that_changes_nothing(
        tmp_path, monkeypatch, capsys, argv, edit, words):
    monkeypatch.chdir(tmp_path)
    assert main([*RUN, "--samplers", "ddim", "--out", "r"]) == 0
    if edit:
        _config_edit(Path("r/config.json"), **edit)
    before = {p: p.read_bytes() for p in Path("r").rglob("*") if p.is_file()}
    capsys.readouterr()
    assert main(["run", "--resume", "r", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and all(w in err[0] for w in words), err
    assert {p: p.read_bytes() for p in Path("r").rglob("*") if p.is_file()} == before
    assert not Path("elsewhere").exists()
