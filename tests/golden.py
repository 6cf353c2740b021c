"""Golden files: a command's whole output compared with a reviewed copy in tests/golden/.

Checks that assert one property each let a one-line bookkeeping slip through in every mutation round (a
field copied from the wrong place, a boundary off by one, a label or a count in the report): those change
some part of an output that no single assertion looked at. A golden file looks at all of it.

Numbers are compared with a tolerance of one unit in the last printed digit (and 1e-6 relative), so
round-off from another CPU's kernels is not a difference; integers and all other text must match exactly.
After a deliberate change of an output, rewrite the files and review the diff:

    SAMPLER_BENCH_UPDATE_GOLDEN=1 python -m pytest tests/test_golden.py
    git diff tests/golden/
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path

import pytest

GOLDEN_DIR = Path(__file__).parent / "golden"
UPDATE_ENV = "SAMPLER_BENCH_UPDATE_GOLDEN"
_NUMBER = re.compile(r"(\d+\.\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|\d+[eE][-+]?\d+|\d+)")


def _last_digit_unit(token: str) -> float | None:
    """One unit in the last printed digit of a decimal token, or None for an integer (exact match)."""
    mantissa, _, exponent = token.lower().partition("e")
    if "." not in mantissa and not exponent:
        return None
    decimals = len(mantissa.partition(".")[2])
    return 10.0 ** (int(exponent or 0) - decimals)


def _close(got: str, expected: str) -> bool:
    if got == expected:
        return True
    unit = _last_digit_unit(expected)
    if unit is None or _last_digit_unit(got) is None:
        return False
    return abs(float(got) - float(expected)) <= max(unit, 1e-6 * abs(float(expected)))


def same_up_to_round_off(got: str, expected: str) -> bool:
    """Whether two texts are equal but for decimal numbers within one unit of their last printed digit."""
    a, b = _NUMBER.split(got), _NUMBER.split(expected)
    if len(a) != len(b):
        return False
    # re.split with one group alternates text, number, text, ...: odd places hold the numbers
    return all((x == y) if i % 2 == 0 else _close(x, y) for i, (x, y) in enumerate(zip(a, b, strict=True)))


def assert_matches_golden(name: str, text: str) -> None:
    """`text` equals tests/golden/NAME up to round-off (or, with SAMPLER_BENCH_UPDATE_GOLDEN=1, becomes it)."""
    path = GOLDEN_DIR / name
    if os.environ.get(UPDATE_ENV):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return
    if not path.is_file():
        pytest.fail(f"no golden file {path}; write it with {UPDATE_ENV}=1 and review it")
    expected = path.read_text()
    if same_up_to_round_off(text, expected):
        return
    diff = list(difflib.unified_diff(expected.splitlines(), text.splitlines(), f"golden/{name}", "now",
                                     lineterm="", n=1))
    shown = "\n".join(diff[:80]) + (f"\n... {len(diff) - 80} more diff lines" if len(diff) > 80 else "")
    pytest.fail(f"output differs from tests/golden/{name} (if the change is meant, rerun with {UPDATE_ENV}=1 "
                f"and review git diff tests/golden/):\n{shown}", pytrace=False)
