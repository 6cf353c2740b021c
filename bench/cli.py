"""`python -m bench`: list, run, report, compare, perf, train, train-features."""

from __future__ import annotations

import argparse
import errno
import importlib
import json
import os
import shlex
import signal
import sys
import tempfile
import traceback
from dataclasses import fields
from datetime import datetime, timezone
from pathlib import Path

from bench.config import DEFAULT_STEPS, PRECISIONS, RunConfig
from bench.errors import UserError

EXTRA_COMMANDS = ("models.train", "models.features", "bench.orders", "bench.tune")  # each has add_subparser(subparsers)


def _registry(args, files: tuple[str, ...] | None = None):
    """Every plugin's registrations; a --plugin file that does not exist is an error, other plugin problems warn."""
    from bench.plugins import load_registry
    files = tuple(getattr(args, "plugin", None) or ()) if files is None else files
    for name in files:
        if not Path(name).is_file():
            raise UserError(f"--plugin {name}: no such file")
    registry = load_registry(files)
    for error in registry.errors:
        print(f"warning: {error}", file=sys.stderr)
    return registry


def cmd_list(args) -> int:
    """Print samplers, presets, models and metrics, each with its description and plugin."""
    registry = _registry(args)
    sections = [("Samplers", registry.samplers), ("Presets", registry.presets), ("Models", registry.models),
                ("Metrics", registry.metrics)]
    if args.json:
        from bench.registry import ModelSpec, SamplerSpec

        def entry(item) -> dict:
            out = {"description": item.description, "plugin": item.plugin}
            if isinstance(item, ModelSpec) and item.opens is None:
                out.update(path=item.path, prediction_type=item.prediction_type, shift=item.shift)
            if isinstance(item, SamplerSpec) and item.paths is not None:
                out["paths"] = list(item.paths)
            if isinstance(item, SamplerSpec) and item.adaptive:  # picks its own steps: nfe is counted per image
                out["adaptive"] = True
            if isinstance(item, SamplerSpec):  # each parameter with its default and allowed values
                out["params"] = {k: {"default": p.default, "help": p.help, "allowed": p.allowed()}
                                 for k, p in item.params.items()}
            return out
        from bench.aliases import ALIASES
        listing = {title.lower(): {name: entry(item) for name, item in table.items()} for title, table in sections}
        print(json.dumps({**listing, "aliases": ALIASES}, indent=2, default=str))
        return 0
    for title, table in sections:
        print(f"{title}:")
        for name, item in table.items():
            extra = ""
            if title == "Samplers":
                params = ", ".join(f"{k}={p.default}" + (f" ({p.allowed()})" if p.allowed() else "")
                                   for k, p in item.params.items())
                paths = f"; paths: {', '.join(item.paths)}" if item.paths is not None else ""
                extra = f"  [plan: {item.plan}{'; ' + params if params else ''}{paths}]"
            elif title == "Presets":
                extra = f"  [= {item.sampler}:{','.join(f'{k}={v}' for k, v in item.params.items())}]"
            elif title == "Models" and item.opens is None and item.path:
                extra = f"  [path: {item.path}" + (f", shift {item.shift:g}" if item.shift is not None else "") + \
                    (f"; predicts {item.prediction_type}" if item.prediction_type else "") + "]"
            print(f"  {name:<20} {item.description}{extra}  (plugin: {item.plugin})")
        if not table:
            print("  (none)")
        if title == "Samplers":
            from bench.registry import COMMON_PARAMS
            print("  every sampler also takes: " + "; ".join(f"{k}={p.default} ({p.allowed()}): {p.help}"
                                                         for k, p in COMMON_PARAMS.items()))
        print()
    _print_aliases()
    if registry.errors:
        print(f"{len(registry.errors)} plugin problem(s); see the warnings above.")
    return 0


def _print_aliases() -> None:
    """The ComfyUI and A1111 names `--samplers` accepts (bench.aliases), by their parts; --json lists every one."""
    from bench import aliases as a

    def pairs(table) -> str:
        return ", ".join(f"{k} = {v}" for k, v in table.items())

    print("Aliases (--samplers NAME runs the configuration; results keep NAME):")
    print(f"  ComfyUI SAMPLER+SCHEDULER, e.g. dpmpp_2m_sde+karras = {a.ALIASES['dpmpp_2m_sde+karras']}")
    print(f"    samplers: {pairs(a.COMFY_SAMPLERS)}")
    print(f"    schedulers (plan=): {pairs(a.COMFY_SCHEDULERS)}")
    print("  A1111 SAMPLER (its 'Automatic' schedule) or 'SAMPLER SCHEDULE', e.g. "
          f"'DPM++ 2M Karras' = {a.ALIASES['DPM++ 2M Karras']}")
    print(f"    samplers: {', '.join(f'{k} = {a.with_plan(*v)}' for k, v in a.A1111_SAMPLERS.items())}")
    print(f"    schedule types (plan=): {pairs(a.A1111_SCHEDULES)}")
    print(f"    on their own timesteps: {pairs(a.A1111_FIXED)}")
    print(f"  {len(a.ALIASES)} aliases in all; `list --json` gives each one's configuration, and bench/aliases.py "
          "where the tools differ")
    print()


INT64 = (-(2**63), 2**63 - 1)


def _int_in(low: int, high: int | None = None, what: str = "an integer"):
    """An argparse type: an integer in [low, high]; argparse names the option in its error."""
    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < low or (high is not None and value > high):
            bound = f"between {low} and {high}" if high is not None else f">= {low}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {value}")
        return value
    return convert


positive_int = _int_in(1, what="a positive integer")
non_negative_int = _int_in(0, what="a non-negative integer")
seed_int = _int_in(*INT64, what="an integer seed")


def _step_list(text: str) -> tuple[str, ...]:
    """Comma-separated step counts; checked (integers in 1..T) once the model's T is known."""
    values = tuple(s for s in text.replace(" ", "").split(",") if s)
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated values like 10,20,50, got {text!r}")
    return values


def _shift(text: str) -> float:
    """--shift: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not (value > 0 and value < float("inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def _given_options(args) -> dict:
    """The RunConfig fields the user set on the command line (unset options are None or empty)."""
    given = {f.name: getattr(args, "plugin" if f.name == "plugins" else f.name, None) for f in fields(RunConfig)}
    return {name: tuple(v) if isinstance(v, list) else v for name, v in given.items() if v is not None and v != ()}


def _normalised(value):
    """A value in a form where '3' and 3, or a list and a tuple, compare equal."""
    if isinstance(value, (list, tuple)):
        return tuple(_normalised(v) for v in value)
    if isinstance(value, (int, float, str)) and not isinstance(value, bool):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _resumed_config(args) -> RunConfig:
    """The config recorded in the folder being resumed; options that would change it are refused."""
    from bench.report import read_config

    folder = Path(args.resume)
    stored = folder / "config.json"
    if not stored.is_file():
        what = "does not exist" if not folder.exists() else "has no config.json"
        raise UserError(f"--resume {folder}: the folder {what}; is it a sampler-bench results folder?")
    if args.force:
        raise UserError("--resume and --force contradict each other: --force would delete the run being resumed")
    if args.out and Path(args.out).resolve() != folder.resolve():
        raise UserError(f"--resume {folder} continues that folder; drop --out {args.out}")
    recorded = read_config(stored)
    saved = recorded.get("config")
    try:
        config = RunConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()})
    except (TypeError, AttributeError) as exc:
        raise UserError(f"{stored}: not a run config this version can resume ({exc})") from None
    except UserError as exc:
        raise UserError(f"{stored} records a config that is not valid: {exc}") from None
    for name, value in _given_options(args).items():
        old = getattr(config, name)
        if _normalised(value) in (_normalised(old), _normalised(recorded.get(name))):
            continue
        shown = lambda v: ",".join(map(str, v)) if isinstance(v, tuple) else str(v)  # noqa: E731
        raise UserError(f"--resume {folder}: --{name.replace('_', '-')} {shown(value)} differs from the run's "
                        f"{shown(old if old is not None else recorded.get(name))}; a resumed run keeps the options it "
                        "started with (drop the option, or start a new run with another --out)")
    return config


def _require_recorded_plugins(config: RunConfig, folder: Path, given: tuple[str, ...]) -> None:
    """A UserError listing the plugin files the resumed run used that are not loaded now, and how to load them."""
    from bench.plugins import plugin_files

    def key(path: str) -> str:
        return os.path.realpath(path)

    loaded = {key(p) for p in plugin_files(given)}
    missing = [p for p in config.plugins if key(p) not in loaded]
    if missing:
        raise UserError(f"--resume {folder}: the run used plugin file(s) {', '.join(missing)}, which are not loaded "
                        "now; a resumed run never imports code named in a results folder: read them, then pass "
                        + " ".join(f"--plugin {shlex.quote(p)}" for p in missing) + " (or set SAMPLER_BENCH_PLUGINS)")


def cmd_run(args) -> int:
    """Run the benchmark matrix and write a results folder."""
    from bench.harness import run_benchmark, summary_table
    config = _resumed_config(args) if args.resume else RunConfig(**_given_options(args))
    # Plugins come from the command line, the environment and installed packages only: a results folder
    # someone shared must never make us import code, so --resume loads none of the files its config names.
    registry = _registry(args)
    if args.resume:
        _require_recorded_plugins(config, Path(args.resume), tuple(getattr(args, "plugin", None) or ()))
    out_dir = run_benchmark(config, registry, out=args.resume or args.out, resume=bool(args.resume),
                            force=args.force, results_root=Path(args.results_root), quiet=args.quiet)
    print(summary_table(out_dir))
    print(f"\nresults: {out_dir}/results.csv\nreport:  {out_dir}/report.md")
    return 0


def cmd_report(args) -> int:
    """Rebuild plots and report.md/html of a results folder."""
    from bench.report import build_report, load_results
    from bench.results import is_results_folder
    folder = Path(args.dir)
    load_results(folder)  # a missing or unreadable results.csv or config.json is reported first
    if not is_results_folder(folder):
        raise UserError(f"{folder} is not a sampler-bench results folder (no config.json written by the tool next "
                        "to its results.csv); report writes plots and report.md/html only into folders the tool made")
    from bench.folder import acquire_lock, release_lock
    acquire_lock(folder)  # another process writing the folder: refused, naming it
    try:
        print(build_report(folder))
    finally:
        release_lock(folder)
    return 0


def cmd_compare(args) -> int:
    """Print two runs side by side."""
    from bench.report import compare
    table = compare(Path(args.dir_a), Path(args.dir_b))
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    return 0


def cmd_perf(args) -> int:
    from bench.perf import run_perf
    return run_perf(args)


class Parser(argparse.ArgumentParser):
    """argparse with the CLI's error format: one line, `error: ...`, exit code 2."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="python -m bench", description="Benchmark diffusion-model samplers: "
                                     "quality (FID) against cost (network calls, wall time).")
    parser.add_argument("--plugin", action="append", metavar="FILE.py",
                        help="load a local plugin file (repeatable; also SAMPLER_BENCH_PLUGINS=a.py:b.py)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("list", help="list samplers, presets, models and metrics with their plugins")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--plugin", action="append", default=argparse.SUPPRESS, metavar="FILE.py",
                   help="load a local plugin file (repeatable)")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("run", help="run samplers x step counts on a model and write results/<run-id>/",
                       description="Runs every selected sampler at every step count on the same random numbers, "
                       "counts network calls, times sampling (warmed up, synchronised) and scores the samples.")
    p.add_argument("--samplers", nargs="+", metavar="SPEC",
                   help="'all', names, presets, or name:param=value,... e.g. ddim:eta=0.2 stride:sections=10,15,20")
    p.add_argument("--steps", type=_step_list, help="comma-separated step counts "
                   f"(default {','.join(map(str, DEFAULT_STEPS))}; full-schedule samplers run once at T)")
    p.add_argument("--guidance", type=_step_list, default=(), metavar="W,W,...",
                   help="classifier-free guidance scales w, a dimension of the matrix like --steps: eps = (1 + w) "
                   "eps(x, c) - w eps(x, null) (Ho & Salimans; diffusers' guidance_scale = 1 + w). Conditional "
                   "models only; default 0 (purely conditional)")
    p.add_argument("--compile", action="store_true", default=None,
                   help="torch.compile the network once per model; compile time is reported in config.json "
                   "and kept out of wall_s")
    p.add_argument("--shift", type=_shift, default=None, metavar="S",
                   help="flow models: the time shift t' = S t / (1 + (S - 1) t) of every plan placed in t (SD3's and "
                   "diffusers' shift; default: the model's own, 1 unless its card or scheduler config says)")
    p.add_argument("--classes", type=_step_list, default=(), metavar="K,K,...",
                   help="class labels to sample, image i gets classes[i mod len] (default: all classes, balanced)")
    p.add_argument("--model", help="registered model name, a .safetensors weight file, or a diffusers folder "
                   "(default: digits on CPU, fashion-mnist on CUDA)")
    p.add_argument("--num-samples", type=positive_int,
                   help="images per configuration (default 500 on CPU, 10000 on CUDA)")
    p.add_argument("--batch-size", type=positive_int, help="images per network call (default 500 on CPU, 2500 on CUDA)")
    p.add_argument("--threads", type=positive_int, help="torch CPU threads for sampling (default: torch's choice, "
                   "one per core); on a CPU shared with other work, --threads 1 avoids OpenMP stalls")
    p.add_argument("--seed", type=seed_int, help="seed of the per-image noise (default 0)")
    p.add_argument("--device", help="auto, cpu or cuda (default auto)")
    p.add_argument("--precision", choices=PRECISIONS, help="autocast precision (default fp32; fp16 needs CUDA)")
    p.add_argument("--metrics", nargs="+", help="metric names, 'all' or 'none' (default all)")
    p.add_argument("--fid-weights", help="local Inception-v3 weights file for Inception FID on RGB models")
    p.add_argument("--bootstrap", type=non_negative_int, help="bootstrap resamples for FID intervals (default 200)")
    p.add_argument("--grid-images", type=non_negative_int, help="images in each sample grid PNG (default 64)")
    p.add_argument("--trajectory-images", type=non_negative_int, help="images in each trajectory strip (default 4)")
    p.add_argument("--out", help="results folder (default results/<timestamp>-<model>)")
    p.add_argument("--results-root", default="results", help=argparse.SUPPRESS)
    p.add_argument("--resume", metavar="DIR", help="continue a run: skip finished rows, redo failed or missing ones")
    p.add_argument("--force", action="store_true", help="replace an existing results folder")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--plugin", action="append", default=argparse.SUPPRESS, metavar="FILE.py",
                   help="load a local plugin file (repeatable)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("report", help="rebuild plots and report.md/report.html of a results folder")
    p.add_argument("dir")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("compare", help="put two results folders side by side")
    p.add_argument("dir_a")
    p.add_argument("dir_b")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("perf", help="check the speed targets: linear cost in steps, harness overhead, "
                       "default-run time")
    from bench.perf import add_arguments
    add_arguments(p)
    p.set_defaults(func=cmd_perf)

    for module_name in EXTRA_COMMANDS:
        try:
            importlib.import_module(module_name).add_subparser(sub)
        except ImportError as exc:
            name = module_name.split(".")[-1].replace("features", "train-features")
            p = sub.add_parser(name, help=f"(not available: {exc})")
            p.set_defaults(func=lambda _a, _e=exc, _n=name: _unavailable(_n, _e))
    return parser


def _unavailable(name: str, exc: Exception) -> int:
    raise UserError(f"the '{name}' command is not available in this installation: {exc}")


def bug_log_dir() -> Path:
    """Where tracebacks of unexpected errors go: $XDG_CACHE_HOME/sampler-bench/errors (~/.cache by default)."""
    cache = os.environ.get("XDG_CACHE_HOME")
    if not cache:
        home = Path.home()
        if not home.is_dir():  # never create a missing home folder just to hold a log
            return Path(tempfile.gettempdir()) / f"sampler-bench-{os.getuid()}" / "errors"
        cache = home / ".cache"
    return Path(cache) / "sampler-bench" / "errors"


def write_bug_log(argv: list[str]) -> Path | None:
    """Save the current exception's traceback and the command line to a new log file; None if that fails."""
    try:
        folder = bug_log_dir()
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        with tempfile.NamedTemporaryFile("w", dir=folder, prefix=f"{stamp}-", suffix=".log", delete=False) as log:
            log.write("command: " + shlex.join(["python", "-m", "bench", *argv]) + "\n\n" + traceback.format_exc())
        return Path(log.name)
    except OSError:
        return None


def main(argv: list[str] | None = None) -> int:
    """Run one command; every failure ends in one line on stderr and an exit code (2: your input, 1: a bug)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help (0) or a bad option (2, already printed)
        return exc.code if isinstance(exc.code, int) else 2
    previous = _stop_on_sigterm()
    try:
        return args.func(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        out_dir = getattr(exc, "out_dir", None)
        where = (f"; finished rows are in {out_dir}/results.csv (continue with --resume {out_dir})"
                 if out_dir is not None else "")
        print(f"interrupted{where}", file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130
    except OSError as exc:  # a file the system would not read or write (permissions, full disk, vanished folder)
        if exc.errno in STORAGE_ERRNOS:
            where = exc.filename or "a file being written"
            print(f"error: {where}: {exc.strerror or exc} (free some space or write elsewhere with --out)",
                  file=sys.stderr)
            return 2
        if exc.filename is None:
            return _report_bug(exc, argv)
        print(f"error: {exc.filename}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # anything else is our bug: no traceback on screen, but kept for the report
        return _report_bug(exc, argv)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's or torchrun's stop): handled as Ctrl-C is, exit code 143 (128 + 15)."""


STORAGE_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}  # a full disk, a file too large, a quota


def _stop_on_sigterm():
    """Turn SIGTERM into Terminated so a stopped run says where its rows are; returns the previous handler."""
    def handler(signum, frame):
        raise Terminated()
    try:
        return signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (tests calling main() from a thread)
        return None


def _report_bug(exc: Exception, argv: list[str]) -> int:
    """A short message and the path of a log holding the traceback (called while handling `exc`); exit code 1."""
    log = write_bug_log(argv)
    kept = f"the traceback is in {log}" if log else "no log could be written"
    print(f"error: unexpected {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} ({kept}); "
          "this is a bug, please report it", file=sys.stderr)
    return 1
