"""`make example-data`: scikit-learn's bundled datasets written as CSVs under data/examples/ (no download).

Each has a spec in specs/examples/<name>.yaml: `make pipeline SPEC=specs/examples/wine.yaml DATA=data/examples/wine.csv`.
Feature columns keep scikit-learn's names ('mean radius', 'od280/od315_of_diluted_wines', 'sepal length (cm)');
the target gets a name that says what it is.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd
from sklearn import datasets

from nbs_lib.config import UserInputError, get_settings
from src.spec import shown


def _diabetes() -> pd.DataFrame:
    """Regression: disease progression one year after baseline, from 10 baseline measurements in their own units."""
    return datasets.load_diabetes(as_frame=True, scaled=False).frame.rename(columns={"target": "progression"})


def _breast_cancer() -> pd.DataFrame:
    """Binary classification with the 0/1 labels most CSVs carry (0 = malignant, 1 = benign, as in scikit-learn)."""
    return datasets.load_breast_cancer(as_frame=True).frame.rename(columns={"target": "diagnosis"})


def _wine() -> pd.DataFrame:
    """Multiclass with integer labels 0, 1, 2 (the three cultivars), as scikit-learn gives them."""
    return datasets.load_wine(as_frame=True).frame.rename(columns={"target": "cultivar"})


def _iris() -> pd.DataFrame:
    """Multiclass with text labels: the species names, as the original file writes them (wine covers integer labels)."""
    bunch = datasets.load_iris(as_frame=True)
    frame = bunch.frame.rename(columns={"target": "species"})
    frame["species"] = bunch.target_names[bunch.target]
    return frame


EXAMPLES: dict[str, Callable[[], pd.DataFrame]] = {
    "diabetes": _diabetes, "breast_cancer": _breast_cancer, "wine": _wine, "iris": _iris,
}


def example_frame(name: str) -> pd.DataFrame:
    """One example dataset as a frame, its target last."""
    if name not in EXAMPLES:
        raise UserInputError(f"Unknown example {name!r}; the examples are: {', '.join(EXAMPLES)}.")
    return EXAMPLES[name]()


def write_example(name: str, folder: Path) -> Path:
    """Write one example dataset to `folder`/<name>.csv and return the path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.csv"
    example_frame(name).to_csv(path, index=False)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="", help="folder for the CSVs (default: <DATA_DIR>/examples)")
    parser.add_argument("names", nargs="*", help=f"which examples (default: all of {', '.join(EXAMPLES)})")
    args = parser.parse_args(argv)
    try:
        folder = Path(args.out) if args.out else get_settings().data_dir / "examples"
        for name in args.names or EXAMPLES:
            path = write_example(name, folder)
            print(f"wrote {shown(path)}: make pipeline SPEC=specs/examples/{name}.yaml DATA={shlex.quote(shown(path))}")
    except UserInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
