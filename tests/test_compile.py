"""`run --compile`: the network is compiled once per model, every batch shape is warmed up outside the clock."""

import json

import pandas as pd
import pytest

from bench.cli import main

RUN = ["run", "--samplers", "ddim", "--steps", "3", "--num-samples", "10", "--batch-size", "6", "--metrics", "none",
       "--grid-images", "0", "--trajectory-images", "2", "--quiet"]


@pytest.mark.slow
def test_compiled_run_records_compile_time_and_matches_the_eager_samples(tmp_path, monkeypatch):
    import torch

    seen = []  # the trajectory strips of both runs (x_t and predicted x_0 of the first 2 images)
    monkeypatch.setattr("bench.jobs.save_grid", lambda images, path, nrow=8: seen.append(images.clone()))
    assert main([*RUN, "--out", str(tmp_path / "eager")]) == 0
    assert main([*RUN, "--out", str(tmp_path / "compiled"), "--compile"]) == 0
    info = json.loads((tmp_path / "compiled" / "config.json").read_text())["compile"]
    assert info["enabled"] and info["compile_and_warm_up_s"] > 0
    assert info["batch_rows"] == [4, 6]  # the last batch (10 = 6 + 4) and a full batch
    eager, compiled = (pd.read_csv(tmp_path / name / "results.csv").iloc[0] for name in ("eager", "compiled"))
    assert eager["status"] == compiled["status"] == "ok" and eager["nfe"] == compiled["nfe"] == 3
    torch.testing.assert_close(seen[1], seen[0], rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_train_compile_runs_the_compiled_forward_and_matches_eager(tmp_path):
    """`train --compile` once failed at its first step: `forward or model` asked a compiled module for its
    truth value, which torch's OptimizedModule refuses (len() is not supported)."""
    cards = {}
    for name, extra in (("eager", ()), ("compiled", ("--compile",))):
        out = tmp_path / f"{name}.safetensors"
        assert main(["train", "--preset", "smoke", "--device", "cpu", "--out", str(out),
                     "--checkpoint", str(tmp_path / f"{name}.ckpt.pt"), *extra]) == 0
        cards[name] = json.loads(out.with_suffix(".json").read_text())
    assert cards["compiled"]["steps_trained"] == cards["eager"]["steps_trained"] == 6
    assert cards["compiled"]["final_loss"] == pytest.approx(cards["eager"]["final_loss"], rel=1e-3)
