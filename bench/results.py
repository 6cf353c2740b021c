"""The results folder: where it goes, what may be replaced, and the files written into it."""

from __future__ import annotations

import math
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import torch

from bench.config import write_json_atomic
from bench.errors import UserError
from bench.folder import LOCK_NAME, refuse_if_locked, refuse_links
from bench.timing import TIMING_COLUMNS as MEASURED_TIMING_COLUMNS


def save_grid(images: torch.Tensor, path: Path, nrow: int = 8) -> None:
    """Save images in [-1, 1] as one PNG grid, atomically."""
    from torchvision.utils import save_image
    images = (images.float().clamp(-1, 1) + 1) / 2
    if images.shape[-1] < 32:  # tiny images (8x8 digits) are enlarged so a person can see them
        images = torch.nn.functional.interpolate(images, scale_factor=math.ceil(32 / images.shape[-1]), mode="nearest")
    tmp = path.with_name(path.stem + ".tmp.png")
    if tmp.is_symlink():
        tmp.unlink()
    save_image(images, tmp, nrow=nrow, padding=2, pad_value=1.0)
    tmp.replace(path)


def slug(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-._" else "_" for c in label)


def write_csv_atomic(rows: list[dict], path: Path, columns=None) -> None:
    tmp = path.with_name(path.name + ".tmp")
    if tmp.is_symlink():  # never write through a link someone left in a results folder
        tmp.unlink()
    pd.DataFrame(rows, columns=columns).to_csv(tmp, index=False)
    tmp.replace(path)


TOOL = "sampler-bench"  # config.json's "tool": how --force knows that the tool wrote a folder
TOOL_FILES = ("config.json", "results.csv", "report.md", "report.html", "paired.csv")  # written at the top
TOOL_FOLDERS = {"samples": (".png",), "trajectories": (".png",), "plots": (".png",),  # its folders and the
                "features": (".npy", ".npz")}                                        # files it writes there
START_COLUMNS = ("sampler", "steps", "status", "error")                   # results.csv before the first row


def write_run_config(out_dir: Path, data: dict, resume: bool = False) -> None:
    """config.json: everything needed to reproduce any row of the folder, marked as written by this tool.

    On --resume the first run's command line, start time and commit are kept, and each resumption
    is added to `resumes` with its own.
    """
    path = out_dir / "config.json"
    data = {"tool": TOOL, **data}
    if resume and path.is_file():
        from bench.report import read_config

        first = read_config(path)
        this = {k: data.get(k) for k in ("command", "started_utc", "git_commit")}
        data.update({k: first[k] for k in ("command", "started_utc", "git_commit") if k in first})
        data["resumes"] = [*first.get("resumes", []), this]
    write_json_atomic(path, data)


def start_results_csv(path: Path) -> None:
    """results.csv with its header and no rows: a run interrupted before its first row can be resumed."""
    write_csv_atomic([], path, columns=START_COLUMNS)


def default_run_id(model_name: str) -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S") + "-" + slug(Path(model_name).name)


def is_results_folder(folder: Path) -> bool:
    """Whether this tool wrote `folder`: a results.csv, and a config.json marked "tool": "sampler-bench"
    (or, from before the marker, holding the run_id, config and jobs the tool records)."""
    from bench.report import read_config

    if not (folder / "results.csv").is_file() or not (folder / "config.json").is_file():
        return False
    try:
        config = read_config(folder / "config.json")
    except UserError:
        return False
    return config.get("tool") == TOOL or {"run_id", "config", "jobs"} <= set(config)


def _protected(folder: Path) -> str | None:
    """Why `folder` may never be deleted (the working folder, home, / or a parent of one), or None."""
    resolved = folder.resolve()
    for name, keep in (("the working folder", Path.cwd()), ("your home folder", Path.home())):
        keep = keep.resolve()
        if resolved == keep or resolved in keep.parents:
            return f"it is {name}" + ("" if resolved == keep else " or one of its parents")
    if resolved == Path(resolved.anchor):
        return "it is the root of the file system"
    return None


def _foreign_entries(folder: Path) -> list[str]:
    """What a results folder holds that the tool did not write (links count as foreign)."""
    foreign = []
    for entry in sorted(folder.iterdir()):
        if entry.name == LOCK_NAME and not entry.is_symlink():
            continue
        if entry.is_symlink():
            foreign.append(entry.name)
        elif entry.is_file() and (entry.name in TOOL_FILES or entry.name.endswith(".tmp")):
            continue
        elif entry.is_dir() and entry.name in TOOL_FOLDERS:
            foreign += [f"{entry.name}/{e.name}" for e in sorted(entry.iterdir())
                        if e.is_symlink() or not e.is_file() or e.suffix not in TOOL_FOLDERS[entry.name]]
        else:
            foreign.append(entry.name)
    return foreign


def _remove_tool_files(folder: Path) -> None:
    """Delete what the tool wrote in `folder` (checked by _foreign_entries first), file by file."""
    for entry in folder.iterdir():
        if entry.is_dir():
            for written in entry.iterdir():
                written.unlink()
            entry.rmdir()
        else:
            entry.unlink()


def _check_creatable(out_dir: Path) -> None:
    """A one-line error, before any work, when `out_dir` can be neither used nor created.

    Writability is probed by creating and removing an empty folder, which also catches read-only
    and virtual file systems that a permission check passes.
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir} is a file, not a folder; name a new or empty folder")
    parent = out_dir
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"--out {out_dir} cannot be created: {parent} is a file, not a folder")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".sampler-bench-probe-", dir=parent))
    except OSError as exc:
        raise UserError(f"--out {out_dir} cannot be written: {parent}: {exc.strerror or exc}") from None


def prepare_out_dir(out: str | None, results_root: Path, model_name: str, resume: bool, force: bool) -> Path:
    """The run folder, checked before any work. Never replaces what the tool did not write.

    An existing non-empty folder is used only with --resume (a results folder) or --force, and
    --force clears only a results folder this tool wrote that holds nothing else, never the
    working folder, the home folder, / or a parent of one of them.
    """
    out_dir = Path(out) if out else results_root / default_run_id(model_name)
    if out_dir.is_dir():
        refuse_if_locked(out_dir)  # another process is writing it: name that process, touch nothing
        refuse_links(out_dir)
    if resume:
        if not (out_dir / "results.csv").is_file():
            raise UserError(f"--resume {out_dir}: no results.csv there to resume from")
        return out_dir
    _check_creatable(out_dir)
    if not out_dir.exists() or not any(e.name != LOCK_NAME for e in out_dir.iterdir()):
        return out_dir
    if force and _protected(out_dir):
        raise UserError(f"--force refuses to delete {out_dir}: {_protected(out_dir)}")
    if not is_results_folder(out_dir):
        raise UserError(f"{out_dir} is not empty and is not a sampler-bench results folder (no config.json and "
                        "results.csv written by this tool); name a new or empty folder with --out"
                        + ("; --force only ever replaces a results folder" if force else ""))
    if not force:
        raise UserError(f"{out_dir} already holds results; use --resume to continue it or --force to replace it")
    foreign = _foreign_entries(out_dir)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise UserError(f"--force refuses to delete {out_dir}: it holds files sampler-bench did not write "
                        f"({shown}); move them away first")
    _remove_tool_files(out_dir)
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
