"""Results folders and weight files from someone else: they can run no code, reach nothing outside the
folder, inject nothing into the report, and never have two writers.

The table below runs like tests/test_bad_input.py's: each case is one line on stderr, the exit code,
the words the message must hold, no traceback, and nothing created, changed or deleted in the
sandbox (checksums of every file) or in models/weights/, and no marker file that a pickle or a
plugin would have written.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.cli import main
from bench.errors import UserError
from bench.folder import LOCK_NAME
from tests.test_bad_input import RUN, WEIGHTS, assert_refused_writing_nothing, model_copy, results_folder

MARKER = "PWNED"  # what a plugin import or an unpickled object would create
ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- what the cases set up


class WritesMarker:
    """Unpickling this creates the marker file: proof that a pickle ran code."""

    def __reduce__(self):
        return (open, (MARKER, "w"))


def evil_weights(name: str = "inception.pth"):
    def setup():
        Path(name).write_bytes(pickle.dumps({"w": WritesMarker()}, protocol=2))
    return setup


def real_run(name: str = "r", *extra: str) -> None:
    """A results folder written by the tool: ddim @ 2 on the oracle, with its per-image rows in features/."""
    assert main([*RUN, "--out", name, *extra]) == 0, "the setting-up run failed"


def then(*steps):
    def setup():
        for step in steps:
            step()
    return setup


def edit_config(change, name: str = "r"):
    def step():
        path = Path(name) / "config.json"
        data = json.loads(path.read_text())
        change(data)
        path.write_text(json.dumps(data))
    return step


def edit_csv(column: str, value, name: str = "r"):
    def step():
        path = Path(name) / "results.csv"
        df = pd.read_csv(path, keep_default_na=False)
        df[column] = df[column].astype(object)
        df.loc[0, column] = value
        df.to_csv(path, index=False)
    return step


def link_folder(sub: str, name: str = "r"):
    """Replace name/sub by a symbolic link to a folder of the user's, holding a file of the same name."""
    def step():
        mine = Path("mine")
        mine.mkdir(exist_ok=True)
        folder = Path(name) / sub
        for entry in folder.iterdir() if folder.is_dir() else []:
            shutil.copy(entry, mine / entry.name)
            (mine / entry.name).write_bytes(b"the user's own file")
        shutil.rmtree(folder, ignore_errors=True)
        folder.symlink_to(mine.resolve(), target_is_directory=True)
    return step


def evil_plugin_in_config():
    Path("evil.py").write_text(f"open({MARKER!r}, 'w').close()\n")
    edit_config(lambda d: d["config"].__setitem__("plugins", ["evil.py"]))()


def pickled_array(path: str):
    def step():
        np.save(path, np.array([WritesMarker()], dtype=object), allow_pickle=True)
    return step


def held_lock(pid: int | None = None, host: str | None = None, name: str = "r"):
    def step():
        Path(name, LOCK_NAME).write_text(json.dumps({"pid": pid or os.getppid(), "host": host or socket.gethostname(),
                                                     "command": "python -m bench run --out r", "started": "now"}))
    return step


def diffusers_folder(scheduler: dict):
    def setup():
        Path("dm/unet").mkdir(parents=True)
        Path("dm/unet/config.json").write_text("{}")
        Path("dm/scheduler_config.json").write_text(json.dumps(scheduler))
    return setup


DIGITS_SCHEDULE = json.loads((WEIGHTS / "digits.json").read_text())["schedule"]

# id, setup, argv, exit code, words the message must hold
CASES = [
    ("resume-names-a-plugin-file", then(results_folder, evil_plugin_in_config), ["run", "--resume", "r", "--quiet"],
     2, ["evil.py", "not loaded", "--plugin evil.py"]),
    ("fid-weights-pickle-that-runs-code", evil_weights(), [*RUN, "--fid-weights", "inception.pth"], 2,
     ["--fid-weights", "inception.pth", "refusing"]),
    ("resumed-config-names-an-evil-fid-weights-file", then(results_folder, evil_weights(), edit_config(
        lambda d: d["config"].__setitem__("fid_weights", "inception.pth"))), ["run", "--resume", "r", "--quiet"], 2,
     ["inception.pth", "refusing"]),
    ("features-file-with-dotdot", then(real_run, lambda: np.save("outside.npy", np.zeros((8, 64), np.float32)),
                                       edit_csv("features_file", "features/../../outside.npy")), ["report", "r"], 2,
     ["features_file", "outside.npy", ".."]),
    ("features-file-absolute", then(real_run, edit_csv("features_file", "/etc/passwd")), ["report", "r"], 2,
     ["features_file", "/etc/passwd"]),
    ("features-file-in-another-folder", then(real_run, edit_csv("features_file", "samples/ddim-2.png")),
     ["report", "r"], 2, ["features_file", "samples/ddim-2.png"]),
    ("features-folder-is-a-link", then(real_run, link_folder("features")), ["report", "r"], 2,
     ["features", "symbolic link"]),
    ("report-through-a-linked-plots-folder", then(real_run, link_folder("plots")), ["report", "r"], 2,
     ["plots", "symbolic link"]),
    ("resume-through-a-linked-samples-folder", then(real_run, link_folder("samples")),
     ["run", "--resume", "r", "--quiet"], 2, ["samples", "symbolic link"]),
    ("resume-through-a-linked-trajectories-folder", then(real_run, link_folder("trajectories")),
     ["run", "--resume", "r", "--quiet"], 2, ["trajectories", "symbolic link"]),
    ("a-linked-file-in-samples", then(real_run, lambda: Path("photo.png").write_bytes(b"mine"),
                                      lambda: Path("r/samples/ddim-2.png").unlink(),
                                      lambda: Path("r/samples/ddim-2.png").symlink_to(Path("photo.png").resolve())),
     ["report", "r"], 2, ["samples", "symbolic link", "ddim-2.png"]),
    ("report-while-another-process-writes", then(real_run, held_lock()), ["report", "r"], 2,
     ["being written", f"pid {os.getppid()}"]),
    ("resume-while-another-process-writes", then(real_run, held_lock()), ["run", "--resume", "r", "--quiet"], 2,
     ["being written", f"pid {os.getppid()}"]),
    ("force-while-another-process-writes", then(real_run, held_lock()), [*RUN, "--out", "r", "--force"], 2,
     ["being written", f"pid {os.getppid()}"]),
    ("new-run-into-a-folder-being-started", then(lambda: Path("r").mkdir(), held_lock()), [*RUN, "--out", "r"], 2,
     ["being written"]),
    ("csv-nfe-not-a-number", then(real_run, edit_csv("nfe", "lots")), ["report", "r"], 2,
     ["results.csv", "nfe", "lots"]),
    ("csv-wall-s-not-a-number", then(real_run, edit_csv("wall_s", "fast")), ["report", "r"], 2,
     ["results.csv", "wall_s", "fast"]),
    ("csv-oracle-fd-not-a-number", then(real_run, edit_csv("oracle_fd", "0.1x")), ["run", "--resume", "r"], 2,
     ["results.csv", "oracle_fd"]),
    ("config-bootstrap-absurd", then(real_run, edit_config(lambda d: d["config"].__setitem__("bootstrap", 10**12))),
     ["report", "r"], 2, ["config.json", "config.bootstrap", "1000000000000"]),
    ("config-bootstrap-a-float", then(real_run, edit_config(lambda d: d["config"].__setitem__("bootstrap", 1e12))),
     ["report", "r"], 2, ["config.json", "config.bootstrap"]),
    ("config-num-samples-absurd", then(real_run, edit_config(lambda d: d["config"].__setitem__("num_samples", 10**12))),
     ["run", "--resume", "r", "--quiet"], 2, ["config.json", "num_samples"]),
    ("config-top-num-samples-a-string", then(real_run, edit_config(lambda d: d.__setitem__("num_samples", "8"))),
     ["report", "r"], 2, ["config.json", "num_samples"]),
    ("config-seed-a-list", then(real_run, edit_config(lambda d: d["config"].__setitem__("seed", [1]))),
     ["report", "r"], 2, ["config.json", "config.seed"]),
    ("features-npy-holds-a-pickle", then(real_run, pickled_array("r/features/ddim-2.npy")), ["report", "r"], 2,
     ["ddim-2.npy", "pickled"]),
    ("reference-npz-holds-a-pickle", then(real_run, lambda: np.savez(
        "r/features/reference.npz", column=np.array([WritesMarker()], dtype=object), mu=np.zeros(64),
        sigma=np.eye(64))), ["report", "r"], 2, ["reference.npz", "pickled"]),
    ("repeated-sampler-parameter", lambda: None, [*RUN, "--samplers", "ddim:eta=0,eta=1"], 2, ["eta", "twice"]),
    ("scheduler-config-value-of-the-wrong-type", diffusers_folder({"num_train_timesteps": "many"}),
     [*RUN, "--model", "dm"], 2, ["scheduler_config.json", "num_train_timesteps"]),
    ("scheduler-config-negative-beta", diffusers_folder({"beta_start": -1.0}), [*RUN, "--model", "dm"], 2,
     ["scheduler_config.json", "beta_start"]),
    ("scheduler-config-not-an-object", diffusers_folder([1, 2]), [*RUN, "--model", "dm"], 2,
     ["scheduler_config.json", "not a JSON object"]),
    ("card-unknown-key", model_copy({"colour": "blue"}), [*RUN, "--model", "m.safetensors"], 2,
     ["m.json", "unknown key 'colour'"]),
    ("card-unknown-schedule-key", model_copy({"schedule": {**DIGITS_SCHEDULE, "warp": 9}}),
     [*RUN, "--model", "m.safetensors"], 2, ["m.json", "schedule key 'warp'"]),
]


def test_the_round_two_table_has_its_cases():
    assert len(CASES) >= 30 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("setup,argv,code,words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_untrusted_input_is_one_line_runs_nothing_and_writes_nothing(sandbox, capsys, setup, argv, code, words):
    assert_refused_writing_nothing(sandbox, capsys, setup, argv, code, words)
    assert not Path(MARKER).exists(), "a plugin or a pickle ran code"


# --------------------------------------------------------------------------- code from files


def test_the_inception_loader_never_unpickles_code(sandbox):
    from models.features import create_inception_extractor

    evil_weights("inception.pth")()
    with pytest.raises(UserError, match="refusing to load"):
        create_inception_extractor("inception.pth")
    assert not Path(MARKER).exists()


def test_resume_loads_the_recorded_plugin_when_it_is_passed_again(sandbox):
    Path("mine.py").write_text(PLUGIN_SOURCE)
    assert main(["run", "--plugin", "mine.py", *RUN[1:], "--samplers", "ddim", "mine-ddim", "--out", "r"]) == 0
    Path("r/results.csv").write_text(Path("r/results.csv").read_text().splitlines()[0] + "\n")  # redo every row
    assert main(["run", "--resume", "r", "--plugin", "mine.py", "--quiet"]) == 0
    assert list(pd.read_csv("r/results.csv")["status"]) == ["ok", "ok"]


PLUGIN_SOURCE = '''
import os
import signal

import torch

from bench import MetricSpec, SamplerSpec, hookimpl
from samplers.ddim import sample_ddim


def mine_ddim(denoiser, x, timesteps, noise, **kwargs):
    return sample_ddim(denoiser, x, timesteps, noise, **kwargs)


def stopped(denoiser, x, timesteps, noise, **kwargs):
    denoiser(x, timesteps[0])
    os.kill(os.getpid(), signal.SIGTERM)
    return x


def integer_samples(denoiser, x, timesteps, noise, **kwargs):
    return sample_ddim(denoiser, x, timesteps, noise, **kwargs).round().to(torch.int64)


class Broken:
    def update(self, samples):
        raise ValueError("planted metric failure")

    def compute(self):
        return {"broken": 1.0}


class BrokenCompute:
    def update(self, samples):
        pass

    def compute(self):
        raise ZeroDivisionError("planted compute failure")


def broken_create(denoiser, context):
    raise KeyError("planted create failure")


@hookimpl
def register_samplers(register):
    register(SamplerSpec("mine-ddim", mine_ddim, "DDIM from a local plugin"))
    register(SamplerSpec("stopped", stopped, "sends itself SIGTERM"))
    register(SamplerSpec("integer-samples", integer_samples, "returns int64 samples"))


@hookimpl
def register_metrics(register):
    register(MetricSpec("broken", "raises in update()", lambda denoiser, context: Broken()))
    register(MetricSpec("broken-compute", "raises in compute()", lambda denoiser, context: BrokenCompute()))
    register(MetricSpec("broken-create", "raises when created", broken_create))
'''


@pytest.fixture
def plugin(sandbox):
    Path("mine.py").write_text(PLUGIN_SOURCE)
    return "mine.py"


# --------------------------------------------------------------------------- one writer


def _lock_holder_pid() -> int:
    """The pid of a process that has exited (a killed run's lock)."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


def test_a_stale_lock_from_a_killed_run_does_not_block(sandbox, capsys):
    real_run()
    held_lock(pid=_lock_holder_pid())()
    assert main(["report", "r"]) == 0
    assert not Path("r", LOCK_NAME).exists()


def test_another_hosts_lock_blocks_while_fresh_and_not_once_old(sandbox, capsys):
    real_run()
    held_lock(pid=1, host="another-host")()
    assert main(["report", "r"]) == 2
    assert "another-host" in capsys.readouterr().err
    old = time.time() - 7 * 3600
    os.utime(Path("r", LOCK_NAME), (old, old))
    assert main(["report", "r"]) == 0


def test_a_finished_run_leaves_no_lock_and_a_refused_run_no_folder(sandbox):
    real_run()
    assert not Path("r", LOCK_NAME).exists()
    assert main([*RUN, "--out", "new", "--samplers", "nope"]) == 2
    assert not Path("new").exists()


SLOW_PLUGIN = '''
import time
from bench import SamplerSpec, hookimpl
from samplers.ddim import sample_ddim


def slow_ddim(denoiser, x, timesteps, noise, **kwargs):
    time.sleep(4)
    return sample_ddim(denoiser, x, timesteps, noise, **kwargs)


@hookimpl
def register_samplers(register):
    register(SamplerSpec("slow-ddim", slow_ddim, "DDIM after a 4 s sleep"))
'''


@pytest.mark.slow
@pytest.mark.parametrize("compile_flag", [[], ["--compile"]], ids=["eager", "compile"])
def test_of_two_runs_started_together_on_one_folder_the_second_is_refused(sandbox, compile_flag):
    Path("slow.py").write_text(SLOW_PLUGIN)
    argv = [sys.executable, "-m", "bench", "run", "--plugin", "slow.py", *RUN[1:], "--samplers", "slow-ddim",
            "--out", "r", *compile_flag]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    first = subprocess.Popen(argv, cwd=sandbox / "work", env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    deadline = time.time() + 60
    while not Path("r", LOCK_NAME).exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    second = subprocess.run(argv, cwd=sandbox / "work", env=env, capture_output=True, text=True)
    out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert second.returncode == 2
    assert f"pid {first.pid}" in second.stderr and "being written" in second.stderr
    assert list(pd.read_csv("r/results.csv")["status"]) == ["ok"]


# --------------------------------------------------------------------------- escaping


def test_report_html_escapes_a_sample_file_name_and_md_escapes_html(sandbox):
    real_run()
    hostile = 'x" onerror="alert(1).png'
    Path("r/samples", hostile).write_bytes(Path("r/samples/ddim-2.png").read_bytes())
    df = pd.read_csv("r/results.csv", keep_default_na=False)
    df.loc[0, "sampler"] = "<img src=x onerror=alert(2)>"
    df.to_csv("r/results.csv", index=False)
    assert main(["report", "r"]) == 0
    page = Path("r/report.html").read_text()
    assert 'onerror="alert(1)' not in page and "<img src=x" not in page
    assert "&lt;img src=x onerror=alert(2)&gt;" in page
    md = Path("r/report.md").read_text()
    assert "<img src=x" not in md and "&lt;img src=x onerror=alert(2)&gt;" in md
    assert 'onerror="alert(1).png)' not in md  # the link target is percent-encoded


# --------------------------------------------------------------------------- values that cannot be true


@pytest.mark.parametrize("column,value,reason", [("nfe", -2, "nfe is negative"), ("wall_s", "nan", "wall_s is missing"),
                                                 ("oracle_fd", "inf", "oracle_fd is infinite"),
                                                 ("oracle_fd", -0.5, "oracle_fd is negative")])
def test_an_impossible_value_marks_the_row_invalid_and_out_of_the_comparisons(sandbox, capsys, column, value, reason):
    assert main([*RUN, "--samplers", "ddim", "ddim:plan=quadratic", "--out", "r"]) == 0
    edit_csv(column, value)()
    capsys.readouterr()
    assert main(["report", "r"]) == 0
    err = capsys.readouterr().err
    assert reason in err and "invalid" in err
    md = Path("r/report.md").read_text()
    budget = md.split("## Which sampler at which budget")[1].split("\n## ")[0]
    best = [line.split(" | ")[1] for line in budget.splitlines() if line.startswith("| 2 |")]
    assert best == ["ddim:plan=quadratic @ 2"], budget  # the invalid row is never the best
    assert "| ddim @ 2" not in budget and ", ddim @ 2" not in budget
    paired = Path("r/paired.csv")
    assert not paired.exists() or not ({"ddim @ 2"} & set(pd.read_csv(paired)[["a", "b"]].stack()))


def test_a_repeated_row_is_warned_about_and_used_once(sandbox, capsys):
    real_run()
    lines = Path("r/results.csv").read_text().splitlines()
    Path("r/results.csv").write_text("\n".join([*lines, lines[1]]) + "\n")
    capsys.readouterr()
    assert main(["report", "r"]) == 0
    assert "repeated row" in capsys.readouterr().err
    assert Path("r/report.md").read_text().count("| ddim | 2 |") == 1


# --------------------------------------------------------------------------- the rest of the round-2 list


def test_a_metric_plugin_that_raises_is_blamed_by_name_and_the_other_metrics_are_kept(sandbox, plugin, capsys):
    assert main(["run", "--plugin", plugin, *RUN[1:], "--metrics", "oracle-fd", "broken", "--out", "r"]) == 0
    row = pd.read_csv("r/results.csv").iloc[0]
    assert row["status"] == "ok" and row["oracle_fd"] >= 0
    assert "'broken'" in row["error"] and "mine.py" in row["error"] and "planted metric failure" in row["error"]
    assert "broken" not in row.index or pd.isna(row.get("broken"))
    assert "'broken'" in capsys.readouterr().err


def test_a_metric_plugin_that_raises_when_created_or_computed_is_blamed_and_the_others_kept(sandbox, plugin, capsys):
    assert main(["run", "--plugin", plugin, *RUN[1:], "--metrics", "oracle-fd", "broken-create", "broken-compute",
                 "--out", "r"]) == 0
    row = pd.read_csv("r/results.csv").iloc[0]
    assert row["status"] == "ok" and row["oracle_fd"] >= 0
    assert "'broken-create' (plugin 'mine.py') failed in create(): KeyError" in row["error"]
    assert "'broken-compute' (plugin 'mine.py') failed in compute(): ZeroDivisionError" in row["error"]
    err = capsys.readouterr().err
    assert "'broken-create'" in err and "'broken-compute'" in err and "Traceback" not in err


def test_sigterm_is_handled_like_ctrl_c_with_exit_code_143(sandbox, plugin, capsys):
    previous = signal.getsignal(signal.SIGTERM)
    assert main(["run", "--plugin", plugin, *RUN[1:], "--samplers", "stopped", "--out", "r"]) == 143
    err = capsys.readouterr().err
    assert "interrupted" in err and "--resume r" in err and "Traceback" not in err
    assert signal.getsignal(signal.SIGTERM) == previous  # main() puts the old handler back


def test_a_sampler_returning_integers_is_a_row_error(sandbox, plugin):
    assert main(["run", "--plugin", plugin, *RUN[1:], "--samplers", "integer-samples", "--out", "r"]) == 0
    row = pd.read_csv("r/results.csv").iloc[0]
    assert row["status"] == "error" and "int64" in row["error"] and "floating point" in row["error"]


def test_threads_above_the_usable_cores_warn(sandbox, capsys):
    import torch

    cores, before = len(os.sched_getaffinity(0)), torch.get_num_threads()
    assert main([*RUN, "--threads", str(cores + 1), "--out", "r"]) == 0
    assert f"--threads {cores + 1} is more than the {cores} usable cores" in capsys.readouterr().err
    # the run's thread count was the run's only: later runs in this process (the next test) keep their own
    assert torch.get_num_threads() == before != cores + 1


def test_a_full_disk_without_a_file_name_is_exit_2(sandbox, capsys, monkeypatch):
    import bench.cli

    def full_disk(args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(bench.cli, "cmd_list", full_disk)
    assert main(["list"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "No space left on device" in err and err.count("\n") == 1


def test_the_bug_path_never_creates_a_missing_home(sandbox, capsys, monkeypatch):
    import bench.cli

    home = sandbox / "no-such-home"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_CACHE_HOME")

    def planted(args):
        raise RuntimeError("planted bug")

    monkeypatch.setattr(bench.cli, "cmd_list", planted)
    assert main(["list"]) == 1
    assert not home.exists()
    assert "planted bug" in capsys.readouterr().err


# ---------------------------------------------------------------- folder guards the fast suite never ran (coverage)
@pytest.mark.parametrize("name", [None, 3.0, "", "features\\x.npy", "features/x\x00.npy"],
                         ids=["missing", "a-number", "empty", "backslash", "nul"])
def test_a_features_file_entry_that_is_not_a_file_name_is_refused_naming_the_csv(tmp_path, name):
    from bench.errors import UserError
    from bench.folder import feature_file

    (tmp_path / "features").mkdir()
    assert feature_file(tmp_path, "features/ok.npy") == tmp_path / "features" / "ok.npy"
    with pytest.raises(UserError, match="is not a file name under features/") as info:
        feature_file(tmp_path, name)
    assert str(tmp_path / "results.csv") in str(info.value)


def test_a_linked_subfolder_or_lock_file_is_never_written_through(tmp_path):
    from bench.errors import UserError
    from bench.folder import LOCK_NAME, acquire_lock, subfolder

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "run"
    out.mkdir()
    assert subfolder(out, "plots") == out / "plots" and (out / "plots").is_dir()
    (out / "samples").symlink_to(elsewhere)
    with pytest.raises(UserError, match="samples is a symbolic link"):
        subfolder(out, "samples")
    (out / LOCK_NAME).symlink_to(elsewhere / "lock")
    with pytest.raises(UserError, match="is a symbolic link; remove it"):
        acquire_lock(out)
    assert list(elsewhere.iterdir()) == []


@pytest.mark.parametrize("arrays,message", [
    ({"mu": np.zeros(3), "sigma": np.eye(3)}, "expected arrays column, mu and sigma"),
    ({"column": np.array("fid"), "mu": np.zeros(3), "sigma": np.eye(2)}, "a finite square matrix of its size"),
    ({"column": np.array("fid"), "mu": np.array([0, np.nan, 0]), "sigma": np.eye(3)}, "mu must be a finite vector"),
], ids=["no-column", "sigma-of-another-size", "nan-mu"])
def test_a_bad_reference_npz_is_an_error_naming_it(tmp_path, arrays, message):
    from bench.errors import UserError
    from bench.paired import load_reference

    (tmp_path / "features").mkdir()
    assert load_reference(tmp_path) is None  # a folder without one has no paired comparisons, not an error
    np.savez(tmp_path / "features" / "reference.npz", column=np.array("fid"), mu=np.zeros(3), sigma=np.eye(3))
    assert load_reference(tmp_path).column == "fid"
    np.savez(tmp_path / "features" / "reference.npz", **arrays)
    with pytest.raises(UserError, match=message) as info:
        load_reference(tmp_path)
    assert "reference.npz" in str(info.value)


@pytest.mark.parametrize("rows,message", [
    (np.zeros(4), "expected a finite \\(images, features\\) array"),
    (np.array([[0.0, np.inf, 0.0]]), "expected a finite \\(images, features\\) array"),
    (np.zeros((2, 5)), "5 features per image, but features/reference.npz has 3"),
], ids=["1-d", "inf", "wrong-width"])
def test_saved_rows_that_are_not_a_finite_table_as_wide_as_the_reference_are_refused(tmp_path, rows, message):
    from bench.errors import UserError
    from bench.paired import Reference, load_rows

    (tmp_path / "features").mkdir()
    reference = Reference("fid", np.zeros(3), np.eye(3))
    np.save(tmp_path / "features" / "good.npy", np.ones((2, 3)))
    assert load_rows(tmp_path, "features/good.npy", reference).shape == (2, 3)
    np.save(tmp_path / "features" / "bad.npy", rows)
    with pytest.raises(UserError, match=message):
        load_rows(tmp_path, "features/bad.npy", reference)


def test_only_what_the_tool_writes_is_not_foreign_in_a_results_folder(tmp_path):
    """--force clears a folder only when everything in it is the tool's: its top files, its folders holding
    their own file types, the lock and .tmp leftovers; anything else is named."""
    from bench.folder import LOCK_NAME
    from bench.results import _foreign_entries

    for name in ("config.json", "results.csv", "report.md", "results.csv.tmp", LOCK_NAME):
        (tmp_path / name).write_text("x")
    for folder, good in (("samples", "a.png"), ("plots", "b.png"), ("trajectories", "c.png"), ("features", "d.npy"),
                         ("features", "reference.npz")):
        (tmp_path / folder).mkdir(exist_ok=True)
        (tmp_path / folder / good).write_text("x")
    assert _foreign_entries(tmp_path) == []
    (tmp_path / "samples" / "notes.txt").write_text("mine")
    (tmp_path / "features" / "sub").mkdir()
    (tmp_path / "thesis.tex").write_text("mine")
    (tmp_path / "data").mkdir()
    assert _foreign_entries(tmp_path) == ["data", "features/sub", "samples/notes.txt", "thesis.tex"]


def test_a_weights_option_names_a_missing_or_unreadable_file_and_accepts_plain_tensors(tmp_path):
    import torch
    from safetensors.torch import save_file

    from bench.errors import UserError
    from bench.harness import check_tensor_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "ok.safetensors"))
    torch.save({"w": torch.zeros(2)}, tmp_path / "ok.pt")
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    check_tensor_file(str(tmp_path / "ok.safetensors"), "--fid-weights")
    check_tensor_file(str(tmp_path / "ok.pt"), "--fid-weights")
    with pytest.raises(UserError, match="--fid-weights .*missing.pt: no such file"):
        check_tensor_file(str(tmp_path / "missing.pt"), "--fid-weights")
    with pytest.raises(UserError, match="refusing to load it: not a plain tensor file"):
        check_tensor_file(str(tmp_path / "bad.safetensors"), "--fid-weights")


def test_resume_of_a_folder_without_results_csv_is_refused_before_anything_runs(tmp_path):
    from bench.errors import UserError
    from bench.results import prepare_out_dir

    (tmp_path / "r").mkdir()
    with pytest.raises(UserError, match="no results.csv there to resume from"):
        prepare_out_dir(str(tmp_path / "r"), tmp_path, "m", resume=True, force=False)
    assert list((tmp_path / "r").iterdir()) == []


@pytest.mark.parametrize("text,words", [
    ("", "is empty; it is not a sampler-bench results.csv"),
    ("sampler,steps,status,error\nddim,ten,ok,\n", "the steps column holds values that are not integers"),
    ("sampler,steps,guidance,status,error\nddim,10,strong,ok,\n", "the guidance column holds values that are not"),
], ids=["empty", "steps-text", "guidance-text"])
def test_a_results_csv_with_text_where_numbers_belong_is_an_error_naming_it(tmp_path, text, words):
    from bench.errors import UserError
    from bench.report import read_results_csv

    (tmp_path / "results.csv").write_text(text)
    with pytest.raises(UserError, match=words) as info:
        read_results_csv(tmp_path / "results.csv")
    assert str(tmp_path / "results.csv") in str(info.value)


def test_a_plugin_registering_the_wrong_kind_or_a_missing_file_is_reported_not_a_crash(tmp_path):
    from bench.plugins import load_registry

    (tmp_path / "wrong.py").write_text("from bench import hookimpl\n@hookimpl\ndef register_samplers(register):\n"
                                       "    register('ddim-but-a-string')\n")
    registry = load_registry([str(tmp_path / "wrong.py")])
    assert "ddim" in registry.samplers and "ddim-but-a-string" not in registry.samplers
    assert any("expects a SamplerSpec, got str" in e for e in registry.errors), registry.errors
    missing = load_registry([str(tmp_path / "missing.py")])  # (the CLI refuses it before: exit 2)
    assert "ddim" in missing.samplers and any("missing.py' does not exist" in e for e in missing.errors)
