"""Paired comparisons: FID differences between configurations that sampled the same images' noise.

Every configuration of a run samples image i from the same random numbers (common random numbers),
so two configurations' scores move together when the images are resampled: the difference is far
less noisy than either score. The paired bootstrap resamples image indices once and applies the
same resample to both configurations; the unpaired bootstrap (what two separate per-row intervals
imply) resamples them independently. Both use the per-image rows the harness saves in
features/<stem>.npy (feature rows for FID, pixel rows for the oracle's Fréchet distance) and the
reference statistics in features/reference.npz, so `bench report` rebuilds them from the folder alone.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from bench.errors import UserError
from bench.folder import feature_file, load_array, load_npz, subfolder
from bench.frechet import resample_counts, shifted_interval, weighted_fid

FEATURES_DIR = "features"
REFERENCE_FILE = "reference.npz"
RESAMPLES = 200


class PairedRowsWriter:
    """Streams one configuration's per-image rows into features/<stem>.npy (float32) as batches arrive.

    The file is a memory-mapped .npy of shape (num_images, D): nothing holds all rows in memory.
    Row i is image i; the image indices are written next to it as <stem>.idx.npy.
    """

    def __init__(self, out_dir: Path, stem: str, num_images: int, in_memory: bool = False):
        self.in_memory = in_memory  # a rank other than 0 keeps its (start, rows) pieces to send to rank 0
        self.pieces: list[tuple[int, torch.Tensor]] = []
        self.folder = Path(out_dir) / FEATURES_DIR
        self.stem = stem
        self.num_images = num_images
        self.rows: np.memmap | None = None
        self.tmp = self.folder / f"{stem}.tmp.npy"

    def add(self, start: int, rows: torch.Tensor) -> None:
        """Write the rows of images start, start + 1, ..."""
        rows = rows.detach().reshape(rows.shape[0], -1).to("cpu", torch.float32)
        if self.in_memory:
            self.pieces.append((start, rows))
            return
        rows = rows.numpy()
        if self.rows is None:
            subfolder(self.folder.parent, FEATURES_DIR)
            self.rows = np.lib.format.open_memmap(self.tmp, mode="w+", dtype=np.float32,
                                                  shape=(self.num_images, rows.shape[1]))
        self.rows[start:start + len(rows)] = rows

    def abort(self) -> None:
        """Drop the rows written so far (the metric that produced them failed)."""
        if self.rows is not None:
            del self.rows
            self.rows = None
            self.tmp.unlink(missing_ok=True)
        self.pieces = []

    def close(self, bootstrap: torch.Tensor | None = None) -> str | None:
        """Flush and move the file into place; returns its path relative to the results folder.

        `bootstrap`: the metric's values on the bootstrap resamples (drawn as `resample_counts` draws
        them), saved as <stem>.boot.npy so that paired comparisons reuse them.
        """
        if self.rows is None:
            return None
        if bootstrap is not None:
            np.save(self.folder / f"{self.stem}.boot.npy", bootstrap.to(torch.float64).numpy())
        self.rows.flush()
        del self.rows
        self.rows = None
        np.save(self.folder / f"{self.stem}.idx.npy", np.arange(self.num_images, dtype=np.int64))
        self.tmp.replace(self.folder / f"{self.stem}.npy")
        return f"{FEATURES_DIR}/{self.stem}.npy"


def save_reference(out_dir: Path, column: str, mu: np.ndarray, sigma: np.ndarray) -> None:
    """The statistics the paired rows are compared against (FID's reference, or the oracle's exact moments)."""
    folder = subfolder(out_dir, FEATURES_DIR)
    tmp = folder / "reference.tmp.npz"
    np.savez(tmp, column=np.array(column), mu=np.asarray(mu, np.float64), sigma=np.asarray(sigma, np.float64))
    tmp.replace(folder / REFERENCE_FILE)


@dataclass(frozen=True)
class Reference:
    """Mean and covariance the Fréchet distance is taken against (what bench.frechet.weighted_fid needs)."""

    column: str
    mu: np.ndarray
    sigma: np.ndarray


def load_reference(out_dir: Path) -> Reference | None:
    """features/reference.npz, checked (never unpickled); None when the folder has none."""
    path = feature_file(out_dir, f"{FEATURES_DIR}/{REFERENCE_FILE}", "reference file")
    if not path.is_file():
        return None
    data = load_npz(path)
    try:
        column = str(data["column"])
        mu, sigma = np.asarray(data["mu"], np.float64), np.asarray(data["sigma"], np.float64)
    except (KeyError, ValueError, TypeError):
        raise UserError(f"{path}: expected arrays column, mu and sigma of numbers") from None
    if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)) or not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise UserError(f"{path}: mu must be a finite vector and sigma a finite square matrix of its size, "
                        f"got shapes {mu.shape} and {sigma.shape}")
    return Reference(column, mu, sigma)


def load_rows(out_dir: Path, name, reference: Reference | None = None) -> torch.Tensor:
    """A row's saved per-image rows (features/<stem>.npy), checked: inside features/, a numeric 2-D array,
    finite, as wide as the reference."""
    path = feature_file(out_dir, name)
    rows = load_array(path)
    if rows.ndim != 2 or not np.isfinite(rows).all():
        raise UserError(f"{path}: expected a finite (images, features) array, got shape {rows.shape}")
    if reference is not None and rows.shape[1] != len(reference.mu):
        raise UserError(f"{path}: {rows.shape[1]} features per image, but features/{REFERENCE_FILE} has "
                        f"{len(reference.mu)}")
    return torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float32))


def check_saved_rows(out_dir: Path, df: pd.DataFrame) -> None:
    """Read every per-image file the folder's rows name (and the reference) once, so a pickle, a path out of
    features/ or a malformed array is a UserError before the report writes anything."""
    reference = load_reference(out_dir)
    for column in MEAN_COLUMNS:
        for name in df[f"{column}_file"].dropna() if f"{column}_file" in df.columns else []:
            path = feature_file(out_dir, name, f"{column}_file")
            if path.is_file():
                load_array(path)
    if "features_file" not in df.columns:
        return
    for name in df["features_file"].dropna():
        path = feature_file(out_dir, name)
        if path.is_file():
            load_rows(out_dir, name, reference)
        boot = feature_file(out_dir, str(name).replace(".npy", ".boot.npy"))
        if boot.is_file():
            load_array(boot)


def bootstrap_distances(rows: torch.Tensor, counts: torch.Tensor, reference: Reference) -> torch.Tensor:
    """Fréchet distance of every row-weighting in `counts` (one per resample) against the reference."""
    return weighted_fid(rows, counts, reference)


@dataclass(frozen=True)
class Comparison:
    a: str
    b: str
    diff: float
    paired: tuple[float, float]
    unpaired: tuple[float, float]
    same_samples: bool = False  # the two configurations' rows agree to float32 rounding (equivalent samplers)

    @property
    def significant(self) -> bool:
        """The paired interval excludes zero, and the difference is not float rounding between equal samples."""
        return not self.same_samples and (self.paired[0] > 0 or self.paired[1] < 0)

    @property
    def width_ratio(self) -> float:
        """Paired interval width over unpaired width (below 1: pairing made the comparison sharper)."""
        unpaired = self.unpaired[1] - self.unpaired[0]
        return (self.paired[1] - self.paired[0]) / unpaired if unpaired > 0 else math.nan


def compare_rows(rows: dict[str, torch.Tensor], points: dict[str, float], reference: Reference,
                 resamples: int = RESAMPLES, seed: int = 0,
                 known: dict[str, torch.Tensor] | None = None) -> list[Comparison]:
    """Every pair of configurations: the difference of their distances, with paired and unpaired intervals.

    `rows` maps a configuration label to its (N, D) per-image rows (the same N images for all);
    `points` to its reported distance. Paired: resample r of both configurations uses the same
    resampled indices (the same ones as the per-row FID interval, which draws them with the same
    seed). Unpaired: resample r of one configuration against resample r + 1 of the other, drawn
    independently, so each configuration's bootstrap is computed once. `known` holds bootstrap
    values already computed on those resamples (the FID metric's own, saved by the harness).
    """
    sizes = {len(r) for r in rows.values()}
    if len(sizes) != 1:
        raise ValueError(f"paired rows must cover the same images; got {sorted(sizes)} rows")
    n = sizes.pop()
    shared = resample_counts(n, resamples, seed)
    known = known or {}
    joint = {label: known[label] if label in known and len(known[label]) == resamples else
             bootstrap_distances(r, shared, reference) for label, r in rows.items()}
    out = []
    for a, b in itertools.combinations(rows, 2):
        diff = points[a] - points[b]
        out.append(Comparison(a, b, diff, shifted_interval(diff, joint[a] - joint[b]),
                              shifted_interval(diff, joint[a] - joint[b].roll(1)), same_rows(rows[a], rows[b])))
    return out


def same_rows(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-4) -> bool:
    """Whether two configurations produced the same per-image rows up to float32 rounding."""
    scale = float(torch.maximum(a.abs().max(), b.abs().max())) if a.numel() else 0.0
    return bool((a - b).abs().max() <= rtol * max(scale, 1e-12)) if a.numel() else True


def _with_rows(out_dir: Path, df: pd.DataFrame) -> pd.DataFrame:
    """The rows whose saved per-image rows are still in the folder (a user may delete features/)."""
    present = df["features_file"].map(lambda f: isinstance(f, str) and feature_file(out_dir, f).is_file())
    return df[present.astype(bool)]


def _label(row: pd.Series) -> str:
    guidance = row.get("guidance")
    guided = "" if guidance is None or (isinstance(guidance, float) and math.isnan(guidance)) else f", w={guidance:g}"
    return f"{row['sampler']} @ {int(row['steps'])}{guided}"


def paired_table(out_dir: Path, df: pd.DataFrame, resamples: int = RESAMPLES, seed: int = 0) -> pd.DataFrame:
    """Paired comparisons of the folder's ok rows at the same NFE (and guidance): one line per pair."""
    out_dir = Path(out_dir)
    reference = load_reference(out_dir)
    columns = ["nfe", "guidance", "a", "b", "column", "diff", "paired_low", "paired_high", "unpaired_low",
               "unpaired_high", "width_ratio", "significant", "same_samples"]
    if reference is None or "features_file" not in df.columns or reference.column not in df.columns:
        return pd.DataFrame(columns=columns)
    ok = _with_rows(out_dir, df[(df["status"] == "ok") & df[reference.column].notna()])
    ok = ok.assign(guidance=pd.to_numeric(ok["guidance"], errors="coerce") if "guidance" in ok else math.nan)
    lines = []
    for (nfe, guidance), group in ok.groupby(["nfe", ok["guidance"].fillna(-1.0)], sort=True):
        if len(group) < 2:
            continue
        group = group.sort_values(reference.column)
        rows = {_label(r): load_rows(out_dir, r["features_file"], reference) for _, r in group.iterrows()}
        points = {_label(r): float(r[reference.column]) for _, r in group.iterrows()}
        saved = {_label(r): feature_file(out_dir, r["features_file"].replace(".npy", ".boot.npy"))
                 for _, r in group.iterrows()}
        known = {label: torch.from_numpy(load_array(path).astype(np.float64)) for label, path in saved.items()
                 if path.is_file()}
        for c in compare_rows(rows, points, reference, resamples, seed, known):
            lines.append({"nfe": nfe, "guidance": None if guidance == -1.0 else guidance, "a": c.a, "b": c.b,
                          "column": reference.column, "diff": c.diff, "paired_low": c.paired[0],
                          "paired_high": c.paired[1], "unpaired_low": c.unpaired[0], "unpaired_high": c.unpaired[1],
                          "width_ratio": c.width_ratio, "significant": c.significant,
                          "same_samples": c.same_samples})
    return pd.DataFrame(lines, columns=columns)


MEAN_COLUMNS = ("ref_rmse",)  # per-image means (bench.jobs saves features/<stem>.<column>.npy): paired by image


def paired_mean_table(out_dir: Path, df: pd.DataFrame, column: str, resamples: int = RESAMPLES,
                      seed: int = 0) -> pd.DataFrame:
    """Paired differences of a per-image mean (ref_rmse) between ok rows at the same NFE and guidance: the
    difference of means, a paired bootstrap interval (the same resampled image indices for both rows, as FID's
    interval draws them) and the unpaired one (resample r against r + 1) for contrast."""
    columns = ["nfe", "guidance", "a", "b", "column", "diff", "paired_low", "paired_high", "unpaired_low",
               "unpaired_high", "width_ratio", "significant", "same_samples"]
    file_column = f"{column}_file"
    if file_column not in df.columns or column not in df.columns:
        return pd.DataFrame(columns=columns)
    ok = df[(df["status"] == "ok") & df[column].notna() & df[file_column].notna()]
    ok = ok.assign(guidance=pd.to_numeric(ok["guidance"], errors="coerce") if "guidance" in ok else math.nan)
    lines, counts = [], None
    for (nfe, guidance), group in ok.groupby(["nfe", ok["guidance"].fillna(-1.0)], sort=True):
        if len(group) < 2:
            continue
        values = {}
        for _, r in group.sort_values(column).iterrows():
            array = load_array(feature_file(out_dir, r[file_column], file_column)).astype(np.float64)
            if array.ndim != 1 or not np.isfinite(array).all():
                raise UserError(f"{feature_file(out_dir, r[file_column], file_column)}: expected a finite vector")
            values[_label(r)] = torch.from_numpy(array)
        sizes = {len(v) for v in values.values()}
        if len(sizes) != 1:
            continue
        n = sizes.pop()
        counts = resample_counts(n, resamples, seed) if counts is None or counts.shape[1] != n else counts
        means = {k: counts @ v / n for k, v in values.items()}
        for a, b in itertools.combinations(values, 2):
            diff = float(values[a].mean() - values[b].mean())
            paired = shifted_interval(diff, means[a] - means[b])
            unpaired = shifted_interval(diff, means[a] - means[b].roll(1))
            width = (unpaired[1] - unpaired[0])
            same = bool(torch.allclose(values[a], values[b], rtol=1e-6, atol=1e-9))
            lines.append({"nfe": nfe, "guidance": None if guidance == -1.0 else guidance, "a": a, "b": b,
                          "column": column, "diff": diff, "paired_low": paired[0], "paired_high": paired[1],
                          "unpaired_low": unpaired[0], "unpaired_high": unpaired[1],
                          "width_ratio": (paired[1] - paired[0]) / width if width > 0 else math.nan,
                          "significant": (paired[0] > 0 or paired[1] < 0) and not same, "same_samples": same})
    return pd.DataFrame(lines, columns=columns)


def row_bootstraps(out_dir: Path, df: pd.DataFrame, column: str, resamples: int = RESAMPLES,
                   seed: int = 0) -> dict[str, torch.Tensor]:
    """Each ok row's `column` on the shared bootstrap resamples (the same image indices for every row), keyed by
    its label: FID's saved values, the oracle distance recomputed from its per-image rows, ref_rmse's means."""
    out: dict[str, torch.Tensor] = {}
    ok = df[(df["status"] == "ok") & df[column].notna()] if column in df.columns else df.iloc[0:0]
    if column in MEAN_COLUMNS:
        for _, r in ok.iterrows():
            name = r.get(f"{column}_file")
            path = feature_file(out_dir, name, f"{column}_file") if isinstance(name, str) else None
            if path is not None and path.is_file():
                values = torch.from_numpy(load_array(path).astype(np.float64))
                out[_label(r)] = resample_counts(len(values), resamples, seed) @ values / len(values)
        return out
    reference = load_reference(out_dir)
    if reference is None or reference.column != column or "features_file" not in ok.columns:
        return out
    for _, r in _with_rows(out_dir, ok).iterrows():
        boot = feature_file(out_dir, r["features_file"].replace(".npy", ".boot.npy"))
        if boot.is_file() and len(load_array(boot)) == resamples:
            out[_label(r)] = torch.from_numpy(load_array(boot).astype(np.float64))
        else:
            rows = load_rows(out_dir, r["features_file"], reference)
            out[_label(r)] = bootstrap_distances(rows, resample_counts(len(rows), resamples, seed), reference)
    return out


def paired_sentences(table: pd.DataFrame) -> list[str]:
    """Plain lines for the report: each difference, its paired 95% interval, and whether it is significant."""
    if table.empty:
        return []
    out = []
    for _, r in table.iterrows():
        verdict = ("the same samples up to float rounding" if r["same_samples"] else
                   f"**{r['a']} is better**" if r["significant"] and r["diff"] < 0 else
                   f"**{r['b']} is better**" if r["significant"] else "not significant")
        out.append(f"NFE {r['nfe']:g}: {r['a']} minus {r['b']} = {r['diff']:.4g} {r['column']}, paired 95% CI "
                   f"[{r['paired_low']:.4g}, {r['paired_high']:.4g}] (unpaired [{r['unpaired_low']:.4g}, "
                   f"{r['unpaired_high']:.4g}], {r['width_ratio']:.2f}x as wide): {verdict}")
    return out


def paired_report(out_dir: Path, df: pd.DataFrame, config: dict) -> list[str]:
    """Write paired.csv in the folder and return the report's lines (empty when there is nothing to pair)."""
    settings = config.get("config", {}) if isinstance(config, dict) else {}
    resamples = int(settings.get("bootstrap") or RESAMPLES)
    table = paired_table(out_dir, df, resamples=resamples, seed=int(settings.get("seed") or 0))
    for column in MEAN_COLUMNS:
        extra = paired_mean_table(out_dir, df, column, resamples=resamples, seed=int(settings.get("seed") or 0))
        table = extra if table.empty else (table if extra.empty else pd.concat([table, extra], ignore_index=True))
    if table.empty:
        stale = Path(out_dir) / "paired.csv"
        if stale.is_file() and not stale.is_symlink():  # pairs of an earlier report that no longer hold
            stale.unlink()
        return []
    tmp = Path(out_dir) / "paired.csv.tmp"
    table.to_csv(tmp, index=False)
    tmp.replace(Path(out_dir) / "paired.csv")
    narrower = table[~table["same_samples"]]["width_ratio"]
    summary = (f"Across {len(narrower)} pairs the paired interval is {narrower.median():.2f}x as wide as the unpaired "
               "one (median); it is narrowest between samplers whose samples stay close (deterministic ones), and "
               "about as wide between a deterministic and a stochastic sampler.") if len(narrower) else ""
    guided = "guidance" in df and pd.to_numeric(df["guidance"], errors="coerce").notna().any()
    best = table.groupby(["column", "nfe", table["guidance"].fillna(-1.0)], sort=False)["a"].transform("first")
    shown = table[table["a"] == best]  # the best configuration at each NFE against every other one there
    return [f"Differences between configurations at the same NFE{' and guidance' if guided else ''}, "
            f"with 95% paired bootstrap intervals ({resamples} resamples of the image indices, the same for both "
            "configurations: every configuration sampled the same images' noise). Significant: the paired "
            f"interval excludes 0. {summary} Below: the best configuration at each NFE against each other one "
            f"there; all {len(table)} pairs are in paired.csv.", ""] + paired_sentences(shown)


FID_INFINITY_POINTS = 15
FID_INFINITY_SMALLEST = 0.2  # the smallest subset is this fraction of the images


def fid_infinity(rows: torch.Tensor, reference: Reference, seed: int = 0, points: int = FID_INFINITY_POINTS,
                 smallest: float = FID_INFINITY_SMALLEST) -> tuple[float, float]:
    """FID extrapolated to infinitely many images (Chong & Forsyth 2020, "Effectively Unbiased FID").

    FID is biased upwards by a term close to c / n; the distance is computed on nested random subsets
    of n images (n evenly spaced from `smallest` x N to N, one seeded shuffle), a line FID = FID_inf +
    c / n is fitted by least squares, and its intercept is FID_inf. Returns (FID_inf, slope c), so runs
    with different numbers of images can be compared.
    """
    n_total = len(rows)
    sizes = np.unique(np.linspace(max(2, int(n_total * smallest)), n_total, points).astype(int))
    order = torch.randperm(n_total, generator=torch.Generator().manual_seed(seed))
    weights = torch.zeros(len(sizes), n_total, dtype=torch.float64)
    for i, size in enumerate(sizes):
        weights[i, order[:size]] = 1.0
    distances = bootstrap_distances(rows, weights, reference).numpy()
    slope, intercept = np.polyfit(1.0 / sizes, distances, 1)
    return float(intercept), float(slope)


def fid_infinity_lines(out_dir: Path, df: pd.DataFrame, seed: int = 0) -> list[str]:
    """The report's FID-infinity lines, one per ok row with saved FID feature rows; [] when there are none."""
    reference = load_reference(out_dir)
    if reference is None or reference.column != "fid" or "features_file" not in df.columns:
        return []
    ok = _with_rows(out_dir, df[df["status"] == "ok"])
    lines = []
    for _, row in ok.iterrows():
        value, slope = fid_infinity(load_rows(out_dir, row["features_file"], reference), reference, seed)
        lines.append(f"{_label(row)}: FID {row['fid']:.4g} at n = {int(row['num_samples'])}, "
                     f"FID∞ {value:.4g} (bias slope {slope:.4g} / n)")
    return lines


def _noise_path(config: dict) -> tuple[str, object]:
    """(path kind, shift) a run recorded (vp-discrete for runs from before paths existed)."""
    info = config.get("model_info") if isinstance(config.get("model_info"), dict) else {}
    shift = config.get("config", {}).get("shift") or info.get("shift")
    return str(info.get("path") or "vp-discrete"), shift


def paired_across_runs(dir_a: Path, dir_b: Path, merged: pd.DataFrame, quality: str | None) -> pd.DataFrame:
    """`bench compare`'s table with a paired 95% interval of each row's quality difference (b minus a).

    Two runs with the same seed and number of images sampled the same images' noise, so a change of
    code, precision, batch size or number of processes is judged on the same images. Rows without
    saved per-image rows in both folders, or runs with other seeds or sizes, get no interval.
    """
    from bench.report import compare_keys, load_results
    a, config_a = load_results(dir_a)
    b, config_b = load_results(dir_b)
    ref_a, ref_b = load_reference(dir_a), load_reference(dir_b)
    paths = [_noise_path(c) for c in (config_a, config_b)]
    if paths[0] != paths[1]:
        import sys
        print(f"warning: {dir_a} sampled the {paths[0][0]} path (shift {paths[0][1]}) and {dir_b} the {paths[1][0]} "
              f"path (shift {paths[1][1]}): their images are not the same samples, so no paired intervals",
              file=sys.stderr)
        return merged
    same_images = (config_a.get("config", {}).get("seed") == config_b.get("config", {}).get("seed")
                   and config_a.get("num_samples") == config_b.get("num_samples"))
    if (quality is None or ref_a is None or ref_b is None or ref_a.column != quality or ref_b.column != quality
            or not same_images or not np.allclose(ref_a.mu, ref_b.mu) or "features_file" not in a or
            "features_file" not in b):
        return merged
    keys = compare_keys(a, b)
    files = a[[*keys, "features_file"]].merge(b[[*keys, "features_file"]], on=keys, suffixes=("_a", "_b"))
    resamples = int(config_a.get("config", {}).get("bootstrap") or RESAMPLES)
    seed = int(config_a.get("config", {}).get("seed") or 0)
    low, high = f"{quality}_diff_ci_low", f"{quality}_diff_ci_high"
    merged = merged.assign(**{low: math.nan, high: math.nan})
    counts = None
    files = files[files["features_file_a"].map(lambda f: isinstance(f, str) and feature_file(dir_a, f).is_file())
                  & files["features_file_b"].map(lambda f: isinstance(f, str) and feature_file(dir_b, f).is_file())]
    for _, f in files.iterrows():
        rows_a = load_rows(dir_a, f["features_file_a"], ref_a)
        rows_b = load_rows(dir_b, f["features_file_b"], ref_b)
        counts = resample_counts(len(rows_a), resamples, seed) if counts is None else counts
        at = np.logical_and.reduce([(merged[k] == f[k]) | (merged[k].isna() & pd.isna(f[k])) for k in keys])
        diff = float(merged.loc[at, f"{quality}_diff_b_minus_a"].iloc[0])
        values = bootstrap_distances(rows_b, counts, ref_b) - bootstrap_distances(rows_a, counts, ref_a)
        merged.loc[at, [low, high]] = shifted_interval(diff, values)
    return merged
