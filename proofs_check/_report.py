"""Shared machinery of the proof checks: claim registry, timing, table, JSON, exit code.

Every claim is a zero-argument callable returning a :class:`CheckResult`. The callables are
built from check functions that take the *candidate* expression(s) as arguments (defaulting to
the formulas of docs/math.md), so a test can feed a wrong candidate and see the claim FAIL.
"""
from __future__ import annotations

import argparse
import json
import sys
import textwrap
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np


@dataclass
class CheckResult:
    """Outcome of one claim: ``passed`` is True only if every sub-check passed.

    ``details`` is a short human-readable account (what was shown, the numbers seen);
    ``data`` holds extra machine-readable values written to the JSON report.
    """

    passed: bool
    details: str = ""
    data: dict[str, Any] = field(default_factory=dict)


class Verdict:
    """Collects the sub-checks of one claim; the claim passes only if all of them pass."""

    def __init__(self) -> None:
        self.failures: list[str] = []
        self.notes: list[str] = []
        self.data: dict[str, Any] = {}

    def require(self, ok: Any, what: str | Callable[[], str]) -> bool:
        """Record a sub-check. ``ok`` must be a genuine Python/NumPy bool (``True`` passes).

        ``what`` describes the failure; pass a callable to build an expensive message (say a
        factored SymPy expression) only when the sub-check fails.
        """
        # `is True`-style test: a SymPy relational or None (undecided) must not count as a pass
        passed = ok is True or (isinstance(ok, np.bool_) and bool(ok))
        if not passed:
            self.failures.append(what() if callable(what) else what)
        return passed

    def note(self, text: str) -> None:
        self.notes.append(text)

    def result(self) -> CheckResult:
        parts = list(self.notes)
        if self.failures:
            parts.append("FAILED: " + " | ".join(self.failures))
        return CheckResult(passed=not self.failures, details="; ".join(parts), data=self.data)


@dataclass
class Claim:
    """One row of the report: an id, the claim in words, the method, and the check to run."""

    key: str
    text: str
    method: str  # "symbolic", "exact rational", "numeric", or a combination
    run: Callable[[], CheckResult]


@dataclass
class Row:
    key: str
    claim: str
    method: str
    status: str  # "PASS" or "FAIL"
    seconds: float
    details: str
    data: dict[str, Any]


def run_claims(claims: Sequence[Claim], *, stream=None) -> list[Row]:
    """Run every claim, timing each; an exception inside a check is a FAIL, never a crash."""
    rows = []
    for c in claims:
        t0 = time.perf_counter()
        try:
            res = c.run()
            if not isinstance(res, CheckResult):
                res = CheckResult(False, f"check returned {type(res).__name__}, not CheckResult")
        except Exception as exc:  # noqa: BLE001 - a crashing check must be reported as FAIL
            tb = traceback.format_exc(limit=3).strip().splitlines()[-1]
            res = CheckResult(False, f"raised {type(exc).__name__}: {exc} ({tb})")
        dt = time.perf_counter() - t0
        rows.append(Row(c.key, c.text, c.method, "PASS" if res.passed else "FAIL", dt, res.details, res.data))
        if stream is not None:  # progress line, so a slow run shows where it is
            print(f"  ran {c.key:<6} {rows[-1].status} {dt:6.2f} s", file=stream, flush=True)
    return rows


def format_table(rows: Sequence[Row], title: str) -> str:
    """A fixed-width table (claim wrapped at 58 columns), then the details of each row."""
    w_key, w_claim, w_method = 6, 58, 26
    head = f"{'id':<{w_key}} {'claim':<{w_claim}} {'method':<{w_method}} {'result':<6} {'seconds':>8}"
    rule = "-" * len(head)
    lines = [title, rule, head, rule]
    for r in rows:
        wrapped = textwrap.wrap(r.claim, w_claim) or [""]
        lines.append(f"{r.key:<{w_key}} {wrapped[0]:<{w_claim}} {r.method:<{w_method}} {r.status:<6} {r.seconds:8.2f}")
        for extra in wrapped[1:]:
            lines.append(f"{'':<{w_key}} {extra}")
    lines.append(rule)
    lines.append(summary_line(rows))
    lines.append("")
    lines.append("Details:")
    for r in rows:
        body = textwrap.wrap(r.details, 100, subsequent_indent=" " * 9) or [""]
        lines.append(f"  {r.key:<6} " + body[0])
        lines.extend(body[1:])
    return "\n".join(lines)


def summary_line(rows: Sequence[Row]) -> str:
    n_pass = sum(r.status == "PASS" for r in rows)
    total = sum(r.seconds for r in rows)
    verdict = "ALL PASS" if n_pass == len(rows) else f"{len(rows) - n_pass} FAIL"
    return f"Summary: {n_pass}/{len(rows)} claims PASS ({verdict}); checks took {total:.1f} s"


def to_json(rows: Sequence[Row], title: str) -> dict[str, Any]:
    return {
        "title": title,
        "rows": [
            {
                "id": r.key,
                "claim": r.claim,
                "method": r.method,
                "result": r.status,
                "seconds": round(r.seconds, 4),
                "details": r.details,
                "data": r.data,
            }
            for r in rows
        ],
        "summary": {
            "passed": sum(r.status == "PASS" for r in rows),
            "total": len(rows),
            "all_pass": all(r.status == "PASS" for r in rows),
            "seconds": round(sum(r.seconds for r in rows), 3),
        },
    }


def main(claims: Sequence[Claim], title: str, argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Command-line entry: print the table, optionally write JSON; exit code 0 iff all PASS."""
    parser = argparse.ArgumentParser(prog=prog, description=title)
    parser.add_argument("--json", metavar="PATH", help="also write the table and summary as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = parser.parse_args(argv)
    rows = run_claims(claims, stream=None if args.quiet else sys.stderr)
    print(format_table(rows, title))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(to_json(rows, title), fh, indent=2, default=str)
    return 0 if all(r.status == "PASS" for r in rows) else 1
