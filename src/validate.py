"""`make validate DATA=path [SPEC=... POLICY=training|current]`: check a CSV against the spec's data contract.

Exit 0 when the file passes (findings may remain under the current policy), 1 when it breaks the contract,
2 when it is not a readable table or the spec is unknown. Data Docs HTML goes to reports/validation/.
"""

from __future__ import annotations

import argparse
import sys

from nbs_lib.config import UserInputError, get_settings, load_spec
from nbs_lib.validation import validate_file


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="", help="CSV to validate (default: DATA)")
    parser.add_argument("--spec", default="", help="dataset spec (default: SPEC or specs/obesity.yaml)")
    parser.add_argument("--policy", default="training", choices=["training", "current"])
    args = parser.parse_args(argv)
    try:
        settings = get_settings(spec=args.spec, data=args.data)
        if not settings.data:
            raise UserInputError("No file to validate: pass DATA=<path to a CSV>, e.g. `make validate DATA=data/new.csv`.")
        spec = load_spec(settings.spec, settings.project_dir)
        report = validate_file(settings.data, spec, args.policy, docs_dir=settings.reports_dir / "validation")
    except UserInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(report.summary(settings.data))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
