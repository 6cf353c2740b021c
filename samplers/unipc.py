"""UniPC (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of Diffusion
Models"): a multistep predictor UniP-p and a corrector UniC-p sharing one analytical form, in log-SNR with
data prediction. The corrector reuses the model output at the predicted point, which the next step needs
anyway, so it costs no network call and raises the order from p to p + 1 (their Theorem 3.1).
"""

from __future__ import annotations

import functools
import math

import torch

from bench import Param, Preset, SamplerSpec, hookimpl, x0_from_eps
from bench.ode import AFS_PARAM, Level, afs_eps, check_afs, level, levels, multistep_nfe, plan_params, step_order

ORDERS = (1, 2, 3)
VARIANTS = ("bh1", "bh2")


def phi(k: int, z: float) -> float:
    """phi_k(z) = sum_j z^j / (j + k)!, so phi_0 = e^z and phi_{k+1}(z) = (phi_k(z) - 1/k!) / z, in float64.

    The recursion loses a factor |z| of precision per level, so small |z| sums the series instead.
    """
    if abs(z) < 0.5:
        return sum(z**j / math.factorial(j + k) for j in range(25))
    value = math.exp(z)
    for j in range(k):
        value = (value - 1 / math.factorial(j)) / z
    return value


@functools.lru_cache(maxsize=4096)  # a plan's steps recur in every batch: solve each once
def unipc_coefficients(ratios: tuple[float, ...], h: float, variant: str) -> tuple[float, list[float], list[float]]:
    """B(h) and the weights a of UniP-p and UniC-p from the order conditions R_p(h) a_p = g_p(h) / B(h).

    `ratios` are r_m = (lambda_{i-m} - lambda_i) / h of the p - 1 earlier outputs; UniC adds r_p = 1 for the
    new one. R_p has rows r^0 .. r^{p-1}; in data prediction the expansion variable is -h, so
    g_k = k! (-h) phi_{k+1}(-h), and B(h) = -h (bh1) or e^{-h} - 1 (bh2).
    Returns (B(h), predictor weights (p - 1 of them), corrector weights (p)).
    """
    hh = -h
    b_h = hh if variant == "bh1" else math.expm1(hh)
    p = len(ratios) + 1
    r = torch.tensor([*ratios, 1.0], dtype=torch.float64)
    rows = torch.stack([r**k for k in range(p)])
    g = torch.tensor([math.factorial(k) * hh * phi(k + 1, hh) / b_h for k in range(1, p + 1)], dtype=torch.float64)
    # As the paper's code: a_1 = 1/2 for UniP-2 and UniC-1, which meets the order condition to the accuracy
    # needed and is where bh1 and bh2 differ (an exact solve makes B(h) cancel out of the update).
    predictor = [] if p == 1 else [0.5] if p == 2 else torch.linalg.solve(rows[:-1, :-1], g[:-1]).tolist()
    corrector = [0.5] if p == 1 else torch.linalg.solve(rows, g).tolist()
    return b_h, predictor, corrector


def unipc_update(x: torch.Tensor, past: list[tuple[Level, torch.Tensor]], nxt: Level, variant: str):
    """UniP-p from the last of `past` (level, data prediction; oldest first, p entries) to `nxt`, and UniC-p.

        x~_n = (sigma_n / sigma) x - alpha_n (e^{-h} - 1) m_0 - alpha_n B(h) sum_{m<p} a_m D_m      (UniP-p)
        x_n  = (sigma_n / sigma) x - alpha_n (e^{-h} - 1) m_0 - alpha_n B(h) sum_{m<=p} a^c_m D_m   (UniC-p)

    with D_m = (m_{-m} - m_0) / r_m and D_p = m_n - m_0, m_n the output at x~_n.
    Returns x~_n and the corrector as a function of m_n.
    """
    cur, m0 = past[-1]
    older = past[-2::-1]   # m_{-1}, m_{-2}, ...
    h = nxt.lam - cur.lam
    ratios = tuple((lv.lam - cur.lam) / h for lv, _ in older)
    b_h, a_pred, a_corr = unipc_coefficients(ratios, h, variant)
    diffs = [(m - m0) / r for (_, m), r in zip(older, ratios)]
    x_base = torch.add(x * (nxt.sigma / cur.sigma), m0, alpha=-nxt.alpha * math.expm1(-h))
    x_pred = x_base
    for a, d in zip(a_pred, diffs):
        x_pred = x_pred.add(d, alpha=-nxt.alpha * b_h * a)

    def correct(m_new: torch.Tensor) -> torch.Tensor:
        x_corr = torch.add(x_base, m_new - m0, alpha=-nxt.alpha * b_h * a_corr[-1])
        for a, d in zip(a_corr, diffs):
            x_corr.add_(d, alpha=-nxt.alpha * b_h * a)
        return x_corr

    return x_pred, correct


def sample_unipc(denoiser, x, timesteps, noise, *, order=3, variant="bh2", corrector=True, afs=False,
                 lower_order_final=True, history=(), callback=None, cond=None, **_):
    """Multistep UniPC-p (Zhao et al. 2023, UniP-p with UniC-p, data prediction): one call per time.

    At each time the model output m at the predicted point corrects that point (UniC) and then feeds the
    next prediction (UniP). Orders grow 1, 2, ... with the history; as the reference code and diffusers,
    lower-order-final uses at most as many outputs as steps remain. The final jump to clean data is the
    denoising step from the corrected state, with the eps of the last call.
    """
    schedule = denoiser.schedule
    lv = levels(schedule, timesteps)
    past = [(level(schedule, e.t), x0_from_eps(e.x, e.eps, schedule.alpha_bar_at(e.t))) for e in history]
    correct = None
    for i, (cur, nxt) in enumerate(zip(lv[:-1], lv[1:])):
        eps = afs_eps(x) if afs and i == 0 and not past else denoiser(x, cur.t, cond)
        m = x0_from_eps(x, eps, cur.alpha_bar)
        if correct is not None:   # UniC-p with the output just computed at the predicted point
            x = correct(m)
        x0 = x0_from_eps(x, eps, cur.alpha_bar) if correct is not None else m
        if callback is not None:
            callback({"step": i, "t": cur.t, "x": x, "x0": x0})
        if nxt.clean:
            return x0
        past = (past + [(cur, m)])[-order:]
        p = step_order(order, i, len(timesteps), len(history), lower_order_final, final_threshold=math.inf)
        x, correct = unipc_update(x, past[-p:], nxt, variant)
        if not corrector:
            correct = None
    return x


@hookimpl
def register_samplers(register):
    register(SamplerSpec(
        "unipc", sample_unipc, "UniPC-3 (Zhao et al. 2023): multistep predictor-corrector in log-SNR, data "
        "prediction; the corrector reuses the next call, so NFE = steps",
        {"order": Param(3, "predictor order p (UniPC-p); the corrector raises it to p + 1", ORDERS),
         "variant": Param("bh2", "B(h): bh1 = h, bh2 = e^h - 1", VARIANTS),
         "corrector": Param(True, "apply UniC (off: the predictor UniP-p alone)"),
         "afs": AFS_PARAM,
         "lower_order_final": Param(True, "near the end use at most as many outputs as steps remain"),
         **plan_params("logsnr")},
        plan="logsnr", nfe=multistep_nfe, check=check_afs))


@hookimpl
def register_presets(register):
    register(Preset("unipc-bh1", "unipc", {"variant": "bh1"}, "UniPC-3 with B(h) = h (the paper's choice for "
                    "unconditional sampling in few steps)"))
    register(Preset("unipc-bh2", "unipc", {"order": 2}, "UniPC-2 with B(h) = e^h - 1 (diffusers' default; the "
                    "paper's choice with guidance)"))
