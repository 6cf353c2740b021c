"""Properties a hand mutation run found unchecked: bugs planted against them survived the rest of the suite."""

from __future__ import annotations

import math
from html.parser import HTMLParser

import pandas as pd
import pytest
import torch

import models.train as train_module
from bench.config import RunConfig
from bench.frechet import resample_counts
from bench.harness import run_benchmark
from bench.noise import NoiseSource
from bench.ode import Evaluation, step_order
from bench.orders import accepts_history
from bench.paired import Reference, bootstrap_distances, compare_rows, paired_sentences
from bench.plugins import load_registry
from bench.report import budget_sentences, build_report, read_results_csv
from bench.sampling import ClippedDenoiser, batch_noise
from bench.timing import BatchTimes, MachineState, summarize
from models.metrics import ClassAccuracy, create_oracle_fd
from models.weights import load_state
from tests.helpers import run_sampler
from tests.test_distributed import assert_same_quality, torchrun
from tests.test_train import run_smoke

QUIET = MachineState(load=0.1, cores=2, threads=1)


def _run(registry, name, overrides, denoiser, steps, images=torch.arange(4), **kwargs):
    spec = registry.samplers[name]
    return run_sampler(spec, spec.resolve_params(overrides), denoiser, steps, images, dtype=torch.float64, **kwargs)


def _diffusers_scheduler(scheduler, oracle, timesteps):
    """A diffusers scheduler stepping through exactly our timesteps (EDM sigmas in float32, as diffusers keeps them)."""
    scheduler.set_timesteps(len(timesteps))
    scheduler.timesteps = torch.tensor(timesteps)
    scheduler.sigmas = torch.tensor([oracle.schedule.sigma_at(t) for t in timesteps] + [0.0], dtype=torch.float32)
    return scheduler


# ------------------------------------------------------------ 1. UniPC against diffusers, long plans

@pytest.mark.parametrize("steps", [15, 20])
@pytest.mark.parametrize("order,variant", [(2, "bh2"), (3, "bh1"), (3, "bh2")])
def test_unipc_corrected_states_match_diffusers_unipc_on_plans_of_fifteen_steps_and_more(registry, oracle, steps,
                                                                                          order, variant):
    """diffusers' UniPC uses lower-order-final at every plan length (unlike its DPM-Solver's < 15 steps), as
    ours does; at order 3 a threshold of 15 here would move every state near the end by ~1e-4 or more."""
    diffusers = pytest.importorskip("diffusers")
    ours = []
    _, timesteps = _run(registry, "unipc", {"order": order, "variant": variant}, oracle, steps,
                        callback=lambda state: ours.append(state["x"].clone()))
    scheduler = _diffusers_scheduler(diffusers.UniPCMultistepScheduler(solver_order=order, solver_type=variant),
                                     oracle, timesteps)
    x = ours[0]
    for t, state in zip(timesteps, ours, strict=True):
        x = scheduler.step(oracle(x, t), t, x).prev_sample
        assert torch.allclose(scheduler.last_sample, state, rtol=0, atol=2e-6), t


# ------------------------------------------------------------ 2. the returned x_0 is the last callback's

@pytest.mark.parametrize("name,overrides", [
    ("dpm-solver++", {"order": 2}), ("dpm-solver++", {"order": 3}), ("deis", {}), ("unipc", {}),
    ("unipc", {"variant": "bh1"}), ("dpm-solver++-sde", {}),
])
def test_a_multistep_solver_returns_the_x0_its_callback_reports_at_the_last_step(registry, oracle, name, overrides):
    """The final jump is the denoising step from the reported state (for UniPC: the corrected one, with the eps
    of the last call). iPNDM and PLMS are left out: their last step is an Adams-Bashforth step onto sigma = 0."""
    states = []
    x, timesteps = _run(registry, name, overrides, oracle, 8, callback=states.append)
    assert states[-1]["t"] == timesteps[-1]
    assert torch.equal(x, states[-1]["x0"])


# ------------------------------------------------------------ 3. a tail with history is the full run's tail

# Every sampler whose function takes `history`; UniPC runs without its corrector: the corrected state at the
# tail's first time needs the output at the predicted point, made by the step before, which history cannot carry.
HISTORY_SAMPLERS = [(name, {"corrector": False} if name == "unipc" else {})
                    for name, spec in load_registry().samplers.items() if accepts_history(spec.fn)]
HISTORY_CASES = HISTORY_SAMPLERS + [("dpm-solver++", {"order": 3}), ("deis", {"order": 2}),
                                    ("ipndm", {"variable_step": True}), ("plms", {"warmup": "improved-euler"})]
SEEDED = 3  # evaluations passed as history: enough for every method here, PLMS's warm-up included
# A plan of 16 steps with a tail of 13: lower-order-final is decided on the whole plan's length (the tail plus
# the seeded history), so the tail steps into its last time at the order the full run uses.

def _tail_run_cases():
    for name, overrides in HISTORY_CASES:
        label = "-".join([name, *(f"{k}={v}" for k, v in overrides.items())])
        for steps in (10, 20):
            yield pytest.param(name, overrides, steps, id=f"{label}-{steps}")
    for name in ("deis", "dpm-solver++"):
        yield pytest.param(name, {"order": 3}, 16, id=f"{name}-order=3-16")


@pytest.mark.parametrize("name,overrides,steps", list(_tail_run_cases()))
def test_a_tail_run_with_the_earlier_evaluations_as_history_is_the_tail_of_the_full_run(registry, oracle, name,
                                                                                         overrides, steps):
    spec = registry.samplers[name]
    params = spec.resolve_params(overrides)
    timesteps = spec.timesteps(oracle.schedule, steps, params)
    x_T = batch_noise(0, torch.arange(4), oracle.image_shape, dtype=torch.float64).initial()
    full_states, tail_states = [], []

    def keep(state):
        full_states.append({**state, "x": state["x"].clone()})

    full = spec.fn(oracle, x_T, timesteps, None, callback=keep, **spec.sampler_kwargs(params))
    # the callback's x is where the model was evaluated (no corrector here), so the oracle gives the same eps again
    history = [Evaluation(s["t"], s["x"], oracle(s["x"], s["t"])) for s in full_states[:SEEDED]]
    tail = spec.fn(oracle, full_states[SEEDED]["x"], timesteps[SEEDED:], None, history=history,
                   callback=tail_states.append, **spec.sampler_kwargs(params))
    assert [s["t"] for s in tail_states] == [s["t"] for s in full_states[SEEDED:]]
    for ours, reference in zip(tail_states, full_states[SEEDED:], strict=True):
        assert torch.equal(ours["x"], reference["x"]), ours["t"]
    assert torch.equal(tail, full)


# ------------------------------------------------------------ 4. SDE-DPM-Solver++(2M) against diffusers

@pytest.mark.parametrize("steps", [8, 20])
def test_sde_dpm_solver_pp_2m_matches_diffusers_step_by_step_given_the_same_noise(registry, oracle, steps):
    """diffusers' sde-dpmsolver++ (midpoint) from each of our states, with our noise for that step, lands on our
    next state to float32 precision (diffusers upcasts the sample to float32); its final step to sigma = 0 is
    the denoising step, as ours."""
    diffusers = pytest.importorskip("diffusers")
    images = torch.arange(4)
    noise = batch_noise(0, images, oracle.image_shape, dtype=torch.float64)
    states = []
    x0, timesteps = _run(registry, "dpm-solver++-sde", {"order": 2}, oracle, steps, images, noise=noise,
                         callback=lambda state: states.append(state["x"].clone()))
    scheduler = _diffusers_scheduler(diffusers.DPMSolverMultistepScheduler(
        algorithm_type="sde-dpmsolver++", solver_order=2, solver_type="midpoint"), oracle, timesteps)
    for i, (t, x, ours_next) in enumerate(zip(timesteps, states, [*states[1:], x0], strict=True)):
        theirs = scheduler.step(oracle(x, t), t, x, variance_noise=noise(i)).prev_sample
        assert torch.allclose(theirs, ours_next, rtol=0, atol=5e-6), f"step {i}"


# ------------------------------------------------------------ 5. lower-order-final's threshold

def test_lower_order_final_applies_only_to_plans_under_fifteen_steps():
    # step n - 2 goes into the plan's last time: order <= 2 on a 14-step plan, the full order on a 15-step one
    assert step_order(3, 12, 14, 0, True) == 2
    assert step_order(3, 13, 15, 0, True) == 3
    assert step_order(3, 13, 15, 0, True, final_threshold=math.inf) == 2  # UniPC's rule: at every length


# ------------------------------------------------------------ 6. dynamic clipping through the seam

def test_dynamic_clipping_through_the_seam_is_the_clipping_wrapper_with_the_same_percentile(registry):
    """On the single Gaussian (per-pixel std up to 1.5) |x_0| goes well beyond 1, so the percentile matters."""
    single = registry.model("gaussian-single").load("cpu")
    through_seam = {}
    for p in (0.6, 0.9):
        seam, _ = _run(registry, "ddim", {"clip_x0": "dynamic", "clip_percentile": p}, single, 6)
        wrapped, _ = _run(registry, "ddim", {}, ClippedDenoiser(single, "dynamic", p), 6)
        assert torch.equal(seam, wrapped), p
        through_seam[p] = seam
    assert (through_seam[0.6] - through_seam[0.9]).abs().max() > 0.1


# ------------------------------------------------------------ 7. pinned noise, even-sized image

def test_reference_noise_values_hold_for_an_even_sized_image():
    # Pinned: these values are image 0's and image 17's noise stream at step 0 for seed 0, which every published
    # result depends on; with an even number of pixels the cos and sin halves of Box-Muller meet at pixel 32.
    # A change here silently changes every result ever published with this seed.
    got = NoiseSource(0).normal(torch.tensor([0, 17]), (1, 8, 8), step=0).flatten(1)[:, [0, 1, 31, 32, 33, 63]]
    expected = torch.tensor([[-0.028496826, -0.647654712, -1.802803278, -0.832388639, -0.232197732, 0.058541935],
                             [-1.559866548, -1.870613694, -1.007745743, -2.031926155, -0.856251955, -0.393511713]])
    assert torch.allclose(got, expected, rtol=0, atol=1e-6)


# ------------------------------------------------------------ 8. bootstrap multiplicities

def test_every_image_index_the_last_included_has_mean_bootstrap_multiplicity_one():
    counts = resample_counts(12, 20000, seed=0)
    assert bool((counts.sum(1) == 12).all())
    mean = counts.mean(0)  # each is Binomial(12, 1/12): standard error of the mean sqrt(11/12 / 20000) ~ 0.007
    assert bool(((mean - 1).abs() < 0.05).all()), mean


# ------------------------------------------------------------ 9. class-accuracy shards

def _brightness_classes(images: torch.Tensor) -> torch.Tensor:
    """A stand-in classifier: class 1 for images brighter than 0 on average, else class 0."""
    return (images.flatten(1).mean(1) > 0).long()


def test_merged_class_accuracy_shards_give_the_cond_acc_of_one_accumulator_fed_every_batch():
    generator = torch.Generator().manual_seed(0)
    sizes = [7, 3, 5, 11, 2]   # unequal batches with unequal accuracies: a mean of shard accuracies would differ
    batches = [(torch.randn(n, 1, 4, 4, generator=generator), torch.randint(2, (n,), generator=generator))
               for n in sizes]
    whole = ClassAccuracy(_brightness_classes)
    shards = [ClassAccuracy(_brightness_classes) for _ in range(2)]
    for i, (images, labels) in enumerate(batches):
        whole.update(images, labels)
        shards[i % 2].update(images, labels)   # rank r gets batches r, r + W, ... (bench.distributed)
    assert shards[0].compute()["cond_acc"] != shards[1].compute()["cond_acc"]
    shards[0].merge_shards([shard.shard_state() for shard in shards])   # as rank 0 does
    assert shards[0].compute() == whole.compute()
    assert whole.compute()["cond_acc_n"] == sum(sizes)


# ------------------------------------------------------------ 10. the paired verdict

@pytest.mark.parametrize("worse_first", [True, False])
def test_the_paired_verdict_names_the_configuration_with_the_lower_distance_as_better(oracle, worse_first):
    mixture = oracle.mixture
    reference = Reference("oracle_fd", mixture.mean().double().numpy(), mixture.covariance().double().numpy())
    exact = mixture.sample(200, generator=torch.Generator().manual_seed(0)).reshape(200, -1).double()
    rows = {"exact": exact, "shifted": exact + 0.3}   # the same images, one moved away from the truth
    if worse_first:
        rows = {"shifted": rows["shifted"], "exact": rows["exact"]}
    ones = torch.ones(1, 200, dtype=torch.float64)
    points = {label: float(bootstrap_distances(r, ones, reference)[0]) for label, r in rows.items()}
    assert points["exact"] < points["shifted"]
    (c,) = compare_rows(rows, points, reference, resamples=50)
    table = pd.DataFrame([{"nfe": 10, "a": c.a, "b": c.b, "column": "oracle_fd", "diff": c.diff,
                           "paired_low": c.paired[0], "paired_high": c.paired[1], "unpaired_low": c.unpaired[0],
                           "unpaired_high": c.unpaired[1], "width_ratio": c.width_ratio,
                           "significant": c.significant, "same_samples": c.same_samples}])
    (sentence,) = paired_sentences(table)
    assert c.significant
    assert sentence.endswith("**exact is better**")


# ------------------------------------------------------------ 11. more ranks than batches

@pytest.mark.slow
def test_two_processes_for_a_single_batch_give_the_ok_rows_of_one_process(tmp_path):
    from bench.cli import main

    common = ["run", "--model", "gaussian-oracle", "--samplers", "ddim", "ddim-eta1", "--steps", "4",
              "--num-samples", "8", "--batch-size", "8", "--bootstrap", "20", "--grid-images", "0", "--quiet"]
    assert main([*common, "--out", str(tmp_path / "one")]) == 0
    launched = torchrun(*common, "--out", str(tmp_path / "two"))   # rank 1 gets no batch at all
    assert launched.returncode == 0, launched.stderr[-2000:]
    one = read_results_csv(tmp_path / "one" / "results.csv")
    two = read_results_csv(tmp_path / "two" / "results.csv")
    assert set(one["status"]) == set(two["status"]) == {"ok"}
    assert_same_quality(one, two)
    assert set(two["world_size"]) == {2}  # the rank that got no batch still took part


# ------------------------------------------------------------ 12. the best at each budget

def test_the_best_at_a_budget_is_the_lowest_score_over_every_row_within_it():
    rows = pd.DataFrame([
        {"sampler": "cheap-good", "steps": 5, "nfe": 5, "oracle_fd": 0.1, "wall_s": 1.0, "status": "ok"},
        {"sampler": "mid-worse", "steps": 10, "nfe": 10, "oracle_fd": 0.5, "wall_s": 2.0, "status": "ok"},
        {"sampler": "dear-best", "steps": 20, "nfe": 20, "oracle_fd": 0.05, "wall_s": 4.0, "status": "ok"},
        {"sampler": "failed-best", "steps": 8, "nfe": 8, "oracle_fd": 0.0, "wall_s": 1.0, "status": "error"},
    ])
    lines = budget_sentences(rows, "oracle_fd", "FD")
    best = [line.split("**")[1] for line in lines if line.startswith("With at most")]
    assert best == ["cheap-good", "cheap-good", "dear-best"]   # budgets 5, 10, 20 (the failed row is no budget)


# ------------------------------------------------------------ 13. too few network calls

HALF_CALLS = """
from bench import SamplerSpec, hookimpl
from samplers.ddim import sample_ddim


@hookimpl
def register_samplers(register):
    register(SamplerSpec("declares-double", sample_ddim, "DDIM (one call per step) declaring two", nfe_per_step=2))
"""


def test_a_row_that_counts_fewer_network_calls_than_declared_is_an_nfe_mismatch(tmp_path):
    plugin = tmp_path / "half_calls.py"
    plugin.write_text(HALF_CALLS)
    config = RunConfig(samplers=("declares-double",), steps=(3,), model="gaussian-oracle", num_samples=8,
                       batch_size=8, metrics=("oracle-fd",), grid_images=0, trajectory_images=0, bootstrap=0)
    out = run_benchmark(config, load_registry([str(plugin)]), out=str(tmp_path / "run"), quiet=True)
    row = read_results_csv(out / "results.csv").iloc[0]
    assert (row["status"], row["nfe"], row["expected_nfe"]) == ("nfe_mismatch", 3, 6)
    assert "counted 3 network calls per image, the sampler declares 6" in row["error"]


# ------------------------------------------------------------ 14. wall_s_steps and timing passes

def test_wall_s_steps_does_not_depend_on_the_number_of_timing_passes():
    steps = [[0.1, 0.2, 0.1, 0.3], [0.2, 0.1, 0.1, 0.2]]   # two batches of 4 images, 4 steps each

    def timed(passes: int) -> dict:
        times = BatchTimes()
        for _ in range(passes):
            for batch in steps:
                times.add(sum(batch), 4, batch)
        times.passes = passes
        return summarize(times, num_images=8, before=QUIET, after=QUIET)

    once = timed(1)
    assert once["wall_s_steps"] == pytest.approx(0.15 * 4 * 2)   # the median step times 4 steps, 2 batches of 4
    for passes in (2, 5):
        assert timed(passes)["wall_s_steps"] == pytest.approx(once["wall_s_steps"]), passes


# ------------------------------------------------------------ 15. escaping in the report

HOSTILE = '<script>alert(1)</script><img src=x onerror="alert(2)">" onerror="x'


class _Page(HTMLParser):
    """The tags, attributes and text a browser would see."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags, self.attributes, self.text = [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attributes += [name for name, _ in attrs]

    def handle_data(self, data):
        self.text.append(data)


def test_every_string_in_the_report_is_escaped_failed_rows_included(tmp_path):
    out = tmp_path / "run"
    (out / "samples").mkdir(parents=True)
    (out / "samples" / 'grid" onerror="x.png').write_bytes(b"")   # a file name lands in src, alt and a caption
    pd.DataFrame([
        {"sampler": f"ok {HOSTILE}", "steps": 4, "nfe": 4, "wall_s": 1.0, "status": "ok", "error": ""},
        {"sampler": f"bad {HOSTILE}", "steps": 4, "nfe": math.nan, "wall_s": math.nan, "status": "error",
         "error": f"RuntimeError: {HOSTILE}"},
    ]).to_csv(out / "results.csv", index=False)
    build_report(out)
    page = _Page()
    page.feed((out / "report.html").read_text())
    assert "script" not in page.tags and page.tags.count("img") == 1   # only the sample grid's own image
    assert "onerror" not in page.attributes
    text = "".join(page.text)
    assert f"bad {HOSTILE} @ 4: error: RuntimeError: {HOSTILE}" in text   # shown to the reader, not run
    md = (out / "report.md").read_text()
    assert "<script>" not in md and "<img" not in md
    assert "RuntimeError: &lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x onerror=" in md


# ------------------------------------------------------------ 16. mean_err's sign

def test_samples_shifted_down_report_the_shift_as_a_positive_mean_error(oracle):
    samples = oracle.mixture.sample(20000, generator=torch.Generator().manual_seed(0))
    metric = create_oracle_fd(oracle, {})
    metric.update(samples - 0.2)
    assert metric.compute()["mean_err"] == pytest.approx(0.2, abs=0.03)


# ------------------------------------------------------------ 17-18. training checkpoints

def test_loading_a_training_checkpoint_gives_its_ema_weights_as_the_card_says(tmp_path):
    card = run_smoke(tmp_path, "smoke")
    assert card["training"]["saved_weights"] == "EMA"
    checkpoint = torch.load(tmp_path / "smoke.ckpt.pt", map_location="cpu", weights_only=True)
    loaded, saved = load_state(tmp_path / "smoke.ckpt.pt"), load_state(tmp_path / "smoke.safetensors")
    assert set(loaded) == set(saved) == set(checkpoint["ema"])
    assert all(torch.equal(loaded[k], saved[k]) and torch.equal(loaded[k], checkpoint["ema"][k]) for k in loaded)
    assert any(not torch.equal(checkpoint["ema"][k], checkpoint["model"][k]) for k in loaded)  # EMA is not the model


def test_after_resume_the_cards_wall_time_includes_the_checkpoints(tmp_path):
    run_smoke(tmp_path, "resumed", "--steps", "3")
    path = tmp_path / "resumed.ckpt.pt"
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    assert checkpoint["step"] == 3
    # The smoke run takes well under a second (and the card rounds to 0.1 s): as if the first session had taken
    # 1000 s, so only the checkpoint's time carried over can reach it.
    checkpoint["wall_time_s"] = 1000.0
    torch.save(checkpoint, path)
    card = run_smoke(tmp_path, "resumed", "--resume", str(path))
    assert card["steps_trained"] == train_module.PRESETS["smoke"].steps == 6
    assert card["wall_time_s"] >= 1000.0
