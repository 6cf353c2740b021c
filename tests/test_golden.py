"""Whole outputs against reviewed golden copies (tests/golden/, see tests/golden.py for the comparison).

What is pinned, all of it at once: the `list` text (every sampler's parameters, defaults, bounds, plans and
NFE formula), every option of every command (name, default, type, choices), and two small runs on the exact
oracles: every results.csv column that does not vary between machines, config.json but for its machine and
clock entries, the files written, paired.csv, report.md, report.html and `compare`. The timing columns vary
from run to run, so the report is rebuilt from the run's own rows with fixed timings put in their place.

After a deliberate change of an output: SAMPLER_BENCH_UPDATE_GOLDEN=1 python -m pytest tests/test_golden.py,
then review `git diff tests/golden/`.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from tests.golden import assert_matches_golden, same_up_to_round_off

# columns that differ between two runs of the same configuration (clock, load, threads, memory)
VOLATILE_COLUMNS = ("wall_s", "wall_s_steps", "wall_s_q1", "wall_s_q3", "wall_s_min", "wall_s_max", "s_per_image",
                    "images_per_s", "timing_spread", "step_spread", "timing_batches", "timing_passes",
                    "load_before", "load_after", "cpu_cores", "threads_before", "threads", "busy", "ms_per_nfe",
                    "net_s", "net_ms_per_call", "overhead_frac", "peak_mem_mb")

UNCONDITIONAL = ["run", "--model", "gaussian-oracle", "--samplers", "ddim", "dpmpp-2m", "euler-a", "heun",
                 "dpm-adaptive", "dpmpp_2m_sde+karras", "ddim:eta=0.5,plan=trailing", "unipc:order=2",
                 "--steps", "3,6", "--num-samples", "96", "--batch-size", "64", "--metrics", "oracle-fd",
                 "ref-error", "--bootstrap", "50", "--grid-images", "4", "--trajectory-images", "2", "--quiet"]
SECOND_SEED = ["run", "--model", "gaussian-oracle", "--samplers", "ddim", "dpmpp-2m", "euler-a", "--steps", "3,6",
               "--num-samples", "96", "--batch-size", "64", "--metrics", "oracle-fd", "ref-error", "--bootstrap",
               "50", "--grid-images", "0", "--trajectory-images", "0", "--seed", "1", "--quiet"]
GUIDED = ["run", "--model", "gaussian-oracle-cond", "--samplers", "ddim", "dpmpp-2m-sde", "--steps", "4",
          "--guidance", "0,2", "--classes", "0,2", "--num-samples", "96", "--batch-size", "40", "--metrics",
          "oracle-fd", "cond-acc", "--bootstrap", "50", "--grid-images", "4", "--trajectory-images", "0", "--quiet"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """The three runs, each once for the module, in a sandbox (own working folder and cache home)."""
    import bench.jobs
    from bench.cli import main

    root = tmp_path_factory.mktemp("golden")
    with pytest.MonkeyPatch.context() as mp:
        (root / "work").mkdir()
        mp.chdir(root / "work")
        mp.setenv("XDG_CACHE_HOME", str(root / "cache"))
        mp.delenv("SAMPLER_BENCH_PLUGINS", raising=False)
        mp.setattr(bench.jobs, "MIN_TIMED_S", 0.0)  # one timed pass: the timings are not what is pinned here
        out = {}
        for name, argv in (("unconditional", UNCONDITIONAL), ("second-seed", SECOND_SEED), ("guided", GUIDED)):
            out[name] = root / "runs" / name
            assert main([*argv, "--out", str(out[name])]) == 0
    return root, out


REPO = Path(__file__).resolve().parent.parent


def _masked(text: str, root: Path) -> str:
    """The sandbox's and the checkout's paths, and the model hash in reference cache keys (a hash of float
    tensors, which another CPU's kernels may round differently), replaced by placeholders."""
    text = text.replace(str(root.resolve()), "<tmp>").replace(str(root), "<tmp>").replace(str(REPO), "<repo>")
    return re.sub(r"\b[0-9a-f]{16}-s(\d)", r"<model-hash>-s\1", text)


def _rows_text(folder: Path) -> str:
    """results.csv but its volatile columns, one `column = value` line per cell, rows in file order."""
    table = pd.read_csv(folder / "results.csv", keep_default_na=False)
    lines = ["columns: " + ", ".join(table.columns)]
    for _, row in table.iterrows():
        lines.append(f"[{row['sampler']} @ {row['steps']}" + (f", w={row['guidance']}]" if row["guidance"] != ""
                                                             else "]"))
        lines += [f"  {column} = {_value(row[column])}" for column in table.columns if column not in VOLATILE_COLUMNS]
    return "\n".join(lines) + "\n"


def _value(value) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(value)
    return str(value)


def _volatile_config(config: dict) -> dict:
    """config.json with every entry that depends on the machine, the clock or the checkout replaced."""
    config = json.loads(json.dumps(config))
    for key in ("started_utc", "git_commit", "device_name", "platform", "command", "versions"):
        if key in config:
            config[key] = "<volatile>"
    for key in ("device_name", "torch", "cuda", "cudnn", "tf32_matmul", "tf32_cudnn", "threads", "cpu_cores"):
        if key in config.get("timing", {}):
            config["timing"][key] = "<volatile>"
    config["compile"]["warm_up_s"] = "<volatile>"
    for info in (config.get("reference") or {}).values():
        info["seconds"] = "<volatile>"
        info["convergence"]["rms_difference"] = "<volatile>"  # ~1e-7: round-off of another machine's kernels
    return config


def _fix_timings(folder: Path) -> None:
    """Put fixed timings and machine entries in place of the measured ones, so the report is reproducible;
    the third row is marked busy and the fifth noisy, so the report's timing section has something to say."""
    table = pd.read_csv(folder / "results.csv", keep_default_na=False)
    for i in table.index:
        nfe = float(table.at[i, "nfe"]) if table.at[i, "nfe"] != "" else 1.0
        wall = 0.001 * nfe * (1 + 0.1 * i)
        fixed = {"wall_s": wall, "wall_s_steps": 0.9 * wall, "wall_s_q1": 0.95 * wall, "wall_s_q3": 1.05 * wall,
                 "wall_s_min": 0.9 * wall, "wall_s_max": 1.2 * wall,
                 "s_per_image": wall / table.at[i, "num_samples"], "images_per_s": table.at[i, "num_samples"] / wall,
                 "timing_spread": 0.5 if i == 4 else 0.1, "step_spread": 0.1, "timing_batches": 2,
                 "timing_passes": 3, "load_before": 3.0 if i == 2 else 0.5, "load_after": 0.5, "cpu_cores": 2,
                 "threads_before": 1, "threads": 1, "busy": i == 2, "ms_per_nfe": 1000 * wall / nfe,
                 "net_s": 0.8 * wall, "net_ms_per_call": 800 * wall / nfe, "overhead_frac": 0.2,
                 "peak_mem_mb": 100.0 + i}
        for column, value in fixed.items():
            table.at[i, column] = value
    table.to_csv(folder / "results.csv", index=False)
    config = json.loads((folder / "config.json").read_text())
    fixed = _volatile_config(config)
    for key, value in (("started_utc", "2026-01-01T00:00:00+00:00"), ("git_commit", "0" * 40),
                       ("device_name", "cpu (test machine)"), ("platform", "test"), ("versions", {"torch": "x"}),
                       ("command", ["bench", "run"])):
        fixed[key] = value
    for key, value in fixed["timing"].items():
        if value == "<volatile>":
            fixed["timing"][key] = 1 if key in ("threads", "cpu_cores") else "test"
    fixed["compile"]["warm_up_s"] = 0.5
    for info in (fixed.get("reference") or {}).values():
        info["seconds"] = 1.0
        info["convergence"]["rms_difference"] = 1e-7
    (folder / "config.json").write_text(json.dumps(fixed, indent=1))


def _files(folder: Path) -> str:
    return "\n".join(sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())) + "\n"


# --------------------------------------------------------------------------- the tests


def test_the_comparison_allows_round_off_and_nothing_else():
    assert same_up_to_round_off("fid 12.34 (n=500)", "fid 12.35 (n=500)")  # one unit in the last digit
    assert not same_up_to_round_off("fid 12.33 (n=500)", "fid 12.35 (n=500)")
    assert not same_up_to_round_off("fid 12.34 (n=501)", "fid 12.34 (n=500)")  # integers exactly
    assert not same_up_to_round_off("fid 12.34 (n=500) ok", "fid 12.34 (n=500) error")
    assert not same_up_to_round_off("-0.5", "0.5") and not same_up_to_round_off("1.5 2", "1.5")
    assert same_up_to_round_off("6.188853598585915", "6.188853598585912")
    assert same_up_to_round_off("1.2e-05", "1.3e-05") and not same_up_to_round_off("1.2e-05", "1.4e-05")


def test_list_prints_every_sampler_preset_model_and_metric_as_reviewed(capsys):
    from bench.cli import main

    assert main(["list"]) == 0
    assert_matches_golden("list.txt", capsys.readouterr().out)


def _options(parser: argparse.ArgumentParser, prefix: str = "") -> list[str]:
    lines = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                lines += _options(sub, f"{prefix}{name} ")
            continue
        if isinstance(action, argparse._HelpAction):
            continue
        names = "/".join(action.option_strings) or action.dest
        kind = getattr(action.type, "__name__", type(action.type).__name__) if action.type else "-"
        lines.append(f"{prefix or '(top) '}{names}: dest={action.dest} default={action.default!r} type={kind} "
                     f"nargs={action.nargs} choices={list(action.choices) if action.choices else None} "
                     f"required={action.required} action={type(action).__name__} help={action.help!r}")
    return lines


def test_every_option_of_every_command_has_its_reviewed_name_default_and_type():
    from bench.cli import build_parser

    assert_matches_golden("options.txt", _masked("\n".join(_options(build_parser())) + "\n", REPO))


@pytest.mark.parametrize("name", ["unconditional", "guided"])
def test_every_row_of_a_small_run_holds_its_reviewed_values(folders, name):
    _, out = folders
    assert_matches_golden(f"{name}.rows.txt", _rows_text(out[name]))


@pytest.mark.parametrize("name", ["unconditional", "guided"])
def test_config_json_of_a_small_run_holds_its_reviewed_entries(folders, name):
    root, out = folders
    config = _volatile_config(json.loads((out[name] / "config.json").read_text()))
    assert_matches_golden(f"{name}.config.json", _masked(json.dumps(config, indent=1), root) + "\n")


@pytest.mark.parametrize("name", ["unconditional", "guided"])
def test_a_small_run_writes_exactly_its_reviewed_files(folders, name):
    _, out = folders
    assert_matches_golden(f"{name}.files.txt", _files(out[name]))


def test_the_timing_columns_of_a_real_run_agree_with_each_other(folders):
    """The columns the golden rows leave out, checked by what must hold between them."""
    _, out = folders
    table = pd.read_csv(out["unconditional"] / "results.csv")
    assert (table["wall_s"] > 0).all() and (table["timing_passes"] == 1).all()
    assert table["ms_per_nfe"].tolist() == pytest.approx((1000 * table["wall_s"] / table["nfe"]).tolist())
    assert table["s_per_image"].tolist() == pytest.approx((table["wall_s"] / 96).tolist())
    assert table["images_per_s"].tolist() == pytest.approx((96 / table["wall_s"]).tolist())
    assert (table["timing_batches"] == 2).all()  # 64 + 32 images
    assert ((0 <= table["overhead_frac"]) & (table["overhead_frac"] <= 1)).all()
    assert (table["wall_s_min"] <= table["wall_s_max"]).all()


@pytest.fixture(scope="module")
def rebuilt(folders):
    """Copies of the three folders with fixed timings, the unconditional and guided reports rebuilt; and
    `compare`. Copies, so the tests of the runs' own files see them as written whatever the test order."""
    from bench.report import build_report, compare

    root, ran = folders
    out = {name: Path(shutil.copytree(folder, root / "rebuilt" / name)) for name, folder in ran.items()}
    for name in ("unconditional", "second-seed", "guided"):
        _fix_timings(out[name])
    for name in ("unconditional", "guided"):
        build_report(out[name])
    table = compare(out["unconditional"], out["second-seed"])
    return root, out, table.to_string(index=False, float_format=lambda v: f"{v:.4g}")


@pytest.mark.parametrize("name", ["unconditional", "guided"])
@pytest.mark.parametrize("file", ["report.md", "report.html", "paired.csv"])
def test_the_report_of_a_small_run_is_as_reviewed(rebuilt, name, file):
    root, out, _ = rebuilt
    if not (out[name] / file).is_file():
        assert_matches_golden(f"{name}.{file}", "(not written)\n")
        return
    assert_matches_golden(f"{name}.{file}", _masked((out[name] / file).read_text(), root))


def test_compare_of_two_seeds_is_as_reviewed(rebuilt):
    _, _, text = rebuilt
    assert_matches_golden("compare.txt", text + "\n")


# --------------------------------------------------------------------------- the other commands' files


def _replace_keys(data, keys: set[str]):
    """`data` with the values of `keys` (at any depth) replaced by "<volatile>"."""
    if isinstance(data, dict):
        return {k: "<volatile>" if k in keys else _replace_keys(v, keys) for k, v in data.items()}
    if isinstance(data, list):
        return [_replace_keys(v, keys) for v in data]
    return data


def test_a_tuned_plan_file_is_as_reviewed(sandbox):
    from bench.cli import main

    assert main(["tune-plan", "--model", "gaussian-oracle", "--samplers", "ddim", "dpmpp-2m", "--nfe", "3",
                 "--calibration-images", "16", "--out", "plan.json"]) == 0
    plan = _replace_keys(json.loads(Path("plan.json").read_text()),
                         {"seconds", "reference_seconds", "model_fingerprint", "versions", "git_commit",
                          "created_utc", "started_utc", "command"})
    assert_matches_golden("tune-plan.json", _masked(json.dumps(plan, indent=1), sandbox) + "\n")


def test_the_orders_table_is_as_reviewed(capsys):
    from bench.cli import main

    solvers = "ddim,dpmpp-2m,heun,unipc-2-bh2,deis-3"
    assert main(["orders", "--steps", "20,40", "--images", "4", "--solvers", solvers]) == 0
    assert_matches_golden("orders.md", capsys.readouterr().out)


def test_a_training_card_is_as_reviewed(sandbox):
    import torch

    from bench.cli import main

    assert main(["train", "--preset", "smoke", "--out", "s.safetensors", "--checkpoint", "s.ckpt.pt",
                 "--threads", "1"]) == 0
    card = _replace_keys(json.loads(Path("s.json").read_text()), {"wall_time_s", "torch_version"})
    checkpoint = torch.load("s.ckpt.pt", map_location="cpu", weights_only=True)
    shape = {k: type(v).__name__ if not isinstance(v, (int, float, str)) else v for k, v in sorted(checkpoint.items())
             if k not in ("wall_time_s", "elapsed_s")}
    assert_matches_golden("train-card.json", json.dumps({"card": card, "checkpoint": shape}, indent=1,
                                                        default=str) + "\n")
