"""``python -m proofs_check [--json PATH]``: Theorem 1 (T1.*) and the Hessian claims (H.*), one table.

Exit code 0 only if every claim passes.
"""
import sys

from . import all_claims
from ._report import main

TITLE = "proofs_check: Theorem 1 (MATH.md §3) and the Hessian bounds (MATH.md §2)"

if __name__ == "__main__":
    sys.exit(main(all_claims(), TITLE, prog="python -m proofs_check"))
