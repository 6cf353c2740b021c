"""`python -m bench`: list, run, report, compare, perf, train, train-features."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

from bench.config import DEFAULT_STEPS, PRECISIONS, RunConfig
from bench.errors import UserError

EXTRA_COMMANDS = ("models.train", "models.features")  # each has add_subparser(subparsers)


def _registry(args):
    from bench.plugins import load_registry
    registry = load_registry(tuple(getattr(args, "plugin", None) or ()))
    for error in registry.errors:
        print(f"warning: {error}", file=sys.stderr)
    return registry


def cmd_list(args) -> int:
    """Print samplers, presets, models and metrics, each with its description and plugin."""
    registry = _registry(args)
    sections = [("Samplers", registry.samplers), ("Presets", registry.presets), ("Models", registry.models),
                ("Metrics", registry.metrics)]
    if args.json:
        print(json.dumps({title.lower(): {name: {"description": item.description, "plugin": item.plugin}
                                          for name, item in table.items()} for title, table in sections}, indent=2))
        return 0
    for title, table in sections:
        print(f"{title}:")
        for name, item in table.items():
            extra = ""
            if title == "Samplers":
                params = ", ".join(f"{k}={p.default}" for k, p in item.params.items())
                extra = f"  [plan: {item.plan}{'; ' + params if params else ''}]"
            elif title == "Presets":
                extra = f"  [= {item.sampler}:{','.join(f'{k}={v}' for k, v in item.params.items())}]"
            print(f"  {name:<20} {item.description}{extra}  (plugin: {item.plugin})")
        if not table:
            print("  (none)")
        print()
    if registry.errors:
        print(f"{len(registry.errors)} plugin problem(s); see the warnings above.")
    return 0


def _step_list(text: str) -> tuple[str, ...]:
    """Comma-separated step counts; checked (integers in 1..T) once the model's T is known."""
    return tuple(s for s in text.replace(" ", "").split(",") if s)


def cmd_run(args) -> int:
    """Run the benchmark matrix and write a results folder."""
    from bench.harness import run_benchmark, summary_table
    if args.resume:
        stored = Path(args.resume) / "config.json"
        if not stored.exists():
            raise UserError(f"--resume {args.resume}: no config.json there; is it a results folder?")
        saved = json.loads(stored.read_text())["config"]
        config = RunConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()})
    else:
        config = RunConfig(samplers=tuple(args.samplers), steps=args.steps, model=args.model,
                           num_samples=args.num_samples, batch_size=args.batch_size, seed=args.seed,
                           device=args.device, precision=args.precision, metrics=tuple(args.metrics),
                           fid_weights=args.fid_weights, bootstrap=args.bootstrap, grid_images=args.grid_images,
                           trajectory_images=args.trajectory_images, plugins=tuple(args.plugin or ()))
    from bench.plugins import load_registry
    registry = load_registry(config.plugins)
    for error in registry.errors:
        print(f"warning: {error}", file=sys.stderr)
    out_dir = run_benchmark(config, registry, out=args.resume or args.out, resume=bool(args.resume),
                            force=args.force, results_root=Path(args.results_root), quiet=args.quiet)
    print(summary_table(out_dir))
    print(f"\nresults: {out_dir}/results.csv\nreport:  {out_dir}/report.md")
    return 0


def cmd_report(args) -> int:
    """Rebuild plots and report.md/html of a results folder."""
    from bench.report import build_report
    print(build_report(Path(args.dir)))
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description="Benchmark diffusion-model samplers: "
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
    p.add_argument("--samplers", nargs="+", default=["all"], metavar="SPEC",
                   help="'all', names, presets, or name:param=value,... e.g. ddim:eta=0.2 stride:sections=10,15,20")
    p.add_argument("--steps", type=_step_list, default=DEFAULT_STEPS, help="comma-separated step counts "
                   f"(default {','.join(map(str, DEFAULT_STEPS))}; full-schedule samplers run once at T)")
    p.add_argument("--model", help="registered model name, a .safetensors weight file, or a diffusers folder "
                   "(default: digits on CPU, fashion-mnist on CUDA)")
    p.add_argument("--num-samples", type=int, help="images per configuration (default 500 on CPU, 10000 on CUDA)")
    p.add_argument("--batch-size", type=int, help="images per network call (default 500 on CPU, 2500 on CUDA)")
    p.add_argument("--seed", type=int, default=0, help="seed of the per-image noise (default 0)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    p.add_argument("--precision", default="fp32", choices=PRECISIONS, help="autocast precision (fp16 needs CUDA)")
    p.add_argument("--metrics", nargs="+", default=["all"], help="metric names, 'all' or 'none'")
    p.add_argument("--fid-weights", help="local Inception-v3 weights file for Inception FID on RGB models")
    p.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples for FID intervals")
    p.add_argument("--grid-images", type=int, default=64, help="images in each sample grid PNG")
    p.add_argument("--trajectory-images", type=int, default=4, help="images in each trajectory strip")
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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished rows are in results.csv (continue with --resume DIR)", file=sys.stderr)
        return 130
