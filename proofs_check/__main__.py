"""``python -m proofs_check [--json PATH]``: Theorem 1 (T1.*), the Hessian claims (H.*), the step
claims (K.*), the context-adaptive transformer (A.1) and the predicted step law (S.1), one table.

Exit code 0 only if every claim passes.
"""
import sys

from . import all_claims
from ._report import main

TITLE = ("proofs_check: Theorem 1 and the step claims (docs/math.md §3), the Hessian bounds (docs/math.md §2), "
         "the softmax-sink transformer (docs/math.md §5.6), the predicted step law")

if __name__ == "__main__":
    sys.exit(main(all_claims(), TITLE, prog="python -m proofs_check"))
