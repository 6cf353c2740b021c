"""Steppers in the path's own time t (flow time on rectified-flow models), as SD3 users and diffusers'
FlowMatchEuler/FlowMatchHeun schedulers run them, rather than in EDM's sigma.

On a path x_t = alpha(t) x_0 + sigma(t) eps the probability-flow ODE in native coordinates is
dx/dt = alpha'(t) x_0(x, t) + sigma'(t) eps(x, t), the velocity; on the flow path (alpha = 1 - t,
sigma = t) that is u = eps - x_0, what a flow network predicts. Euler in this time is DDIM
(x + (s - t) u = (1 - s) x_0 + s eps; `euler` and `ddim` already are it, tested element by
element); Heun and the midpoint method are not reparametrisation-invariant, so they differ from
`heun` (EDM sigma) and are given here. Continuous-time paths only (vp-discrete has no real time).
"""

from __future__ import annotations

from bench import SamplerSpec, hookimpl, x0_from_eps
from bench.ode import levels, plan_params, two_stage_nfe
from bench.paths import CONTINUOUS_KINDS


def native_velocity(denoiser, x_vp, t, cond):
    """(native velocity dx/dt, x0, eps) at the VP state x_vp and time t."""
    path = denoiser.schedule
    eps = denoiser(x_vp, t, cond)
    x0 = x0_from_eps(x_vp, eps, path.alpha_bar_at(t))
    return path.d_alpha(t) * x0 + path.d_sigma(t) * eps, x0


def _native_times(timesteps):
    """The plan's times followed by t = 0, the clean end of every continuous path."""
    return [float(t) for t in timesteps] + [0.0]


def sample_flow_heun(denoiser, x, timesteps, noise, *, callback=None, cond=None, **_):
    """Heun's method in the path's time (diffusers' FlowMatchHeunDiscreteScheduler): Euler, then the trapezoidal
    correction with the velocity at the end point, except on the final step to t = 0; 2N-1 calls."""
    path = denoiser.schedule
    times, lv = _native_times(timesteps), levels(path, timesteps)
    x = x * path.scale(times[0])  # native state
    for i, (t, t_next) in enumerate(zip(times[:-1], times[1:])):
        velocity, x0 = native_velocity(denoiser, x / path.scale(t), lv[i].t, cond)
        if callback is not None:
            callback({"step": i, "t": lv[i].t, "x": x / path.scale(t), "x0": x0})
        x_next = x + (t_next - t) * velocity
        if i < len(timesteps) - 1:
            velocity_next, _ = native_velocity(denoiser, x_next / path.scale(t_next), lv[i + 1].t, cond)
            x_next = x + (t_next - t) * (velocity + velocity_next) / 2
        x = x_next
    return x


def sample_flow_midpoint(denoiser, x, timesteps, noise, *, callback=None, cond=None, **_):
    """The explicit midpoint method in the path's time: the velocity at x + (dt/2) v(x, t), t + dt/2; the final step
    to t = 0 is Euler; 2N-1 calls."""
    path = denoiser.schedule
    times, lv = _native_times(timesteps), levels(path, timesteps)
    x = x * path.scale(times[0])
    for i, (t, t_next) in enumerate(zip(times[:-1], times[1:])):
        velocity, x0 = native_velocity(denoiser, x / path.scale(t), lv[i].t, cond)
        if callback is not None:
            callback({"step": i, "t": lv[i].t, "x": x / path.scale(t), "x0": x0})
        if i < len(timesteps) - 1:
            t_mid = (t + t_next) / 2
            x_mid = x + (t_mid - t) * velocity
            velocity, _ = native_velocity(denoiser, x_mid / path.scale(t_mid), t_mid, cond)
        x = x + (t_next - t) * velocity
    return x


@hookimpl
def register_samplers(register):
    register(SamplerSpec(
        "flow-heun", sample_flow_heun, "Heun's method in the path's own time (flow time; diffusers' "
        "FlowMatchHeunDiscreteScheduler), not EDM sigma; continuous paths; 2N-1 calls", plan_params("uniform"),
        plan="uniform", nfe=two_stage_nfe, paths=CONTINUOUS_KINDS))
    register(SamplerSpec(
        "flow-midpoint", sample_flow_midpoint, "The midpoint method in the path's own time (flow time); continuous "
        "paths; 2N-1 calls", plan_params("uniform"), plan="uniform", nfe=two_stage_nfe, paths=CONTINUOUS_KINDS))
