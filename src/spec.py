"""`make spec DATA=path.csv TARGET=col [TASK= NAME= OUT= FORCE=1]`: draft a dataset spec from a CSV.

Kinds, ranges, levels, empty cells, id columns, the task and its metric are read from the data (see
notebooks/14_drafting.ipynb); comments in the YAML say what was guessed. Exit 0 with the spec written, 2 when the CSV,
the target or the output path is refused (one paragraph, no traceback).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from nbs_lib.config import UserInputError, find_project_dir
from nbs_lib.drafting import draft_spec_file, write_draft


def shown(path: Path) -> str:
    """`path` relative to the working folder when it lies below it, as a user would type it."""
    path = path.resolve()
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="", help="the CSV to draft from")
    parser.add_argument("--target", default="", help="the column to predict")
    parser.add_argument("--task", default="", help="classification or regression (default: guessed from the target)")
    parser.add_argument("--name", default="", help="spec and registry name (default: the file's stem)")
    parser.add_argument("--out", default="", help="where to write the spec (default: specs/<name>.yaml)")
    parser.add_argument("--force", action="store_true", help="replace an existing spec file")
    args = parser.parse_args(argv)
    try:
        draft = draft_spec_file(args.data, args.target, args.task, args.name)
        out = Path(args.out) if args.out else find_project_dir() / "specs" / f"{draft.spec.name}.yaml"
        written = write_draft(draft, out, args.force)
    except UserInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    spec = draft.spec
    what = f"{spec.task}, {len(spec.target_levels)} classes" if spec.task == "classification" else spec.task
    features = f"{len(spec.features)} feature{'s' if len(spec.features) != 1 else ''}"
    print(f"wrote {shown(written)} ({what}, {features}, metric {spec.primary_metric}); "
          "read the comments marked 'guess', add a description, then train:")
    print(f"  make pipeline SPEC={shlex.quote(shown(written))} DATA={shlex.quote(args.data)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
