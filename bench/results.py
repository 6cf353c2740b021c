"""The results folder: where it goes, what may be replaced, and the files written into it."""

from __future__ import annotations

import math
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import torch

from bench.config import write_json_atomic
from bench.errors import UserError
from bench.timing import TIMING_COLUMNS as MEASURED_TIMING_COLUMNS


def save_grid(images: torch.Tensor, path: Path, nrow: int = 8) -> None:
    """Save images in [-1, 1] as one PNG grid, atomically."""
    from torchvision.utils import save_image
    images = (images.float().clamp(-1, 1) + 1) / 2
    if images.shape[-1] < 32:  # tiny images (8x8 digits) are enlarged so a person can see them
        images = torch.nn.functional.interpolate(images, scale_factor=math.ceil(32 / images.shape[-1]), mode="nearest")
    tmp = path.with_name(path.stem + ".tmp.png")
    save_image(images, tmp, nrow=nrow, padding=2, pad_value=1.0)
    tmp.replace(path)


def slug(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-._" else "_" for c in label)


def write_csv_atomic(rows: list[dict], path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    pd.DataFrame(rows).to_csv(tmp, index=False)
    tmp.replace(path)


def write_run_config(out_dir: Path, data: dict) -> None:
    """config.json: everything needed to reproduce any row of the folder."""
    write_json_atomic(out_dir / "config.json", data)


def default_run_id(model_name: str) -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S") + "-" + slug(Path(model_name).name)


def prepare_out_dir(out: str | None, results_root: Path, model_name: str, resume: bool, force: bool) -> Path:
    """The run folder: never overwrite results without --resume or --force."""
    out_dir = Path(out) if out else results_root / default_run_id(model_name)
    if resume:
        if not (out_dir / "results.csv").exists():
            raise UserError(f"--resume {out_dir}: no results.csv there to resume from")
        return out_dir
    if out_dir.exists() and any(out_dir.iterdir()):
        if not force:
            raise UserError(f"{out_dir} already holds results; use --resume to continue it or --force to replace it")
        import shutil
        shutil.rmtree(out_dir)
    return out_dir


# what varies from one run of the same configuration to the next (bench.timing says how each is measured)
TIMING_COLUMNS = list(dict.fromkeys(["wall_s", "s_per_image", "ms_per_nfe", "net_s", "net_ms_per_call",
                                     "overhead_frac", "peak_mem_mb", *MEASURED_TIMING_COLUMNS]))


def summary_table(out_dir: Path) -> str:
    """A compact text table of a results folder for the terminal."""
    from bench.report import read_results_csv
    df = read_results_csv(out_dir / "results.csv")
    cols = [c for c in ["sampler", "steps", "nfe", "wall_s", "ms_per_nfe", "overhead_frac", "fid", "fid_floor",
                        "oracle_fd", "status"] if c in df.columns]
    return df[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}")
