"""Hostile but realistic input: every bad input is one line, the right exit code, and writes or deletes nothing.

Each case runs `bench.cli.main` in process, inside a fresh folder (also the working folder and the
cache home), and checks the exit code, that no traceback reaches the screen, the words the message
must hold, and that no file in that folder or in models/weights/ was created, changed or deleted.
"""

from __future__ import annotations

import gzip
import json
import pickle
import random
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from bench.cli import main
from bench.config import RunConfig
from bench.errors import UserError
from bench.results import TOOL, is_results_folder, prepare_out_dir

WEIGHTS = Path(__file__).resolve().parent.parent / "models" / "weights"
RUN = ["run", "--model", "gaussian-oracle", "--samplers", "ddim", "--steps", "2", "--num-samples", "8",
       "--batch-size", "8", "--metrics", "oracle-fd", "--quiet"]
TRAIN_FASHION = ["train", "--preset", "fashion-mnist", "--device", "cpu", "--steps", "1", "--out", "new.safetensors"]
RECORDED = RunConfig(samplers=("ddim",), steps=(2,), model="gaussian-oracle", num_samples=8, batch_size=8,
                     metrics=("oracle-fd",))
FASHION_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
                 "t10k-labels-idx1-ubyte.gz")


def snapshot(root: Path) -> dict[str, tuple]:
    """Every file and folder under root with its size and modification time (bytes for small files)."""
    out = {}
    for path in sorted(root.rglob("*")):
        stat = path.lstat()
        key = path.relative_to(root).as_posix()
        out[key] = ("dir",) if path.is_dir() else (stat.st_size, stat.st_mtime_ns,
                                                   path.read_bytes() if stat.st_size < 4096 else b"")
    return out


# --------------------------------------------------------------------------- what the cases set up


def user_folder(name: str = "d") -> None:
    Path(name).mkdir()
    (Path(name) / "thesis.tex").write_text("my thesis\n")


def results_folder(name: str = "r", extra: str | None = None) -> None:
    """A results folder as the tool writes it (config.json with its marker, results.csv)."""
    folder = Path(name)
    (folder / "samples").mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"tool": TOOL, "run_id": name, "config": RECORDED.to_dict(),
                                                    "model": "gaussian-oracle", "num_samples": 8, "batch_size": 8,
                                                    "jobs": [], "command": ["bench", "run"]}))
    (folder / "results.csv").write_text("run_id,sampler,steps,nfe,status,error\nr,ddim,2,2,ok,\n")
    (folder / "samples" / "ddim-2.png").write_bytes(b"\x89PNG")
    if extra:
        (folder / extra).write_text("a user's file\n")


def results_with(csv: bytes | None = None, config: bytes | None = None):
    def setup():
        results_folder("r")
        if csv is not None:
            Path("r/results.csv").write_bytes(csv)
        if config is not None:
            Path("r/config.json").write_bytes(config)
    return setup


def a_file(name: str = "taken", text: str = "x\n"):
    return lambda: Path(name).write_text(text)


def model_copy(card_change: dict | None = None, weights: bytes | None = None, card: bool = True,
               card_text: str | None = None, name: str = "m.safetensors"):
    """The shipped digits model copied here, with its card or weights damaged as asked."""
    def setup():
        shutil.copy(WEIGHTS / "digits.safetensors", name)
        if weights is not None:
            Path(name).write_bytes(weights)
        if card:
            data = json.loads((WEIGHTS / "digits.json").read_text())
            data.update(card_change or {})
            Path(name).with_suffix(".json").write_text(card_text if card_text is not None else json.dumps(data))
    return setup


class RunsCode:
    def __reduce__(self):
        return (print, ("this pickle ran code",))


def evil_pickle():
    Path("evil.pt").write_bytes(pickle.dumps({"w": RunsCode()}, protocol=2))
    Path("evil.json").write_text((WEIGHTS / "digits.json").read_text())


def fashion_folder(corrupt: str | None = None, missing: str | None = None):
    """A --data-dir with the four Fashion-MNIST files: tiny, one corrupt mid-stream or one missing."""
    def setup():
        folder = Path("fm")
        folder.mkdir()
        for name in FASHION_FILES:
            if name == missing:
                continue
            images = "images" in name
            header = (b"\x00\x00\x08\x03" + (2).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2) if images \
                else b"\x00\x00\x08\x01" + (2).to_bytes(4, "big")
            data = gzip.compress(header + bytes(2 * 28 * 28 if images else 2))
            if name == corrupt:
                middle = len(data) // 2
                data = data[:middle] + bytes(b ^ 0xFF for b in data[middle:middle + 8]) + data[middle + 8:]
            (folder / name).write_bytes(data)
    return setup


def nothing():
    return None


RANGED_PLUGIN = """
from bench import Param, SamplerSpec, hookimpl
from samplers.ddim import sample_ddim


def scaled(denoiser, x, timesteps, noise, *, scale=1.0, **kwargs):
    return sample_ddim(denoiser, x * scale, timesteps, noise, **kwargs)


@hookimpl
def register_samplers(register):
    register(SamplerSpec("scaled", scaled, "DDIM from a scaled x_T",
                         {"scale": Param(1.0, "x_T scale", low=0.5, high=2)}))
"""


def ranged_plugin():
    Path("ranged.py").write_text(RANGED_PLUGIN)


CUDA_CASE = ([] if torch.cuda.is_available() else
             [("device-cuda-without-cuda", nothing, [*RUN, "--device", "cuda"], 2, ["CUDA", "not available"])])

# id, setup, argv, exit code, words the message must hold
CASES = [
    ("unknown-sampler", nothing, [*RUN, "--samplers", "ddimm"], 2, ["unknown sampler", "Did you mean 'ddim'"]),
    ("steps-zero", nothing, [*RUN, "--steps", "0"], 2, ["between 1 and T=1000"]),
    ("steps-above-T", nothing, [*RUN, "--steps", "1001"], 2, ["between 1 and T=1000"]),
    ("steps-fraction", nothing, [*RUN, "--steps", "2.5"], 2, ["integers"]),
    ("steps-word", nothing, [*RUN, "--steps", "ten"], 2, ["integers"]),
    ("steps-empty", nothing, [*RUN, "--steps", ","], 2, ["--steps", "comma-separated"]),
    ("plugin-parameter-above-its-range", ranged_plugin, ["run", "--plugin", "ranged.py", *RUN[1:], "--samplers",
                                                         "scaled:scale=3"], 2, ["scale=3", "[0.5, 2]"]),
    ("plugin-parameter-nan", ranged_plugin, ["run", "--plugin", "ranged.py", *RUN[1:], "--samplers",
                                             "scaled:scale=nan"], 2, ["scale=nan", "finite"]),
    ("unknown-parameter", nothing, [*RUN, "--samplers", "ddim:etta=1"], 2, ["no parameter 'etta'"]),
    ("parameter-not-a-number", nothing, [*RUN, "--samplers", "ddim:eta=abc"], 2, ["eta", "not a valid float"]),
    ("eta-negative", nothing, [*RUN, "--samplers", "ddim:eta=-1"], 2, ["eta", "[0, inf)"]),
    ("eta-nan", nothing, [*RUN, "--samplers", "ddim:eta=nan"], 2, ["eta", "finite"]),
    ("eta-inf", nothing, [*RUN, "--samplers", "ddim:eta=inf"], 2, ["eta", "finite"]),
    ("plan-unknown", nothing, [*RUN, "--samplers", "ddim:plan=cubic"], 2, ["plan", "one of"]),
    ("bool-parameter-word", nothing, [*RUN, "--samplers", "ddim:sigma_hat=maybe"], 2, ["sigma_hat", "bool"]),
    ("variance-unknown", nothing, [*RUN, "--samplers", "stride-uniform:variance=medium"], 2,
     ["variance", "small, large"]),
    ("parameter-without-name", nothing, [*RUN, "--samplers", "ddim:=1"], 2, ["expected name=value"]),
    ("sections-too-many", nothing, [*RUN, "--samplers", "stride:sections=400,1,1"], 2, ["section 0", "400"]),
    ("unknown-model", nothing, [*RUN, "--model", "nope"], 2, ["unknown model 'nope'"]),
    ("missing-weight-file", nothing, [*RUN, "--model", "gone.safetensors"], 2, ["gone.safetensors", "no such file"]),
    ("corrupt-weight-file", model_copy(weights=b"\x00" * 100), [*RUN, "--model", "m.safetensors"], 2,
     ["m.safetensors", "corrupt"]),
    ("weights-without-card", model_copy(card=False), [*RUN, "--model", "m.safetensors"], 2, ["m.json", "missing"]),
    ("card-num-classes-not-int", model_copy({"num_classes": "ten"}), [*RUN, "--model", "m.safetensors"], 2,
     ["m.json", "num_classes", "integer"]),
    ("card-shape-disagrees", model_copy({"image_shape": [1, 16, 16]}), [*RUN, "--model", "m.safetensors"], 2,
     ["m.json", "image_shape", "disagree"]),
    ("card-not-json", model_copy(card_text="{not json"), [*RUN, "--model", "m.safetensors"], 2,
     ["m.json", "not valid JSON"]),
    ("pickle-that-runs-code", evil_pickle, [*RUN, "--model", "evil.pt"], 2, ["refusing to load", "evil.pt"]),
    ("num-samples-zero", nothing, [*RUN, "--num-samples", "0"], 2, ["--num-samples", ">= 1"]),
    ("num-samples-negative", nothing, [*RUN, "--num-samples", "-5"], 2, ["--num-samples"]),
    ("batch-size-zero", nothing, [*RUN, "--batch-size", "0"], 2, ["--batch-size", ">= 1"]),
    ("seed-beyond-int64", nothing, [*RUN, "--seed", "100000000000000000000000"], 2, ["--seed"]),
    ("seed-word", nothing, [*RUN, "--seed", "lucky"], 2, ["--seed"]),
    ("bootstrap-negative", nothing, [*RUN, "--bootstrap", "-1"], 2, ["--bootstrap"]),
    ("unknown-metric", nothing, [*RUN, "--metrics", "sharpness"], 2, ["unknown metric 'sharpness'"]),
    ("precision-unknown", nothing, [*RUN, "--precision", "fp64"], 2, ["--precision", "fp64"]),
    ("fp16-on-cpu", nothing, [*RUN, "--device", "cpu", "--precision", "fp16"], 2, ["fp16", "CUDA"]),
    ("device-unknown", nothing, [*RUN, "--device", "tpu"], 2, ["--device", "tpu"]),
    ("out-is-a-file", a_file("taken"), [*RUN, "--out", "taken"], 2, ["taken", "is a file"]),
    ("out-under-a-file", a_file("taken"), [*RUN, "--out", "taken/run"], 2, ["cannot be created", "is a file"]),
    ("out-holds-a-users-file", lambda: user_folder("d"), [*RUN, "--out", "d"], 2,
     ["not a sampler-bench results folder"]),
    ("force-on-a-users-folder", lambda: user_folder("d"), [*RUN, "--out", "d", "--force"], 2,
     ["not a sampler-bench results folder", "--force only"]),
    ("force-on-the-working-folder", a_file("notes.txt"), [*RUN, "--out", ".", "--force"], 2,
     ["refuses to delete", "working folder"]),
    ("force-on-a-parent-folder", a_file("notes.txt"), [*RUN, "--out", "..", "--force"], 2,
     ["refuses to delete", "working folder"]),
    ("force-on-results-with-a-users-file", lambda: results_folder("r", extra="notes.txt"),
     [*RUN, "--out", "r", "--force"], 2, ["did not write", "notes.txt"]),
    ("results-folder-without-force", lambda: results_folder("r"), [*RUN, "--out", "r"], 2,
     ["already holds results", "--resume", "--force"]),
    ("resume-missing-folder", nothing, ["run", "--resume", "nowhere", "--quiet"], 2, ["nowhere", "does not exist"]),
    ("resume-a-users-folder", lambda: user_folder("d"), ["run", "--resume", "d", "--quiet"], 2,
     ["d", "no config.json"]),
    ("resume-garbage-csv", results_with(csv=bytes(range(256)) * 4), ["run", "--resume", "r", "--quiet"], 2,
     ["results.csv", "not a readable results CSV"]),
    ("resume-csv-without-columns", results_with(csv=b"a,b\n1,2\n"), ["run", "--resume", "r", "--quiet"], 2,
     ["results.csv", "lacks the column", "sampler"]),
    ("resume-empty-config", results_with(config=b""), ["run", "--resume", "r", "--quiet"], 2,
     ["config.json", "not valid JSON"]),
    ("resume-invalid-config", results_with(config=b"{'config': "), ["run", "--resume", "r", "--quiet"], 2,
     ["config.json", "not valid JSON"]),
    ("resume-config-not-a-run", results_with(config=b'{"config": {"warp": 9}}'), ["run", "--resume", "r"], 2,
     ["config.json", "warp"]),
    ("resume-config-zero-samples", results_with(config=json.dumps(
        {"tool": TOOL, "config": {**RECORDED.to_dict(), "num_samples": 0}}).encode()),
     ["run", "--resume", "r"], 2, ["config.json", "num_samples", "got 0"]),
    ("resume-other-steps", lambda: results_folder("r"), ["run", "--resume", "r", "--steps", "5", "--quiet"], 2,
     ["--steps 5", "differs", "2"]),
    ("resume-other-samplers", lambda: results_folder("r"), ["run", "--resume", "r", "--samplers", "ddpm"], 2,
     ["--samplers ddpm", "differs"]),
    ("resume-other-num-samples", lambda: results_folder("r"), ["run", "--resume", "r", "--num-samples", "9"], 2,
     ["--num-samples 9", "differs"]),
    ("resume-with-force", lambda: results_folder("r"), ["run", "--resume", "r", "--force"], 2,
     ["--resume", "--force", "contradict"]),
    ("missing-plugin-file", nothing, ["--plugin", "nope.py", "list"], 2, ["nope.py", "no such file"]),
    ("unknown-command", nothing, ["fly"], 2, ["invalid choice", "fly"]),
    ("unknown-option", nothing, [*RUN, "--turbo"], 2, ["unrecognized arguments", "--turbo"]),
    ("report-missing-folder", nothing, ["report", "nowhere"], 2, ["nowhere", "does not exist"]),
    ("report-on-a-users-csv", lambda: (Path("u").mkdir(), Path("u/results.csv").write_text("sampler,steps,status\n"),
                                       Path("u/report.md").write_text("my notes\n")), ["report", "u"], 2,
     ["not a sampler-bench results folder"]),
    ("report-garbage-csv", results_with(csv=b"\xff\xfe\x00garbage\x00" * 50), ["report", "r"], 2,
     ["results.csv", "not a readable results CSV"]),
    ("report-csv-without-columns", results_with(csv=b"x\n1\n"), ["report", "r"], 2, ["lacks the column"]),
    ("report-invalid-config", results_with(config=b"[1, 2"), ["report", "r"], 2, ["config.json", "not valid JSON"]),
    ("report-config-not-an-object", results_with(config=b"[1, 2]"), ["report", "r"], 2,
     ["config.json", "run config"]),
    ("compare-missing-folder", lambda: results_folder("r"), ["compare", "r", "nowhere"], 2, ["nowhere"]),
    ("train-default-out-is-shipped", nothing, ["train", "--preset", "fashion-mnist", "--steps", "1"], 2,
     ["fashion-mnist.safetensors", "already exist", "--force"]),
    ("train-over-existing-weights", model_copy(), ["train", "--preset", "smoke", "--out", "m.safetensors"], 2,
     ["m.safetensors", "already exist", "--force"]),
    ("train-data-dir-missing", nothing, [*TRAIN_FASHION, "--data-dir", "nonexistent"], 2,
     ["nonexistent", "does not exist", *FASHION_FILES]),
    ("train-data-dir-lacks-a-file", fashion_folder(missing="train-labels-idx1-ubyte.gz"),
     [*TRAIN_FASHION, "--data-dir", "fm"], 2, ["fm", "lacks train-labels-idx1-ubyte.gz"]),
    ("train-gzip-corrupt-mid-stream", fashion_folder(corrupt="train-images-idx3-ubyte.gz"),
     [*TRAIN_FASHION, "--data-dir", "fm"], 2, ["train-images-idx3-ubyte.gz", "cannot read IDX file"]),
    ("train-data-dir-for-digits", nothing, ["train", "--preset", "smoke", "--out", "s.safetensors", "--data-dir",
                                            "fm"], 2, ["digits", "--data-dir"]),
    ("train-out-not-safetensors", nothing, ["train", "--preset", "smoke", "--out", "w.pt"], 2, [".safetensors"]),
    ("train-unknown-preset", nothing, ["train", "--preset", "imagenet"], 2, ["unknown training preset"]),
    ("train-steps-zero", nothing, ["train", "--preset", "smoke", "--out", "s.safetensors", "--steps", "0"], 2,
     ["--steps"]),
    ("train-lr-nan", nothing, ["train", "--preset", "smoke", "--out", "s.safetensors", "--lr", "nan"], 2, ["--lr"]),
    ("train-seed-beyond-64-bits", nothing, ["train", "--preset", "smoke", "--out", "s.safetensors", "--seed",
                                            "100000000000000000000000"], 2, ["--seed"]),
    ("train-threads-negative", nothing, ["train", "--preset", "smoke", "--out", "s.safetensors", "--threads", "-2"],
     2, ["--threads"]),
    ("train-features-over-shipped", nothing, ["train-features", "--dataset", "digits"], 2,
     ["features-digits", "already exist", "--force"]),
    *CUDA_CASE,
]


def test_there_are_at_least_forty_bad_inputs():
    assert len(CASES) >= 40 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("setup,argv,code,words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_with_exit_code_and_writes_nothing(sandbox, capsys, setup, argv, code, words):
    assert_refused_writing_nothing(sandbox, capsys, setup, argv, code, words)


def assert_refused_writing_nothing(sandbox, capsys, setup, argv, code, words) -> None:
    """Run one table case: the exit code, one `error:` line holding `words`, no traceback, and no file in the
    sandbox or in models/weights/ created, changed or deleted."""
    setup()
    capsys.readouterr()
    before, weights_before = snapshot(sandbox), snapshot(WEIGHTS)
    assert main(list(argv)) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("warning:")]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert snapshot(sandbox) == before
    assert snapshot(WEIGHTS) == weights_before


def test_list_says_each_parameters_allowed_values(capsys):
    assert main(["list", "--json"]) == 0
    params = json.loads(capsys.readouterr().out)["samplers"]["ddim"]["params"]
    assert params["eta"]["allowed"] == "in [0, inf)" and params["plan"]["allowed"].startswith("one of uniform")


# --------------------------------------------------------------------------- --force and the tool's marker


def random_folder(rng: random.Random, root: Path, marker: bool) -> Path:
    """A folder with a random mix of tool-like and user files; `marker` decides whether config.json is ours."""
    folder = root / f"f{rng.randrange(10**9)}"
    folder.mkdir()
    names = ["results.csv", "config.json", "report.md", "notes.txt", "thesis.tex", "samples/a.png", "plots/b.png",
             "data/x.bin", "samples/keep.txt", ".hidden"]
    for name in rng.sample(names, rng.randint(1, len(names))):
        (folder / name).parent.mkdir(exist_ok=True)
        (folder / name).write_text("user data\n")
    if marker:
        (folder / "results.csv").write_text("sampler,steps,status,error\n")
        (folder / "config.json").write_text(json.dumps({"tool": TOOL, "config": {}}))
    elif (folder / "config.json").exists() and rng.random() < 0.5:
        (folder / "config.json").write_text(json.dumps({"tool": "something-else", "config": {}}))
    return folder


@pytest.mark.parametrize("seed", range(4))
def test_force_never_removes_a_folder_without_the_tools_marker(tmp_path, seed):
    rng = random.Random(seed)
    for _ in range(25):
        folder = random_folder(rng, tmp_path, marker=False)
        before = snapshot(folder)
        try:
            prepare_out_dir(str(folder), tmp_path, "m", resume=False, force=True)
        except UserError as exc:
            assert "not a sampler-bench results folder" in str(exc)
        else:
            assert is_results_folder(folder)  # only a folder that carries a marker may be cleared
        assert snapshot(folder) == before


@pytest.mark.parametrize("seed", range(4))
def test_force_clears_a_marked_folder_only_when_it_holds_nothing_else(tmp_path, seed):
    rng = random.Random(seed)
    for _ in range(25):
        folder = random_folder(rng, tmp_path, marker=True)
        foreign = [p for p in folder.rglob("*") if p.is_file() and p.relative_to(folder).as_posix() not in
                   {"results.csv", "config.json", "report.md", "samples/a.png", "plots/b.png"}]
        before = snapshot(folder)
        if foreign:
            with pytest.raises(UserError, match="did not write"):
                prepare_out_dir(str(folder), tmp_path, "m", resume=False, force=True)
            assert snapshot(folder) == before
        else:
            assert prepare_out_dir(str(folder), tmp_path, "m", resume=False, force=True) == folder
            assert list(folder.iterdir()) == []


def test_force_replaces_a_results_folder_the_tool_wrote(sandbox):
    assert main([*RUN, "--out", "r"]) == 0
    assert main([*RUN, "--out", "r", "--steps", "3", "--force"]) == 0
    assert set(pd.read_csv("r/results.csv")["steps"]) == {3}


# --------------------------------------------------------------------------- interrupts, resume, odd samplers


INTERRUPTER = """
from pathlib import Path

from bench import SamplerSpec, hookimpl
from samplers.ddim import sample_ddim


def ddim_until_told(denoiser, x, timesteps, noise, **kwargs):
    if Path("interrupt-now").exists():  # as if the user pressed Ctrl-C during the first row
        raise KeyboardInterrupt
    return sample_ddim(denoiser, x, timesteps, noise, **kwargs)


@hookimpl
def register_samplers(register):
    register(SamplerSpec("ddim-until-told", ddim_until_told, "DDIM, interrupted while interrupt-now exists"))
"""


def test_an_interrupt_before_the_first_row_leaves_a_resumable_folder(sandbox, capsys):
    Path("interrupter.py").write_text(INTERRUPTER)
    Path("interrupt-now").touch()
    assert main(["run", "--plugin", "interrupter.py", *RUN[1:], "--samplers", "ddim-until-told", "--out", "r"]) == 130
    err = capsys.readouterr().err
    assert "--resume r" in err and "Traceback" not in err
    assert is_results_folder(Path("r")) and pd.read_csv("r/results.csv").empty
    Path("interrupt-now").unlink()
    assert main(["run", "--resume", "r", "--plugin", "interrupter.py", "--quiet"]) == 0
    assert list(pd.read_csv("r/results.csv")["status"]) == ["ok"]


def test_a_truncated_last_row_is_redone_on_resume(sandbox, capsys):
    assert main([*RUN, "--steps", "2,3", "--out", "r"]) == 0
    whole = pd.read_csv("r/results.csv")
    text = Path("r/results.csv").read_text()
    Path("r/results.csv").write_text(text[: text.rindex(",ok,") + 4])  # cut the last row after its status
    capsys.readouterr()
    assert main(["run", "--resume", "r", "--quiet"]) == 0
    assert "the last line has no line end" in capsys.readouterr().err
    again = pd.read_csv("r/results.csv")
    assert list(again["steps"]) == [2, 3] and again["oracle_fd"].notna().all()
    assert again["oracle_fd"].tolist() == pytest.approx(whole["oracle_fd"].tolist())


def test_resume_redoes_a_row_whose_plan_changed_since_it_ran(sandbox, capsys):
    assert main([*RUN, "--steps", "2,3", "--out", "r"]) == 0
    config = json.loads(Path("r/config.json").read_text())
    config["jobs"][0]["timesteps"] = [999, 1]  # as if an older plan had made the steps=2 row
    Path("r/config.json").write_text(json.dumps(config))
    capsys.readouterr()
    assert main(["run", "--resume", "r", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "ddim @ 2: its timesteps differ" in err and "ddim @ 3" not in err
    assert json.loads(Path("r/config.json").read_text())["jobs"][0]["timesteps"] == [999, 0]


def test_resume_keeps_the_recorded_command_line(sandbox):
    assert main([*RUN, "--out", "r"]) == 0
    first = json.loads(Path("r/config.json").read_text())
    assert main(["run", "--resume", "r", "--quiet"]) == 0
    after = json.loads(Path("r/config.json").read_text())
    assert after["command"] == first["command"] and after["started_utc"] == first["started_utc"]
    assert len(after["resumes"]) == 1


ODD_SAMPLERS = """
from bench import SamplerSpec, hookimpl


def twice(denoiser, x, timesteps, noise, **kwargs):
    for t in timesteps:
        eps = 0.5 * (denoiser(x, t) + denoiser(x, t))
    return x - 0 * eps


def never(denoiser, x, timesteps, noise, **kwargs):
    return x


@hookimpl
def register_samplers(register):
    register(SamplerSpec("twice-undeclared", twice, "calls the network twice per step, declares once"))
    register(SamplerSpec("never-calls", never, "never calls the network"))
"""


def test_a_row_whose_counted_nfe_differs_from_the_declared_one_is_flagged_and_still_scored(sandbox):
    Path("odd.py").write_text(ODD_SAMPLERS)
    assert main(["run", "--plugin", "odd.py", *RUN[1:], "--samplers", "twice-undeclared", "--steps", "3",
                 "--out", "r"]) == 0
    row = pd.read_csv("r/results.csv").iloc[0]
    assert (row["status"], row["nfe"], row["expected_nfe"]) == ("nfe_mismatch", 6, 3)
    assert row["oracle_fd"] >= 0
    assert "twice-undeclared @ 3: nfe_mismatch" in Path("r/report.md").read_text()


def test_a_sampler_that_never_calls_the_network_gets_a_clear_error(sandbox):
    Path("odd.py").write_text(ODD_SAMPLERS)
    assert main(["run", "--plugin", "odd.py", *RUN[1:], "--samplers", "never-calls", "--out", "r"]) == 0
    row = pd.read_csv("r/results.csv", keep_default_na=False).iloc[0]
    assert row["status"] == "error" and "never called the network" in row["error"]
    assert "ZeroDivision" not in row["error"]


def test_an_unexpected_error_is_a_short_message_and_a_log_with_the_traceback(sandbox, capsys, monkeypatch):
    import bench.cli

    def broken(args):
        raise RuntimeError("planted bug")

    monkeypatch.setattr(bench.cli, "cmd_list", broken)
    assert main(["list"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "this is a bug, please report it" in err and "planted bug" in err
    logs = list((sandbox / "cache" / "sampler-bench" / "errors").glob("*.log"))
    assert len(logs) == 1 and str(logs[0]) in err
    assert "Traceback" in logs[0].read_text() and "planted bug" in logs[0].read_text()


def test_a_file_the_system_refuses_is_a_one_line_error_naming_it(sandbox, capsys, monkeypatch):
    import bench.cli

    def full_disk(args):
        raise OSError(28, "No space left on device", "r/results.csv.tmp")

    monkeypatch.setattr(bench.cli, "cmd_list", full_disk)
    assert main(["list"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: r/results.csv.tmp: No space left on device") and err.count("\n") == 1


def test_train_replaces_weights_only_with_force_or_when_resuming_its_own_checkpoint(sandbox):
    smoke = ["train", "--preset", "smoke", "--device", "cpu", "--out", "s.safetensors", "--checkpoint", "s.ckpt.pt"]
    assert main(smoke) == 0
    first = Path("s.safetensors").read_bytes()
    assert main(smoke) == 2 and Path("s.safetensors").read_bytes() == first
    assert main([*smoke, "--resume", "s.ckpt.pt"]) == 0  # the weights this checkpoint wrote (same preset, same step)
    assert main([*smoke, "--force"]) == 0
