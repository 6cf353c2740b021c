"""Plots and a readable report (markdown and HTML) built from a results folder alone."""

from __future__ import annotations

import html
import io
import json
import math
import sys
from pathlib import Path

import pandas as pd

from bench.errors import UserError
from bench.folder import refuse_links, subfolder
from bench.registry import ADAPTIVE_STEPS

QUALITY_COLUMNS = (("fid", "FID"), ("oracle_fd", "Fréchet distance to the exact distribution"))
TABLE_COLUMNS = ["sampler", "steps", "nfe", "nfe_max", "wall_s", "s_per_image", "ms_per_nfe", "overhead_frac",
                 "peak_mem_mb", "fid", "fid_ci_low", "fid_ci_high", "fid_floor", "kid", "prc_precision",
                 "prc_recall", "cond_acc", "oracle_fd", "ref_rmse", "timing_spread", "busy", "status"]


KEY_COLUMNS = ("sampler", "steps", "status")  # what every results.csv row has, whatever ran


def read_results_csv(path: Path) -> pd.DataFrame:
    """results.csv as written: only empty cells are missing (a sampler may be called 'nan').

    The tool ends every file with a newline, so a last line without one was cut off (a crash or a
    full disk mid-write by something else): it is dropped, and `--resume` redoes that row.
    A file that is not a results table is a UserError naming it.
    """
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
        df = pd.read_csv(io.StringIO(text), keep_default_na=False, na_values=[""])
    except pd.errors.EmptyDataError:
        raise UserError(f"{path} is empty; it is not a sampler-bench results.csv") from None
    except (OSError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path} is not a readable results CSV: {detail}") from None
    missing = [c for c in KEY_COLUMNS if c not in df.columns]
    if missing:
        raise UserError(f"{path} lacks the column(s) {', '.join(missing)}; is it a sampler-bench results.csv?")
    if len(df) and not text.endswith("\n"):
        print(f"warning: {path}: the last line has no line end (cut off mid-write?); its row is ignored "
              "(--resume redoes it)", file=sys.stderr)
        df = df.iloc[:-1]
    if len(df) and pd.to_numeric(df["steps"], errors="coerce").isna().any():
        raise UserError(f"{path}: the steps column holds values that are not integers")
    guidance = df["guidance"] if "guidance" in df.columns else pd.Series(dtype=float)
    if (pd.to_numeric(guidance, errors="coerce").isna() & guidance.notna()).any():
        raise UserError(f"{path}: the guidance column holds values that are not numbers")
    return check_row_values(df, path)


# results.csv columns that hold numbers; of those, the ones that can never be negative, and the ones
# every ok row must have. A file shared by someone else is checked against these before any use.
NUMERIC_COLUMNS = ("steps", "guidance", "cfg_scale", "nfe", "nfe_max", "rows_evaluated", "expected_nfe",
                   "num_samples", "batch_size", "wall_s", "s_per_image", "images_per_s", "ms_per_nfe", "net_s",
                   "net_ms_per_call", "overhead_frac", "peak_mem_mb", "fid", "fid_ci_low", "fid_ci_high", "fid_floor",
                   "kid", "kid_std", "prc_precision", "prc_recall", "cond_acc", "oracle_fd", "mean_err", "var_err",
                   "wall_s_steps", "timing_spread", "step_spread", "world_size", "seed")
NON_NEGATIVE_COLUMNS = ("steps", "nfe", "nfe_max", "rows_evaluated", "expected_nfe", "num_samples", "batch_size",
                        "wall_s", "s_per_image", "images_per_s", "ms_per_nfe", "net_s", "net_ms_per_call",
                        "peak_mem_mb", "fid", "fid_ci_low", "fid_ci_high", "fid_floor", "kid_std", "prc_precision",
                        "prc_recall", "cond_acc", "oracle_fd", "mean_err", "var_err", "wall_s_steps", "world_size")
REQUIRED_OK_COLUMNS = ("nfe", "wall_s")
INVALID = "invalid"  # the status of a row whose values cannot be true; left out of every comparison


def check_row_values(df: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Numbers where numbers belong, or a UserError naming the file and column; an ok row with an impossible
    value (NaN where required, infinite, negative where it cannot be) becomes status `invalid` with a warning,
    so it is never the best, on a frontier or in a pair. A repeated (sampler, steps, guidance) keeps the last."""
    df = df.copy()
    for column in NUMERIC_COLUMNS:
        if column not in df.columns:
            continue
        values = pd.to_numeric(df[column].map(lambda v: v.strip() if isinstance(v, str) else v), errors="coerce")
        bad = values.isna() & df[column].notna() & ~df[column].map(lambda v: str(v).strip().lower() == "nan")
        if bad.any():
            shown = df.loc[bad, column].iloc[0]
            raise UserError(f"{path}: column {column} holds {shown!r}, which is not a number")
        df[column] = values
    ok = df["status"] == "ok"
    problems = pd.Series("", index=df.index)
    for column in NUMERIC_COLUMNS:
        if column not in df.columns:
            continue
        values = df[column]
        reason = pd.Series("", index=df.index)
        reason[values.isin([math.inf, -math.inf])] = f"{column} is infinite"
        if column in NON_NEGATIVE_COLUMNS:
            reason[values < 0] = f"{column} is negative"
        if column in REQUIRED_OK_COLUMNS:
            reason[values.isna()] = f"{column} is missing or NaN"
        problems = problems.where(problems != "", reason)
    flagged = ok & (problems != "")
    if flagged.any():
        df["error"] = (df["error"] if "error" in df.columns else pd.Series(None, index=df.index)).astype(object)
    for index in df.index[flagged]:
        print(f"warning: {path}: row {df.at[index, 'sampler']!r} @ {df.at[index, 'steps']}: {problems[index]}; "
              "the row is marked invalid and left out of the comparisons", file=sys.stderr)
        df.at[index, "status"] = INVALID
        df.at[index, "error"] = f"{path.name}: {problems[index]}"
    key = [c for c in ("sampler", "steps", "guidance") if c in df.columns]
    repeated = df.duplicated(key, keep="last")
    if repeated.any():
        first = df[repeated].iloc[0]
        print(f"warning: {path}: {int(repeated.sum())} repeated row(s) (e.g. {first['sampler']!r} @ {first['steps']}); "
              "the last of each is used", file=sys.stderr)
        df = df[~repeated].reset_index(drop=True)
    return df


def read_config(path: Path) -> dict:
    """A results folder's config.json as a dict; a file that is not one is a UserError naming it."""
    path = Path(path)
    try:
        config = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path} is not valid JSON ({exc}); is it a sampler-bench config.json?") from None
    if not isinstance(config, dict) or not isinstance(config.get("config", {}), dict):
        raise UserError(f"{path} does not hold a run config (expected a JSON object with a 'config' object)")
    check_config_values(config, path)
    return config


def check_config_values(config: dict, path: Path) -> None:
    """The counts a report reads from config.json are integers in range, or a UserError naming the key."""
    from bench.config import COUNT_BOUNDS

    places = [(f"config.{k}", config["config"].get(k), k) for k in COUNT_BOUNDS if k in config.get("config", {})]
    places += [(k, config.get(k), k) for k in ("num_samples", "batch_size") if k in config]
    for key, value, bound in places:
        low, high = COUNT_BOUNDS[bound]
        if value is None and bound in ("num_samples", "batch_size", "threads") and key.startswith("config."):
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise UserError(f"{path}: {key} must be an integer in [{low}, {high:,}], got {value!r}")


def load_results(out_dir: Path) -> tuple[pd.DataFrame, dict]:
    """results.csv and config.json of a run folder, with a clear error when they are missing."""
    out_dir = Path(out_dir)
    csv = out_dir / "results.csv"
    if not csv.is_file():
        what = "does not exist" if not out_dir.exists() else "has no results.csv"
        raise UserError(f"{out_dir} {what}; is it a sampler-bench results folder?")
    config_path = out_dir / "config.json"
    config = read_config(config_path) if config_path.exists() else {}
    return read_results_csv(csv), config


def quality_column(df: pd.DataFrame) -> tuple[str | None, str]:
    """The quality metric a report is about: FID when there is one, else the oracle's distance."""
    for column, label in QUALITY_COLUMNS:
        if column in df.columns and df[column].notna().any():
            return column, label
    return None, ""


def pareto_front(df: pd.DataFrame, cost: str, quality: str) -> pd.DataFrame:
    """Rows no other row beats on both cost and quality (lower is better for both)."""
    ordered = df.dropna(subset=[cost, quality]).sort_values([cost, quality])
    best = math.inf
    keep = []
    for index, row in ordered.iterrows():
        if row[quality] < best:
            best = row[quality]
            keep.append(index)
    return ordered.loc[keep]


def _log_y_if_wide(ax, values: pd.Series) -> None:
    """Log y when quality spans more than a factor of 5, so the good end stays readable."""
    low, high = values.min(), values.max()
    if low > 0 and high / low > 5:
        from matplotlib.ticker import FormatStrFormatter
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(FormatStrFormatter("%g"))
        ax.set_ylabel(ax.get_ylabel() + " (log scale)")


MAX_BANDED_SAMPLERS = 8  # above this many samplers: no CI bands on the overview, and one panel per family


def _family_panels(ok: pd.DataFrame, quality: str, label: str, plot_dir: Path) -> str:
    """Quality against NFE with one panel per plugin (sampler family), each against the best of all samplers."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    families = list(dict.fromkeys(ok["plugin"]))
    columns = min(3, len(families))
    rows = -(-len(families) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.6 * columns, 3.6 * rows), sharex=True, sharey=True,
                             squeeze=False)
    best = ok.groupby("nfe")[quality].min().sort_index().cummin()  # the best anyone reaches within each budget
    for ax, family in zip(axes.flat, families):
        group = ok[ok["plugin"] == family]
        names = list(dict.fromkeys(group["sampler"]))
        palette = dict(zip(names, sns.color_palette(n_colors=len(names))))
        ax.plot(best.index, best.values, color="0.6", lw=3, alpha=0.6, label="best of all samplers")
        sns.lineplot(data=group, x="nfe", y=quality, hue="sampler", hue_order=names, palette=palette, marker="o",
                     ax=ax)
        if {"fid_ci_low", "fid_ci_high"} <= set(group.columns) and quality == "fid":
            for name, samples in group.sort_values("nfe").groupby("sampler"):
                ax.fill_between(samples["nfe"], samples["fid_ci_low"], samples["fid_ci_high"], alpha=0.15,
                                color=palette[name])
        ax.set_xscale("log")
        ax.set_title(str(family).replace("samplers.", ""), fontsize=10)
        ax.set_xlabel("NFE (log scale)")
        ax.set_ylabel(label)
        _log_y_if_wide(ax, ok[quality])
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(families):]:
        ax.set_visible(False)
    fig.suptitle("Quality against NFE by sampler family" + (" (95% bootstrap CI bands)" if quality == "fid" else ""))
    fig.tight_layout()
    fig.savefig(plot_dir / "quality_vs_nfe_by_family.png", dpi=110)
    plt.close(fig)
    return "plots/quality_vs_nfe_by_family.png"


def _plots(df: pd.DataFrame, quality: str | None, label: str, out_dir: Path) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid")
    made = []
    ok = df[df["status"] == "ok"]
    plot_dir = subfolder(out_dir, "plots")
    if quality and not ok.empty:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        sns.lineplot(data=ok, x="nfe", y=quality, hue="sampler", marker="o", ax=ax)
        bands = ok["sampler"].nunique() <= MAX_BANDED_SAMPLERS  # with many samplers the bands hide the lines
        if bands and {"fid_ci_low", "fid_ci_high"} <= set(ok.columns) and quality == "fid":
            palette = dict(zip(ok["sampler"].unique(), sns.color_palette(n_colors=ok["sampler"].nunique())))
            for name, group in ok.sort_values("nfe").groupby("sampler"):
                ax.fill_between(group["nfe"], group["fid_ci_low"], group["fid_ci_high"], alpha=0.15,
                                color=palette[name])
        if "fid_floor" in ok.columns and quality == "fid" and ok["fid_floor"].notna().any():
            ax.axhline(ok["fid_floor"].mean(), ls="--", color="black", lw=1, label="floor (real images)")
        ax.set_xscale("log")
        ax.set_xlabel("network calls per image (NFE, log scale)")
        ax.set_ylabel(label)
        _log_y_if_wide(ax, ok[quality])
        ax.set_title("Quality against NFE" + (" (95% bootstrap CI bands)" if quality == "fid" and bands else ""))
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        fig.savefig(plot_dir / "quality_vs_nfe.png", dpi=120)
        plt.close(fig)
        made.append("plots/quality_vs_nfe.png")
        if ok["sampler"].nunique() > MAX_BANDED_SAMPLERS and "plugin" in ok.columns:
            made.append(_family_panels(ok, quality, label, plot_dir))

        fig, ax = plt.subplots(figsize=(7, 4.5))
        sns.scatterplot(data=ok, x="wall_s", y=quality, hue="sampler", ax=ax)
        spread_note = _wall_error_bars(ax, ok, quality)
        front = pareto_front(ok, "wall_s", quality)
        ax.plot(front["wall_s"], front[quality], color="black", lw=1, drawstyle="steps-post", label="Pareto frontier")
        ax.scatter(front["wall_s"], front[quality], s=90, facecolors="none", edgecolors="black")
        ax.set_xscale("log")
        ax.set_xlabel("sampling wall time for all images (s, log scale)")
        ax.set_ylabel(label)
        _log_y_if_wide(ax, ok[quality])
        ax.set_title("Quality against wall time (circled: Pareto frontier)" + spread_note)
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        fig.savefig(plot_dir / "quality_vs_wall.png", dpi=120)
        plt.close(fig)
        made.append("plots/quality_vs_wall.png")
    if "overhead_frac" in ok.columns and ok["overhead_frac"].notna().any():
        fig, ax = plt.subplots(figsize=(7, 4))
        sns.barplot(data=ok, y="sampler", x="overhead_frac", ax=ax, errorbar=None)
        ax.axvline(0.05, ls="--", color="black", lw=1)
        ax.set_xlabel("fraction of sampling time outside the network (dashed: 5% target)")
        ax.set_title("Sampler overhead, mean over step counts")
        fig.tight_layout()
        fig.savefig(plot_dir / "overhead.png", dpi=120)
        plt.close(fig)
        made.append("plots/overhead.png")
    return made


COND_ACC_LABEL = "cond_acc (share classified as their label)"


REF_LABEL = "ref_rmse (RMS distance to the ODE solution from the same x_T)"


def ref_rows(df: pd.DataFrame) -> pd.DataFrame:
    """ok rows with a ref_rmse (deterministic samplers when ref-error ran)."""
    if "ref_rmse" not in df.columns:
        return df.iloc[0:0]
    return df[(df["status"] == "ok") & df["ref_rmse"].notna()]


def ref_plot(df: pd.DataFrame, out_dir: Path) -> list[str]:
    """ref_rmse against NFE, log-log, with 95% bootstrap CI bands (up to MAX_BANDED_SAMPLERS samplers)."""
    rows = ref_rows(df)
    if rows.empty:
        return []
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    fig, ax = plt.subplots(figsize=(7, 4.5))
    sns.lineplot(data=rows, x="nfe", y="ref_rmse", hue="sampler", marker="o", ax=ax)
    if rows["sampler"].nunique() <= MAX_BANDED_SAMPLERS and {"ref_rmse_ci_low", "ref_rmse_ci_high"} <= set(rows):
        palette = dict(zip(rows["sampler"].unique(), sns.color_palette(n_colors=rows["sampler"].nunique())))
        for name, group in rows.sort_values("nfe").groupby("sampler"):
            ax.fill_between(group["nfe"], group["ref_rmse_ci_low"], group["ref_rmse_ci_high"], alpha=0.15,
                            color=palette[name])
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("network calls per image (NFE, log scale)")
    ax.set_ylabel("ref_rmse (log scale)")
    ax.set_title("Distance to the exact trajectory against NFE (deterministic samplers)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(subfolder(out_dir, "plots") / "ref_rmse_vs_nfe.png", dpi=120)
    plt.close(fig)
    return ["plots/ref_rmse_vs_nfe.png"]


def empirical_orders(df: pd.DataFrame) -> list[str]:
    """Each deterministic sampler's empirical order on this model: minus the slope of log ref_rmse against log NFE
    over the run's step grid (least squares; two or more NFE values)."""
    lines = []
    for name, group in ref_rows(df).groupby("sampler", sort=False):
        group = group[(group["ref_rmse"] > 0) & (group["nfe"] > 0)]
        if group["nfe"].nunique() < 2:
            continue
        x, y = [math.log(v) for v in group["nfe"]], [math.log(v) for v in group["ref_rmse"]]
        mx, my = sum(x) / len(x), sum(y) / len(y)
        slope = sum((a - mx) * (b - my) for a, b in zip(x, y)) / sum((a - mx) ** 2 for a in x)
        ordered = group.sort_values("nfe")
        (n1, e1), (n2, e2) = ordered[["nfe", "ref_rmse"]].iloc[-2], ordered[["nfe", "ref_rmse"]].iloc[-1]
        local = -math.log(e2 / e1) / math.log(n2 / n1)  # the two finest grids: nearest to the asymptotic order
        lines.append(f"{name}: order {-slope:.2f} over NFE {int(min(group['nfe']))}-{int(max(group['nfe']))}, "
                     f"{local:.2f} between the two finest (ref_rmse {ordered['ref_rmse'].iloc[0]:.3g} to "
                     f"{ordered['ref_rmse'].iloc[-1]:.3g})")
    return lines


def ref_notes(df: pd.DataFrame) -> list[str]:
    """Why some rows have no ref_rmse (stochastic samplers)."""
    if "ref_rmse_note" not in df.columns:
        return []
    noted = df[df["ref_rmse_note"].notna()]
    names = list(dict.fromkeys(noted["sampler"]))
    if not names:
        return []
    return [f"No ref_rmse for {', '.join(names)}: {noted['ref_rmse_note'].iloc[0]}; their distance to one ODE "
            "solution would not be comparable with the deterministic samplers'."]


def adaptive_note(df: pd.DataFrame) -> list[str]:
    """What steps 0 and nfe_max mean, when the run has adaptive samplers."""
    if "nfe_max" not in df.columns or not (df["steps"] == ADAPTIVE_STEPS).any():
        return []
    return [f"Rows at steps {ADAPTIVE_STEPS} are adaptive samplers: they choose their own steps per image, so nfe is "
            "the mean of the network calls counted per image and nfe_max the most any image took; the budget "
            "table places them by nfe."]


def has_guidance_sweep(df: pd.DataFrame) -> bool:
    """Whether the run compared more than one guidance scale."""
    ok = df[df["status"] == "ok"]
    return "guidance" in ok.columns and pd.to_numeric(ok["guidance"], errors="coerce").nunique() > 1


def _guidance_groups(df: pd.DataFrame):
    """(label, rows sorted by guidance) per sampler and step count, over ok rows with a guidance value."""
    ok = df[df["status"] == "ok"].assign(guidance=lambda d: pd.to_numeric(d["guidance"], errors="coerce"))
    ok = ok.dropna(subset=["guidance"])
    several_steps = ok.groupby("sampler")["steps"].nunique().max() > 1
    for (sampler, steps), group in ok.groupby(["sampler", "steps"], sort=True):
        yield (f"{sampler} @ {int(steps)} steps" if several_steps else str(sampler)), group.sort_values("guidance")


def guidance_plots(df: pd.DataFrame, out_dir: Path) -> list[str]:
    """FID (or the oracle's distance) and cond_acc against the guidance scale, one line per sampler (and step
    count), when guidance varies."""
    if not has_guidance_sweep(df):
        return []
    quality = quality_column(df)
    metrics = [(c, label) for c, label in (quality, ("cond_acc", COND_ACC_LABEL))
               if c and c in df.columns and df[c].notna().any()]
    if not metrics:
        return []
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(metrics), figsize=(6 * len(metrics), 4.2), squeeze=False)
    for ax, (column, label) in zip(axes[0], metrics, strict=True):
        for name, group in _guidance_groups(df):
            rows = group.dropna(subset=[column])
            ax.plot(rows["guidance"], rows[column], marker="o", label=name)
        ax.set_xlabel("guidance scale w: (1 + w) eps(x, c) - w eps(x, null)")
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
    fig.suptitle("Quality and class fidelity against classifier-free guidance")
    fig.tight_layout()
    subfolder(out_dir, "plots")
    fig.savefig(out_dir / "plots" / "quality_vs_guidance.png", dpi=120)
    plt.close(fig)
    return ["plots/quality_vs_guidance.png"]


def guidance_sentences(df: pd.DataFrame) -> list[str]:
    """One sentence per sampler (and step count): the guidance scale with the best quality (lowest FID, or
    the oracle's distance; without either, the highest cond_acc), and how cond_acc moves across the scales."""
    if not has_guidance_sweep(df):
        return []
    quality, label = quality_column(df)
    lines = []
    for name, group in _guidance_groups(df):
        has_fid = quality is not None and group[quality].notna().any()
        has_acc = "cond_acc" in group.columns and group["cond_acc"].notna().any()
        if not (has_fid or has_acc):
            continue
        best = group.loc[group[quality].idxmin()] if has_fid else group.loc[group["cond_acc"].idxmax()]
        text = (f"With **{name}**, the best guidance scale is w = {best['guidance']:g}: "
                + (f"lowest {label} {best[quality]:.4g}" if has_fid else f"highest cond_acc {best['cond_acc']:.3f}"))
        if has_acc:
            rows = group.dropna(subset=["cond_acc"])
            first, last = rows.iloc[0], rows.iloc[-1]
            if has_fid:
                text += f", cond_acc {best['cond_acc']:.3f}"
            text += (f"; cond_acc goes from {first['cond_acc']:.3f} at w = {first['guidance']:g} to "
                     f"{last['cond_acc']:.3f} at w = {last['guidance']:g}")
        lines.append(text + ".")
    return lines


def _wall_error_bars(ax, ok: pd.DataFrame, quality: str) -> str:
    """Horizontal bars from the first to the third quartile of wall time over timed batches (bench.timing)."""
    if not {"wall_s_q1", "wall_s_q3"} <= set(ok.columns) or ok["wall_s_q1"].isna().all():
        return ""
    low = (ok["wall_s"] - ok["wall_s_q1"]).clip(lower=0)
    high = (ok["wall_s_q3"] - ok["wall_s"]).clip(lower=0)
    ax.errorbar(ok["wall_s"], ok[quality], xerr=[low, high], fmt="none", ecolor="grey", elinewidth=1, capsize=2)
    return "\n(bars: interquartile range of wall time over timed batches)"


def timing_warnings(df: pd.DataFrame, listed: int = 5) -> list[str]:
    """One line per configuration whose timing was taken on a busy machine or varied widely; beyond
    `listed` busy ones, a single line counts them."""
    from bench.timing import timing_warning
    ok = df[df["status"] == "ok"]
    lines = [(bool(row.get("busy")), w) for row in ok.to_dict("records") if (w := timing_warning(row))]
    busy = [w for is_busy, w in lines if is_busy]
    if len(busy) <= listed:
        return [w for _, w in lines]
    loads = pd.concat([ok["load_before"], ok["load_after"]])
    return [f"{len(busy)} of {len(ok)} configurations were timed while the machine was busy (load average up to "
            f"{loads.max():.1f} on {int(ok['cpu_cores'].max())} cores); their wall times may be inflated: compare "
            "wall_s_steps (median step), and rerun on a quiet machine for numbers to publish"] + \
        [w for is_busy, w in lines if not is_busy]


def _fmt(value) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def _ci(low, high) -> str:
    """A confidence interval for the markdown tables; "n/a" for a metric without one (oracle_fd)."""
    low, high = _fmt(low), _fmt(high)
    return "n/a" if low == "" and high == "" else f"[{low}, {high}]"


def budget_sentences(df: pd.DataFrame, quality: str | None, label: str) -> list[str]:
    """Plain sentences: the best sampler at each NFE budget, and how far it is from the floor."""
    ok = df[df["status"] == "ok"].dropna(subset=[quality] if quality else [])
    if not quality or ok.empty:
        return ["No configuration produced a quality score, so no recommendation can be made."]
    lines = []
    for budget in sorted(ok["nfe"].unique()):
        within = ok[ok["nfe"] <= budget]
        best = within.loc[within[quality].idxmin()]
        text = (f"With at most {int(budget)} network calls per image, the best is **{best['sampler']}** at "
                f"{int(best['steps'])} steps: {label} {best[quality]:.4g}")
        if quality == "fid" and "fid_floor" in ok.columns and not math.isnan(best.get("fid_floor", math.nan)):
            text += f", {best[quality] / best['fid_floor']:.2g}× the floor of {best['fid_floor']:.3g}"
        lines.append(text + f" ({best['wall_s']:.3g} s for all images).")
    front = pareto_front(ok, "wall_s", quality)
    lines.append("On wall time, the Pareto frontier (nothing both faster and better) is: "
                 + "; ".join(f"{r['sampler']} @ {int(r['steps'])} ({r['wall_s']:.3g} s, {r[quality]:.4g})"
                             for _, r in front.iterrows()) + ".")
    if quality == "fid" and "fid_floor" in ok.columns:
        lines.append("The floor is the FID of held-out real images against the same reference statistics with "
                     "the same number of images: what a perfect sampler would score.")
    return lines


def budget_table(out_dir: Path, df: pd.DataFrame, quality: str | None, config: dict) -> pd.DataFrame:
    """"Which sampler at which budget" as one table: for each NFE budget, the best ok row within it, its value and
    95% interval, and the rows within the budget that are not significantly worse (the paired bootstrap interval
    of their difference to the best includes 0: a tie)."""
    from bench.frechet import shifted_interval
    from bench.paired import RESAMPLES, _label, row_bootstraps

    columns = ["budget", "best", quality or "quality", "ci_low", "ci_high", "ties"]
    ok = df[df["status"] == "ok"].dropna(subset=[quality]) if quality and quality in df.columns else df.iloc[0:0]
    if ok.empty:
        return pd.DataFrame(columns=columns)
    settings = config.get("config", {}) if isinstance(config, dict) else {}
    boots = row_bootstraps(out_dir, ok, quality, int(settings.get("bootstrap") or RESAMPLES),
                           int(settings.get("seed") or 0))
    ci = {"fid": ("fid_ci_low", "fid_ci_high"), "ref_rmse": ("ref_rmse_ci_low", "ref_rmse_ci_high")}.get(quality)
    lines = []
    for budget in sorted(ok["nfe"].unique()):
        within = ok[ok["nfe"] <= budget]
        best = within.loc[within[quality].idxmin()]
        best_label = _label(best)
        ties = []
        for _, r in within.iterrows():
            label = _label(r)
            if label == best_label or label not in boots or best_label not in boots:
                continue
            low, high = shifted_interval(float(r[quality] - best[quality]), boots[label] - boots[best_label])
            if low <= 0:
                ties.append(label)
        lines.append({"budget": int(budget) if float(budget).is_integer() else round(float(budget), 1),
                      "best": best_label, quality: float(best[quality]),
                      "ci_low": float(best[ci[0]]) if ci and ci[0] in best else math.nan,
                      "ci_high": float(best[ci[1]]) if ci and ci[1] in best else math.nan,
                      "ties": ", ".join(ties[:6]) + (f" and {len(ties) - 6} more" if len(ties) > 6 else "")})
    return pd.DataFrame(lines, columns=columns)


def best_cells(table: pd.DataFrame) -> list[tuple[int, int]]:
    """(column, row) positions of the lowest (best) value of each column of a sampler x NFE table."""
    return [(j, list(table.index).index(table[column].idxmin()))
            for j, column in enumerate(table.columns) if table[column].notna().any()]


def heatmap(df: pd.DataFrame, quality: str | None, label: str, out_dir: Path) -> list[str]:
    """Quality by sampler x NFE, the best of each NFE column outlined."""
    ok = df[df["status"] == "ok"].dropna(subset=[quality]) if quality else df.iloc[0:0]
    if ok.empty or ok["nfe"].nunique() < 1:
        return []
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns
    from matplotlib.patches import Rectangle

    table = ok.pivot_table(index="sampler", columns="nfe", values=quality, aggfunc="min")
    table = table.loc[table.min(axis=1).sort_values().index]
    # labels, not numbers: one fractional column (an adaptive sampler's mean) would turn 5 into "5.0" everywhere
    table.columns = [str(int(c)) if float(c).is_integer() else f"{float(c):.1f}" for c in table.columns]
    fig, ax = plt.subplots(figsize=(1.0 + 0.75 * table.shape[1], 1.2 + 0.32 * table.shape[0]))
    positive = table.to_numpy()[table.to_numpy() > 0]
    norm = None
    if positive.size and positive.max() / positive.min() > 5:
        from matplotlib.colors import LogNorm
        norm = LogNorm(positive.min(), positive.max())
    sns.heatmap(table, annot=True, fmt=".3g", cmap="viridis_r", norm=norm, cbar_kws={"label": label}, ax=ax,
                annot_kws={"fontsize": 7})
    for j, i in best_cells(table):
        ax.add_patch(Rectangle((j, i), 1, 1, fill=False, edgecolor="red", lw=2))
    ax.set_xlabel("network calls per image (NFE); red: best in the column")
    ax.set_ylabel("")
    ax.set_title(f"{label} by sampler and NFE")
    fig.tight_layout()
    fig.savefig(subfolder(out_dir, "plots") / "heatmap.png", dpi=110)
    plt.close(fig)
    return ["plots/heatmap.png"]


XY_IMAGES = 4  # images per cell of the X/Y grid (the first ones: the same x_T in every cell)


def xy_grid(df: pd.DataFrame, out_dir: Path, config: dict) -> list[str]:
    """The X/Y grid of ComfyUI/A1111: rows samplers, columns steps, each cell the first XY_IMAGES images of that
    configuration's sample grid (the same x_T everywhere), cut from samples/<sampler>-<steps>.png."""
    from PIL import Image

    from bench.results import slug

    ok = df[df["status"].isin(["ok", "nfe_mismatch"])]
    samplers = list(dict.fromkeys(ok["sampler"]))
    steps = sorted(ok["steps"].unique(), key=lambda n: (n == ADAPTIVE_STEPS, n))  # the adaptive column last
    cells = {}
    for _, r in ok.iterrows():
        guided = "" if pd.isna(r.get("guidance", math.nan)) else f"-w{r['guidance']:g}"
        path = out_dir / "samples" / f"{slug(str(r['sampler']))}-{int(r['steps'])}{guided}.png"
        if path.is_file() and not path.is_symlink():
            cells.setdefault((r["sampler"], int(r["steps"])), path)
    info = config.get("model_info") if isinstance(config.get("model_info"), dict) else {}
    shape = info.get("image_shape")
    if not cells or not (isinstance(shape, list) and len(shape) == 3 and all(isinstance(v, int) for v in shape)):
        return []
    side = shape[2] * (math.ceil(32 / shape[2]) if shape[2] < 32 else 1)  # as bench.results.save_grid enlarges
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(samplers), len(steps), squeeze=False,
                             figsize=(1.6 * len(steps) + 1.6, 0.55 * len(samplers) + 0.6))
    for i, name in enumerate(samplers):
        for j, n in enumerate(steps):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if (name, int(n)) in cells:
                with Image.open(cells[(name, int(n))]) as grid:
                    strip = grid.convert("RGB").crop((2, 2, 2 + XY_IMAGES * (side + 2) - 2, 2 + side))
                ax.imshow(strip)
            if j == 0:
                ax.set_ylabel(str(name), rotation=0, ha="right", va="center", fontsize=7)
            if i == 0:
                ax.set_title("adaptive" if int(n) == ADAPTIVE_STEPS else f"{int(n)} steps", fontsize=8)
    fig.suptitle("The same x_T across samplers and steps (first images of each sample grid)", fontsize=9)
    height = fig.get_size_inches()[1]
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.3 / height))  # keep the title clear of the column titles
    fig.savefig(subfolder(out_dir, "plots") / "xy_grid.png", dpi=110)
    plt.close(fig)
    return ["plots/xy_grid.png"]


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    if tmp.is_symlink():  # never write through a link someone left in a results folder
        tmp.unlink()
    tmp.write_text(text)
    tmp.replace(path)


def md_escape(text) -> str:
    """Text for report.md: HTML in names is shown, never rendered (markdown passes raw HTML through)."""
    return html.escape(str(text), quote=False)


def link(path: str) -> str:
    """A relative file path as a URL (spaces, quotes and brackets in a file name cannot break out of it)."""
    from urllib.parse import quote
    return quote(path, safe="/-._")


def build_report(out_dir: Path) -> Path:
    """Write plots/, report.md and report.html in `out_dir` from its results.csv and config.json.

    Everything the folder holds is read and checked before anything is written: a folder with a bad
    value, a pickled array or a symbolic link where the tool writes is refused with plots/ untouched.
    """
    out_dir = Path(out_dir)
    df, config = load_results(out_dir)
    refuse_links(out_dir)
    from bench.paired import check_saved_rows, fid_infinity_lines, paired_report
    check_saved_rows(out_dir, df)
    paired = paired_report(out_dir, df, config)  # reads (and checks) every saved array first; writes paired.csv
    infinity = fid_infinity_lines(out_dir, df)
    quality, label = quality_column(df)
    plots = (_plots(df, quality, label, out_dir) + heatmap(df, quality, label, out_dir) + xy_grid(df, out_dir, config)
             + ref_plot(df, out_dir) + guidance_plots(df, out_dir))
    budgets = budget_table(out_dir, df, quality, config)
    sentences = budget_sentences(df, quality, label) + guidance_sentences(df)
    ref_sentences = budget_sentences(ref_rows(df), "ref_rmse", REF_LABEL) if not ref_rows(df).empty else []
    ref_sentences = [line for line in ref_sentences if not line.startswith(("The floor", "With at most"))]
    ref_budgets = budget_table(out_dir, ref_rows(df), "ref_rmse", config) if not ref_rows(df).empty else \
        pd.DataFrame()
    orders, notes = empirical_orders(df), ref_notes(df)
    table = df[[c for c in TABLE_COLUMNS if c in df.columns]]
    failed = df[df["status"] != "ok"]
    info = config.get("model_info") if isinstance(config.get("model_info"), dict) else {}
    noise_path = str(info.get("path") or "vp-discrete") + (f" (shift {info['shift']:g})" if isinstance(
        info.get("shift"), (int, float)) else "")
    header = (f"model **{config.get('model', '?')}** on the {noise_path} noise path, predicting "
              f"{info.get('prediction_type', '?')}, {config.get('num_samples', '?')} images per configuration, "
              f"seed {config.get('config', {}).get('seed', '?')}, device {config.get('device_name', '?')}, "
              f"commit {config.get('git_commit', '?')}")
    samples = sorted(p.relative_to(out_dir).as_posix() for p in (out_dir / "samples").glob("*.png"))
    warnings = timing_warnings(df)

    md = [f"# sampler-bench report: {md_escape(out_dir.name)}", "", md_escape(header), "",
          "## Which sampler at which budget", ""]
    if not budgets.empty:
        md += [f"| budget (NFE) | best | {label} | 95% CI | not significantly worse (paired interval includes 0) |",
               "|---|---|---|---|---|"]
        md += [f"| {r['budget']} | {md_escape(r['best'])} | {r[quality]:.4g} | "
               f"{_ci(r['ci_low'], r['ci_high'])} | {md_escape(r['ties']).replace('|', '/')} |"
               for _, r in budgets.iterrows()]
        md += [""]
        sentences = [s for s in sentences if not s.startswith("With at most")]
    md += [f"- {md_escape(s)}" for s in sentences]
    if ref_sentences or notes:
        md += ["", "## Which sampler at which budget, by distance to the exact trajectory", ""]
        if not ref_budgets.empty:
            md += ["| budget (NFE) | best | ref_rmse | 95% CI | not significantly worse |", "|---|---|---|---|---|"]
            md += [f"| {r['budget']} | {md_escape(r['best'])} | {r['ref_rmse']:.4g} | "
                   f"{_ci(r['ci_low'], r['ci_high'])} | {md_escape(r['ties']).replace('|', '/')} |"
                   for _, r in ref_budgets.iterrows()] + [""]
        md += [f"- {md_escape(s)}" for s in ref_sentences + notes]
    if orders:
        md += ["", "## Empirical order on this model", "", "Minus the slope of log ref_rmse against log NFE over "
               "this run's step grid.", ""] + [f"- {md_escape(s)}" for s in orders]
    if warnings:
        md += ["", "## Timing warnings", "", "Wall times below were measured while the machine was busy or varied "
               "widely between batches; compare them with care (medians over batches, spread in the table).", ""]
        md += [f"- {md_escape(w)}" for w in warnings]
    if paired:
        md += ["", "## Paired comparisons at equal NFE", "", md_escape(paired[0]), ""]
        md += [f"- {md_escape(s)}" for s in paired[2:]]
    if infinity:
        md += ["", "## FID at infinitely many images", "", "FID is biased upwards by about c / n; FID∞ fits FID = "
               "FID∞ + c / n on nested subsets of the images and extrapolates (Chong & Forsyth 2020), so runs "
               "with different numbers of images compare.", ""] + [f"- {md_escape(s)}" for s in infinity]
    md += ["", "## Plots", ""] + [f"![{md_escape(p)}]({link(p)})" for p in plots]
    md += ["", "## Results", ""] + [md_escape(s) for s in adaptive_note(df)]
    md += ["", "| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    md += ["| " + " | ".join(md_escape(_fmt(v)).replace("|", "\\|") for v in row) + " |"
           for row in table.itertuples(index=False)]
    if not failed.empty:
        md += ["", "## Failed configurations (and NFE mismatches)", ""]
        md += [md_escape(f"- {r['sampler']} @ {r['steps']}: {r['status']}: {r.get('error', '')}")
               for _, r in failed.iterrows()]
    md += ["", "## Sample grids (same seeds for every sampler)", ""]
    md += [f"![{md_escape(p)}]({link(p)})" for p in samples]
    _write_atomic(out_dir / "report.md", "\n".join(md) + "\n")

    esc = html.escape

    def bold(text: str) -> str:
        parts = esc(text).split("**")
        return "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))

    body = [f"<h1>sampler-bench report: {esc(out_dir.name)}</h1>", f"<p>{bold(header)}</p>",
            "<h2>Which sampler at which budget</h2>"]
    if not budgets.empty:
        body += [budgets.rename(columns={quality: label, "ties": "not significantly worse"}).to_html(
            index=False, na_rep="", escape=True, float_format=lambda v: f"{v:.4g}")]
    body += ["<ul>"] + [f"<li>{bold(s)}</li>" for s in sentences] + ["</ul>"]
    if ref_sentences or notes:
        body += ["<h2>Which sampler at which budget, by distance to the exact trajectory</h2>"]
        if not ref_budgets.empty:
            body += [ref_budgets.rename(columns={"ties": "not significantly worse"}).to_html(
                index=False, na_rep="", escape=True, float_format=lambda v: f"{v:.4g}")]
        body += ["<ul>"] + [f"<li>{bold(s)}</li>" for s in ref_sentences + notes] + ["</ul>"]
    if orders:
        body += ["<h2>Empirical order on this model</h2><ul>"] + [f"<li>{esc(s)}</li>" for s in orders] + ["</ul>"]
    if warnings:
        body += ["<h2>Timing warnings</h2><ul>"] + [f"<li>{esc(w)}</li>" for w in warnings] + ["</ul>"]
    if paired:
        body += ["<h2>Paired comparisons at equal NFE</h2>", f"<p>{esc(paired[0])}</p><ul>"]
        body += [f"<li>{bold(s)}</li>" for s in paired[2:]] + ["</ul>"]
    if infinity:
        body += ["<h2>FID at infinitely many images</h2><ul>"] + [f"<li>{esc(s)}</li>" for s in infinity]
        body += ["</ul>"]
    body += ["<h2>Plots</h2>"] + [f'<img src="{esc(link(p))}" alt="{esc(p)}" style="max-width:48%">' for p in plots]
    body += ["<h2>Results</h2>"] + [f"<p>{esc(s)}</p>" for s in adaptive_note(df)]
    body += [table.to_html(index=False, na_rep="", escape=True,
                                               float_format=lambda v: f"{v:.4g}")]
    if not failed.empty:
        body += ["<h2>Failed configurations (and NFE mismatches)</h2><ul>"]
        body += [f"<li>{esc(str(r['sampler']))} @ {esc(str(r['steps']))}: {esc(str(r['status']))}: "
                 f"{esc(str(r.get('error', '')))}</li>" for _, r in failed.iterrows()] + ["</ul>"]
    body += ["<h2>Sample grids (same seeds for every sampler)</h2>"]
    body += [f'<figure style="display:inline-block"><img src="{esc(link(p))}" alt="{esc(p)}" width="200">'
             f"<figcaption>{esc(p)}</figcaption></figure>" for p in samples]
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>sampler-bench report</title>"
            "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:12px}"
            "td,th{border:1px solid #ccc;padding:2px 6px}</style></head><body>" + "\n".join(body) + "</body></html>")
    _write_atomic(out_dir / "report.html", page)
    return out_dir / "report.md"


def compare_keys(a: pd.DataFrame, b: pd.DataFrame) -> list[str]:
    """The columns that say two rows of two runs are the same configuration: sampler and steps, and the guidance
    scale where either run is guided (each w of a guided run is its own row)."""
    guided = any("guidance" in d and pd.to_numeric(d["guidance"], errors="coerce").notna().any() for d in (a, b))
    return ["sampler", "steps", "guidance"] if guided and "guidance" in a and "guidance" in b else ["sampler", "steps"]


def compare(dir_a: Path, dir_b: Path) -> pd.DataFrame:
    """Two runs side by side on (sampler, steps, guidance), with the quality and time of each and their ratio."""
    a, _ = load_results(dir_a)
    b, _ = load_results(dir_b)
    quality, _ = quality_column(pd.concat([a, b]))
    keys = compare_keys(a, b)
    cols = keys + ["nfe", "wall_s"] + ([quality] if quality else []) + ["status"]
    merged = a[[c for c in cols if c in a]].merge(b[[c for c in cols if c in b]], on=keys,
                                                   how="outer", suffixes=("_a", "_b"))
    if {"wall_s_a", "wall_s_b"} <= set(merged.columns):
        merged["wall_ratio_b_over_a"] = merged["wall_s_b"] / merged["wall_s_a"]
    if quality and {f"{quality}_a", f"{quality}_b"} <= set(merged.columns):
        merged[f"{quality}_diff_b_minus_a"] = merged[f"{quality}_b"] - merged[f"{quality}_a"]
        from bench.paired import paired_across_runs  # runs on the same images: a paired interval of the difference
        merged = paired_across_runs(dir_a, dir_b, merged, quality)
    return merged
