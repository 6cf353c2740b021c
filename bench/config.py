"""Typed, frozen configuration for a benchmark run, written next to every result."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from bench.errors import UserError

DEFAULT_STEPS = (5, 10, 20, 50)  # where fast solvers differ; ddpm runs its full 1000 steps as the reference
PRECISIONS = ("fp32", "bf16", "fp16")


# Allowed range of every count in a run config. The upper bounds are far above any real run and keep a
# typo or a tampered config.json (bootstrap 1e12) from asking for terabytes.
COUNT_BOUNDS = {"num_samples": (1, 100_000_000), "batch_size": (1, 10_000_000), "threads": (1, 4096),
                "bootstrap": (0, 100_000), "grid_images": (0, 10_000), "trajectory_images": (0, 1_000),
                "seed": (-(2**63), 2**63 - 1)}


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines a run's numbers."""

    samplers: tuple[str, ...] = ("all",)
    steps: tuple[int, ...] = DEFAULT_STEPS
    model: str | None = None          # None: the embedded default for the device
    num_samples: int | None = None    # None: the model's default
    batch_size: int | None = None
    seed: int = 0
    device: str = "auto"
    precision: str = "fp32"
    metrics: tuple[str, ...] = ("all",)
    fid_weights: str | None = None
    bootstrap: int = 200
    grid_images: int = 64
    trajectory_images: int = 4
    plugins: tuple[str, ...] = field(default_factory=tuple)
    guidance: tuple[float, ...] = ()  # classifier-free guidance w (Ho & Salimans); () = 0 on conditional models
    classes: tuple[int, ...] = ()     # labels to cycle through; () = every class of a conditional model
    compile: bool = False             # torch.compile the network (compile time kept out of wall_s)
    threads: int | None = None        # torch CPU threads for sampling; None: torch's default
    shift: float | None = None        # flow models: the time shift of every plan placed in t; None: the model's

    def __post_init__(self):
        """The counts a run is made of are checked here, whoever builds the config (CLI, --resume, code)."""
        for name, (low, high) in COUNT_BOUNDS.items():
            value = getattr(self, name)
            if value is None and name in ("num_samples", "batch_size", "threads"):
                continue
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                bound = "a 64-bit integer" if name == "seed" else f"an integer in [{low}, {high:,}]"
                raise UserError(f"--{name.replace('_', '-')} must be {bound}, got {value!r}")

    def to_dict(self) -> dict:
        out = asdict(self)
        if out["shift"] is None:
            del out["shift"]  # configs of runs without --shift stay as they were written before it existed
        return out


def package_versions() -> dict[str, str]:
    """Versions of the packages whose behaviour shapes the numbers."""
    out = {"python": platform.python_version()}
    for name in ("sampler-bench", "torch", "torchvision", "torch-fidelity", "numpy", "pandas", "pluggy", "scipy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def git_commit() -> str | None:
    """The commit of the checkout the code runs from, with '+dirty' when it has changes."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (commit + ("+dirty" if dirty else "")) or None


def provenance(device_name: str) -> dict:
    """Versions, commit, device and command line: what a reader needs to reproduce a row."""
    return {"versions": package_versions(), "git_commit": git_commit(), "device_name": device_name,
            "platform": platform.platform(), "command": [Path(sys.argv[0]).name, *sys.argv[1:]]}


def write_json_atomic(path: Path, data) -> None:
    """Write JSON so that a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    if tmp.is_symlink():  # never write through a link someone left in a results folder
        tmp.unlink()
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    tmp.replace(path)
