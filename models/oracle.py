"""An exact model: a Gaussian-mixture data distribution with a closed-form optimal denoiser.

If x_0 ~ sum_k pi_k N(mu_k, diag(s_k^2)), then x_t = sqrt(a) x_0 + sqrt(1-a) eps is the mixture
sum_k pi_k N(sqrt(a) mu_k, diag(a s_k^2 + 1 - a)), whose score is known, and the optimal noise
prediction is eps*(x_t, t) = -sqrt(1 - a) * grad log p_t(x_t). Sampling with it, every
difference between samples and data is the sampler's own discretisation error.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from bench import Denoiser, DenoiserInfo, ModelSpec, NoiseSchedule, hookimpl
from bench.errors import UserError


class GaussianMixture:
    """A mixture of diagonal Gaussians over flattened images, in float64."""

    def __init__(self, means: torch.Tensor, variances: torch.Tensor, weights: torch.Tensor,
                 image_shape: tuple[int, ...]):
        self.means = means.to(torch.float64)          # (K, D)
        self.variances = variances.to(torch.float64)  # (K, D)
        self.weights = (weights / weights.sum()).to(torch.float64)  # (K,)
        self.image_shape = tuple(image_shape)

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def mean(self) -> torch.Tensor:
        """The true mean of the data distribution, (D,)."""
        return self.weights @ self.means

    def covariance(self) -> torch.Tensor:
        """The true covariance: sum_k pi_k (diag(s_k^2) + mu_k mu_k^T) - m m^T, (D, D)."""
        m = self.mean()
        second = torch.einsum("k,kd,ke->de", self.weights, self.means, self.means)
        second += torch.diag(self.weights @ self.variances)
        return second - torch.outer(m, m)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n exact samples, shaped as images."""
        comp = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, dtype=torch.float64, generator=generator)
        x = self.means[comp] + self.variances[comp].sqrt() * z
        return x.view(n, *self.image_shape)

    def optimal_eps(self, x_t: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
        """eps*(x_t) for per-row alpha_bar values, computed in float64.

        Rows are grouped by alpha_bar (a sampler's batch shares one t), and the per-component
        quadratic forms are expanded into (B, D) x (D, K) products so no (B, K, D) tensor is built.
        """
        x = x_t.reshape(x_t.shape[0], -1).to(torch.float64)
        alpha_bar = alpha_bar.to(torch.float64).reshape(-1).expand(x.shape[0])
        eps = torch.empty_like(x)
        for a in torch.unique(alpha_bar):
            rows = alpha_bar == a
            eps[rows] = self._optimal_eps_at(x[rows], float(a))
        return eps.view_as(x_t).to(x_t.dtype)

    def exact_ode_map(self, x: torch.Tensor, alpha_bar_from: float, alpha_bar_to: float) -> torch.Tensor:
        """Where the probability-flow ODE takes x from noise level alpha_bar_from to alpha_bar_to, exactly.

        Only for a single Gaussian N(mu, diag(s^2)): then x_t = sqrt(a) x_0 + sqrt(1-a) eps is
        N(sqrt(a) mu, a s^2 + 1 - a) per dimension and the ODE moves every point along the same
        affine map, x1 = sqrt(a1) mu + sqrt(a1 s^2 + 1 - a1) (x0 - sqrt(a0) mu) / sqrt(a0 s^2 + 1 - a0),
        whatever path a solver takes. alpha_bar_to = 1 gives the clean sample.
        """
        if self.means.shape[0] != 1:
            raise ValueError("the exact ODE map is closed-form only for a one-component mixture")
        a0, a1 = float(alpha_bar_from), float(alpha_bar_to)
        mu, var = self.means[0].to(x.device), self.variances[0].to(x.device)
        flat = x.reshape(x.shape[0], -1).to(torch.float64)
        scale = ((a1 * var + 1 - a1) / (a0 * var + 1 - a0)).sqrt()
        return (math.sqrt(a1) * mu + scale * (flat - math.sqrt(a0) * mu)).view_as(x).to(x.dtype)

    def _optimal_eps_at(self, x: torch.Tensor, a: float) -> torch.Tensor:
        means = math.sqrt(a) * self.means.to(x.device)                       # (K, D) means of x_t
        inv_var = 1.0 / (a * self.variances.to(x.device) + (1 - a))          # (K, D)
        # sum_d (x - m)^2 / v = x^2 @ (1/v) - 2 x @ (m/v) + sum m^2/v
        quad = (x * x) @ inv_var.T - 2 * x @ (means * inv_var).T + (means**2 * inv_var).sum(1)
        log_prob = -0.5 * (quad - inv_var.log().sum(1)) + self.weights.to(x.device).log()
        resp = torch.softmax(log_prob, dim=1)                                # (B, K)
        score = -(x * (resp @ inv_var) - resp @ (means * inv_var))
        return -math.sqrt(1 - a) * score


def _stroke_patterns(size: int) -> list[torch.Tensor]:
    """A few digit-like stroke images in [-1, 1] (bars, a box, a diagonal) at size x size."""
    grid = torch.full((4, size, size), -1.0, dtype=torch.float64)
    lo, hi = size // 4, size - size // 4
    mid = size // 2
    width = max(1, size // 8)
    grid[0, lo:hi, mid - width // 2: mid - width // 2 + width] = 1.0                # vertical bar ("1")
    grid[1, mid - width // 2: mid - width // 2 + width, lo:hi] = 1.0                # horizontal bar
    grid[2, lo:hi, lo:lo + width] = grid[2, lo:hi, hi - width:hi] = 1.0            # box ("0")
    grid[2, lo:lo + width, lo:hi] = grid[2, hi - width:hi, lo:hi] = 1.0
    for i in range(lo, hi):                                                         # diagonal ("7"-ish)
        j = hi - 1 - (i - lo)
        grid[3, i, max(lo, j - width // 2): j - width // 2 + width] = 1.0
    return list(grid)


def make_gaussian(size: int = 8) -> GaussianMixture:
    """A single diagonal Gaussian (the first stroke pattern; per-pixel std 0.05-1.5), whose ODE map is exact.

    The stds straddle 1 so both contracting and expanding directions of the flow are exercised.
    """
    mean = _stroke_patterns(size)[0].reshape(1, -1) * 0.8
    generator = torch.Generator().manual_seed(4321)
    stds = 0.05 + 1.45 * torch.rand(mean.shape, generator=generator, dtype=torch.float64)
    return GaussianMixture(mean, stds**2, torch.ones(1, dtype=torch.float64), (1, size, size))


def make_mixture(size: int = 8) -> GaussianMixture:
    """The oracle's fixed mixture: 4 stroke patterns, per-pixel std 0.1-0.3, unequal weights."""
    patterns = torch.stack(_stroke_patterns(size)).view(4, -1) * 0.8
    generator = torch.Generator().manual_seed(1234)
    stds = 0.1 + 0.2 * torch.rand(patterns.shape, generator=generator, dtype=torch.float64)
    weights = torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=torch.float64)
    return GaussianMixture(patterns, stds**2, weights, (1, size, size))


class OracleDenoiser(Denoiser):
    """The exact eps* of a GaussianMixture under a schedule; costs almost nothing to run.

    It is a continuous-time model: eps* is exact at any alpha_bar, so a real t is used as given
    (alpha_bar interpolated by the schedule) and `round_time` is the identity.
    """

    continuous_time = True

    def __init__(self, mixture: GaussianMixture, schedule: NoiseSchedule | None = None, name: str = "gaussian-oracle",
                 device: torch.device | str = "cpu"):
        schedule = schedule or NoiseSchedule.linear(1000)
        super().__init__(schedule, DenoiserInfo(name, mixture.image_shape, 0, "eps", dataset=None), None,
                         device=device)
        self.mixture = mixture

    def predict_eps(self, x_t, t, cond=None):
        return self.mixture.optimal_eps(x_t, self.schedule.alpha_bar_of(t))


def _path(kind: str | None):
    """The oracle's noise path: None keeps the linear vp-discrete schedule (bench.paths for the others)."""
    if kind is None:
        return None
    from bench.paths import PathConfig, make_path
    return make_path(PathConfig(kind))


def load_single_gaussian(size: int, name: str, path: str | None = None):
    def load(device="cpu"):
        return OracleDenoiser(make_gaussian(size), _path(path), name=name, device=device)
    return load


def load_oracle(size: int, name: str, path: str | None = None):
    def load(device="cpu"):
        return OracleDenoiser(make_mixture(size), _path(path), name=name, device=device)
    return load


# The exact oracles on the continuous paths (bench.paths): the posterior mean of a Gaussian mixture is
# closed form for any (alpha, sigma), and in VP coordinates it depends only on alpha_bar, so eps* and the
# single Gaussian's ODE map are those of the VP oracle at the path's alpha_bar(t).
PATH_ORACLES = ("flow", "ve", "vp-continuous")


# --------------------------------------------------------------------------- class-conditional oracle


def mixture_component(mixture: GaussianMixture, k: int) -> GaussianMixture:
    """Component k of a mixture as a one-component mixture (a single diagonal Gaussian)."""
    return GaussianMixture(mixture.means[k:k + 1], mixture.variances[k:k + 1], torch.ones(1), mixture.image_shape)


class ConditionalOracleDenoiser(OracleDenoiser):
    """A class-conditional exact model: class k is mixture component k, the null label K the whole mixture.

    eps*(x_t, t, k) is component k's Gaussian eps and eps*(x_t, t, K) the mixture's, row by row, so
    classifier-free guidance on it is exact too. With equal weights, balanced labels (index mod K)
    sample exactly the mixture, which `oracle-fd` scores against.
    """

    def __init__(self, mixture: GaussianMixture, schedule: NoiseSchedule | None = None,
                 name: str = "gaussian-oracle-cond", device: torch.device | str = "cpu"):
        super().__init__(mixture, schedule, name, device)
        self.info = dataclasses.replace(self.info, num_classes=len(mixture.weights))
        self.components = [mixture_component(mixture, k) for k in range(len(mixture.weights))]

    def predict_eps(self, x_t, t, cond=None):
        alpha_bar = self.schedule.alpha_bar_of(t).reshape(-1).expand(x_t.shape[0])  # t may be real (continuous time)
        if cond is None:
            return self.mixture.optimal_eps(x_t, alpha_bar)
        labels = torch.as_tensor(cond, device=x_t.device).long().expand(x_t.shape[0])
        if labels.min() < 0 or labels.max() > self.num_classes:
            raise UserError(f"{self.info.name}: class labels must be in 0..{self.num_classes} "
                            f"({self.num_classes} is the null label), got {labels.min()}..{labels.max()}")
        eps = torch.empty_like(x_t)
        for label in labels.unique().tolist():
            rows = labels == label
            model = self.mixture if label == self.num_classes else self.components[label]
            eps[rows] = model.optimal_eps(x_t[rows], alpha_bar[rows])
        return eps

    @torch.no_grad()
    def classify(self, images: torch.Tensor) -> torch.Tensor:
        """The Bayes classifier of clean images: argmax_k log pi_k + log N(x; mu_k, diag(s_k^2))."""
        x = images.reshape(images.shape[0], -1).to("cpu", torch.float64)
        inv_var = 1.0 / self.mixture.variances
        quad = (x * x) @ inv_var.T - 2 * x @ (self.mixture.means * inv_var).T + (self.mixture.means**2 * inv_var).sum(1)
        return (-0.5 * (quad - inv_var.log().sum(1)) + self.mixture.weights.log()).argmax(1)


def make_conditional_mixture(size: int = 8) -> GaussianMixture:
    """The oracle's stroke patterns and per-pixel stds with equal weights: one class per component."""
    mixture = make_mixture(size)
    return GaussianMixture(mixture.means, mixture.variances, torch.ones(len(mixture.weights)), mixture.image_shape)


def load_conditional_oracle(size: int, name: str):
    def load(device="cpu"):
        return ConditionalOracleDenoiser(make_conditional_mixture(size), name=name, device=device)
    return load


@hookimpl
def register_models(register):
    register(ModelSpec("gaussian-oracle-cond", "Exact class-conditional denoiser of an 8x8 Gaussian mixture: "
                       "class k is component k (4 classes, equal weights), the null label the whole mixture",
                       load_conditional_oracle(8, "gaussian-oracle-cond"), path="vp-discrete", prediction_type="eps"))
    register(ModelSpec("gaussian-oracle", "Exact optimal denoiser of an 8x8 Gaussian mixture (4 components); "
                       "samples are scored against the true distribution", load_oracle(8, "gaussian-oracle"),
                       path="vp-discrete", prediction_type="eps"))
    register(ModelSpec("gaussian-oracle-28", "Exact optimal denoiser of a 28x28 Gaussian mixture (4 components)",
                       load_oracle(28, "gaussian-oracle-28"), path="vp-discrete", prediction_type="eps"))
    register(ModelSpec("gaussian-single", "Exact denoiser of one 8x8 diagonal Gaussian, whose probability-flow ODE "
                       "is solved in closed form (used by `bench orders`)", load_single_gaussian(8, "gaussian-single"),
                       path="vp-discrete", prediction_type="eps"))
    for path in PATH_ORACLES:
        shift = 1.0 if path == "flow" else None
        register(ModelSpec(f"gaussian-oracle-{path}", f"The gaussian-oracle mixture on the {path} noise path "
                           "(exact eps*; continuous time)", load_oracle(8, f"gaussian-oracle-{path}", path),
                           path=path, prediction_type="eps", shift=shift))
        register(ModelSpec(f"gaussian-single-{path}", f"The single Gaussian on the {path} noise path, whose ODE map "
                           "is exact (bench orders --model)", load_single_gaussian(8, f"gaussian-single-{path}", path),
                           path=path, prediction_type="eps", shift=shift))
