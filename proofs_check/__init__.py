"""proofs_check: programs that check the mathematics of docs/math.md, and can fail.

* ``python -m proofs_check.first_order`` — Theorem 1 (docs/math.md §3), rows T1.1–T1.5;
* ``python -m proofs_check.hessian`` — derivatives and Hessian bounds (docs/math.md §2), rows H.1–H.4;
* ``python -m proofs_check.steps`` — step schedules and a second-order estimator (docs/math.md §3), K.1–K.2;
* ``python -m proofs_check.adaptive`` — the context-adaptive MD step of a softmax-sink layer 2
  (docs/math.md §5.6), A.1;
* ``python -m proofs_check.step_law`` — the predicted step law at n → 0 (docs/math.md, "The predicted
  step law"), S.1;
* ``python -m proofs_check`` — all of them, one table; ``--json PATH`` writes it as JSON.

Each claim is a check function taking its candidate formula(s) as arguments (defaults: the
docs/math.md formulas) and returning a :class:`~proofs_check._report.CheckResult`; passing a wrong
candidate makes it FAIL. Submodules are imported lazily so that ``python -m
proofs_check.first_order`` does not import itself twice.
"""
from ._report import CheckResult, Claim, Row, run_claims

__all__ = ["CheckResult", "Claim", "Row", "run_claims", "all_claims"]


def all_claims() -> list[Claim]:
    """Every claim of the modules, Theorem 1 first."""
    from . import adaptive, first_order, hessian, step_law, steps

    return (list(first_order.CLAIMS) + list(hessian.CLAIMS) + list(steps.CLAIMS) + list(adaptive.CLAIMS)
            + list(step_law.CLAIMS))
