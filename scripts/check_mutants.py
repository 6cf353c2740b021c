"""Mechanical mutants of every check: which guarded conditions can change without any fast test failing.

    pip install coverage                                  # not a project dependency
    python scripts/check_mutants.py contexts              # the fast suite under coverage, one context per test
    python scripts/check_mutants.py list > mutants.jsonl
    python scripts/check_mutants.py run CLONE mutants.jsonl results.jsonl [--guarded] [--worker I --workers N]
    python scripts/check_mutants.py survivors mutants.jsonl results.jsonl

The mutants: in each `if ...: raise UserError(...)` the whole condition replaced by False (the check deleted),
and in every condition a comparison flipped at its bound (< and <=, > and >=), == and !=, in and not in, is and
is not, and and or, a `not` dropped, an integer constant moved by one. `--guarded` keeps those inside the
conditions of such checks. Each mutant is planted alone in CLONE (a scratch `git clone` of this repository:
the working copy is never touched) and only the tests whose coverage context ran its line are run, those that
reach the check's `raise` first (at most 40; for a deleted check only those, since no other test can see it).
A deleted check whose `raise` no test reached survives without being run ("unreached"). Tests that run the
tool in a subprocess are not in the contexts, so a survivor here can still be killed by one of them.
The README ("How good are the tests?") gives the counts of the last run.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("bench", "samplers", "models")
CONTEXTS = ROOT / ".mutants" / "contexts.json"
MAX_TESTS = 40
SWAP = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq, ast.NotEq: ast.Eq,
        ast.In: ast.NotIn, ast.NotIn: ast.In, ast.Is: ast.IsNot, ast.IsNot: ast.Is}


def _raise_line(body) -> int | None:
    """The line of a `raise UserError(...)` directly in `body`, or None."""
    for statement in body:
        if isinstance(statement, ast.Raise) and statement.exc is not None \
                and "UserError" in ast.unparse(statement.exc).split("(")[0]:
            return statement.lineno
    return None


def mutants_of(path: Path):
    text = path.read_text()
    starts = [0]
    for line in text.splitlines(keepends=True):
        starts.append(starts[-1] + len(line))

    def span(node):
        return starts[node.lineno - 1] + node.col_offset, starts[node.end_lineno - 1] + node.end_col_offset

    def mutant(node, kind, new, guard):
        a, b = span(node)
        return dict(file=str(path.relative_to(ROOT)), line=node.lineno, kind=kind, start=a, end=b, old=text[a:b],
                    new=new, guarded=guard is not None, raise_line=guard)

    tree = ast.parse(text)
    guard_of = {}  # node id -> the line of the raise its check guards
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _raise_line(node.body):
            yield mutant(node.test, "delete-check", "False", _raise_line(node.body))
            for sub in ast.walk(node.test):
                guard_of[id(sub)] = _raise_line(node.body)
    for node in ast.walk(tree):
        guard = guard_of.get(id(node))
        if isinstance(node, ast.Compare):
            for i, op in enumerate(node.ops):
                if type(op) in SWAP:
                    ops = list(node.ops)
                    ops[i] = SWAP[type(op)]()
                    new = ast.Compare(left=node.left, ops=ops, comparators=node.comparators)
                    yield mutant(node, f"{type(op).__name__}->{type(ops[i]).__name__}", f"({ast.unparse(new)})",
                                 guard)
            for c in (node.left, *node.comparators):
                if isinstance(c, ast.Constant) and type(c.value) is int:
                    for d in (1, -1):
                        yield mutant(c, f"const{d:+d}", repr(c.value + d), guard_of.get(id(c)))
        elif isinstance(node, ast.BoolOp):
            other = ast.Or() if isinstance(node.op, ast.And) else ast.And()
            yield mutant(node, f"{type(node.op).__name__}->{type(other).__name__}",
                         f"({ast.unparse(ast.BoolOp(op=other, values=node.values))})", guard)
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            yield mutant(node, "drop-not", f"({ast.unparse(node.operand)})", guard)


def test_ids(contexts: list[str]) -> list[str]:
    """pytest node ids from coverage's test_function contexts ('tests.test_x.test_y|run')."""
    ids = []
    for context in contexts:
        parts = context.split("|")[0].split(".")
        for k in range(len(parts), 0, -1):
            module = ROOT.joinpath(*parts[:k]).with_suffix(".py")
            if module.is_file():
                if parts[k:]:
                    ids.append(str(module.relative_to(ROOT)) + "::" + "::".join(parts[k:]))
                break
    return sorted(set(ids))


def cmd_contexts(args) -> int:
    CONTEXTS.parent.mkdir(exist_ok=True)
    env = dict(os.environ, COVERAGE_FILE=str(CONTEXTS.parent / "coverage.data"))
    rc_file = CONTEXTS.parent / "coveragerc"
    rc_file.write_text(f"[run]\nsource = {', '.join(PACKAGES)}\ndynamic_context = test_function\n")
    subprocess.run([sys.executable, "-m", "coverage", "run", f"--rcfile={rc_file}", "-m", "pytest", "-q",
                    "-p", "no:cacheprovider", "-m", "not slow"], cwd=ROOT, env=env, check=False)
    report = CONTEXTS.parent / "coverage.json"
    subprocess.run([sys.executable, "-m", "coverage", "json", f"--rcfile={rc_file}", "--show-contexts", "-q",
                    "-o", str(report)], cwd=ROOT, env=env, check=True)
    files = json.loads(report.read_text())["files"]
    CONTEXTS.write_text(json.dumps({str(Path(f).resolve().relative_to(ROOT)): v["contexts"]
                                    for f, v in files.items()}))
    print(f"wrote {CONTEXTS}")
    return 0


def cmd_list(args) -> int:
    n = 0
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for m in mutants_of(path):
                print(json.dumps({"id": n, **m}))
                n += 1
    return 0


def cmd_run(args) -> int:
    clone = Path(args.clone).resolve()
    if clone == ROOT:
        raise SystemExit("CLONE must be a scratch clone, not this working copy")
    contexts = json.loads(CONTEXTS.read_text())
    results = Path(args.results)
    done = {json.loads(line)["id"] for line in results.read_text().splitlines()} if results.exists() else set()
    env = dict(os.environ, PYTHONPATH=str(clone))
    for line in Path(args.mutants).read_text().splitlines():
        m = json.loads(line)
        if m["id"] % args.workers != args.worker or m["id"] in done or (args.guarded and not m["guarded"]):
            continue
        lines = contexts.get(m["file"], {})
        first = test_ids(lines.get(str(m["raise_line"]), [])) if m["raise_line"] else []
        rest = [] if m["kind"] == "delete-check" else test_ids(lines.get(str(m["line"]), []))
        tests = (first + [t for t in rest if t not in first])[:MAX_TESTS]
        record = {"id": m["id"]}
        if not tests:
            record["status"] = "unreached"
        else:
            source = clone / m["file"]
            original = source.read_text()
            if original[m["start"]:m["end"]] != m["old"]:
                raise SystemExit(f"{source} differs from the listed mutants; list them again from this commit")
            source.write_text(original[:m["start"]] + m["new"] + original[m["end"]:])
            started = time.time()
            try:
                run = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                                      "-m", "not slow", *tests], cwd=clone, env=env, capture_output=True, text=True,
                                     timeout=max(120, 20 * len(tests)))
                code = run.returncode
            except subprocess.TimeoutExpired:
                code = "timeout"
            finally:
                source.write_text(original)
            record.update(status="survived" if code == 0 else "killed", code=code, tests=len(tests),
                          seconds=round(time.time() - started, 1))
        with results.open("a") as f:
            f.write(json.dumps(record) + "\n")
    return 0


def cmd_survivors(args) -> int:
    mutants = {m["id"]: m for m in map(json.loads, Path(args.mutants).read_text().splitlines())}
    results = [json.loads(line) for line in Path(args.results).read_text().splitlines()]
    counts = {}
    for r in results:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    print(", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    for r in results:
        if r["status"] != "killed":
            m = mutants[r["id"]]
            print(f"{r['status']:9} {m['file']}:{m['line']} {m['kind']}: {m['old'][:80]} -> {m['new'][:60]}")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("contexts").set_defaults(fn=cmd_contexts)
    sub.add_parser("list").set_defaults(fn=cmd_list)
    run = sub.add_parser("run")
    run.add_argument("clone")
    run.add_argument("mutants")
    run.add_argument("results")
    run.add_argument("--guarded", action="store_true", help="only the mutants inside guarded conditions")
    run.add_argument("--worker", type=int, default=0)
    run.add_argument("--workers", type=int, default=1)
    run.set_defaults(fn=cmd_run)
    survivors = sub.add_parser("survivors")
    survivors.add_argument("mutants")
    survivors.add_argument("results")
    survivors.set_defaults(fn=cmd_survivors)
    args = p.parse_args()
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
