"""`make spec`: a spec drafted from a CSV loads, the CSV passes its data contract, and bad input is one paragraph.

The drafting rules themselves are tested cell by cell in notebooks/14_drafting.ipynb; here they are checked on whole
files through the command line a user runs (`python -m src.spec`, what `make spec` calls).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import PROJECT_DIR

from nbs_lib.config import load_spec
from nbs_lib.data import read_table
from nbs_lib.drafting import draft_spec_file
from nbs_lib.validation import validate_frame


def spec_cli(*args: str) -> subprocess.CompletedProcess:
    """`python -m src.spec` as `make spec` runs it, from the project folder."""
    return subprocess.run([sys.executable, "-m", "src.spec", *args], cwd=PROJECT_DIR, capture_output=True, text=True,
                          timeout=120)


def shaped_csv(path: Path, rows: int = 200, seed: int = 0) -> Path:
    """A CSV with the shapes drafting must read: an id, odd names, empty cells, whole-number codes, int labels."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "customer_id": np.arange(1000, 1000 + rows),
        "cap-diameter": rng.uniform(2.0, 9.0, rows).round(2),
        "stem width": np.where(rng.random(rows) < 0.1, np.nan, rng.uniform(-3.0, 3.0, rows).round(3)),
        "2nd_reading": rng.integers(0, 5, rows),
        "colour": rng.choice(["red", "green", "no", "yes"], rows),
        "grade": rng.choice(["A", "B", None], rows, p=[0.6, 0.35, 0.05]),
        "quality": rng.choice([3, 4, 5, 6, 7, 8], rows, p=[0.04, 0.16, 0.3, 0.3, 0.16, 0.04]),
    })
    frame.to_csv(path, index=False)
    return path


def test_drafted_spec_loads_and_its_own_csv_passes_the_data_contract(tmp_path):
    csv = shaped_csv(tmp_path / "My Shop-2024.csv")
    out = tmp_path / "specs" / "shop.yaml"
    proc = spec_cli("--data", str(csv), "--target", "quality", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {out}" in proc.stdout
    assert f"make pipeline SPEC={out} DATA='{csv}'" in proc.stdout  # the next command, quoted for the shell
    spec = load_spec(out, tmp_path)
    report = validate_frame(read_table(csv, spec), spec)
    assert report.ok, report.summary(str(csv))


def test_draft_guesses_kinds_ranges_levels_nulls_ids_task_and_metric(tmp_path):
    csv = shaped_csv(tmp_path / "My Shop-2024.csv")
    draft = draft_spec_file(csv, "quality")
    spec, f = draft.spec, draft.spec.features
    assert (spec.name, spec.model_name) == ("my_shop_2024", "my_shop_2024")  # from the file's stem, sanitised
    assert spec.id_columns == ["customer_id"]
    assert list(f) == ["cap-diameter", "stem width", "2nd_reading", "colour", "grade"]
    assert [f[c].kind for c in f] == ["numeric", "numeric", "numeric", "categorical", "categorical"]
    data = pd.read_csv(csv)
    lo, hi = data["cap-diameter"].min(), data["cap-diameter"].max()
    assert f["cap-diameter"].min == pytest.approx(lo - 0.1 * (hi - lo), abs=0.01)  # widened by 10% of the span
    assert f["cap-diameter"].max == pytest.approx(hi + 0.1 * (hi - lo), abs=0.01)
    assert f["2nd_reading"].min == 0  # non-negative data: the range does not cross 0
    assert "2nd_reading" in draft.text and "kept numeric" in draft.text  # whole numbers with few values: said so
    assert f["colour"].levels == ["green", "no", "red", "yes"]
    assert 0.1 < f["stem width"].max_null_share < 0.5 and 0 < f["grade"].max_null_share < 0.25
    assert (f["cap-diameter"].nullable, f["colour"].nullable) == (False, False)
    assert (spec.task, spec.target_levels) == ("classification", ["3", "4", "5", "6", "7", "8"])  # ints as the CSV writes them
    assert spec.primary_metric == "balanced_accuracy"  # the smallest class is about 4% of rows
    assert 10 <= spec.min_rows <= 200
    assert "'no'" in draft.text and "'yes'" in draft.text  # quoted, or YAML would read booleans
    assert yaml.safe_load(draft.text)["task"] == "classification"


def test_draft_guesses_regression_and_accuracy_from_the_target(tmp_path):
    csv = tmp_path / "prices.csv"
    rng = np.random.default_rng(1)
    pd.DataFrame({"size": rng.uniform(30, 200, 60).round(1), "price": rng.uniform(1e5, 9e5, 60).round(2),
                  "kind": rng.choice(["flat", "house"], 60)}).to_csv(csv, index=False)
    assert (draft_spec_file(csv, "price").spec.task, draft_spec_file(csv, "price").spec.primary_metric) == ("regression", "rmse")
    kind = draft_spec_file(csv, "kind").spec
    assert (kind.task, kind.target_levels, kind.primary_metric, kind.min_rows) == ("classification", ["flat", "house"], "accuracy", 30)


REFUSALS = {
    "missing target": ("ok.csv", "price", "has no column 'price' to use as TARGET (its columns are: 'a', 'y')"),
    "no target given": ("ok.csv", "", "No TARGET given: pass TARGET=<the column to predict>"),
    "empty file": ("empty.csv", "y", "is empty. Pass DATA=<path to a comma-separated UTF-8 CSV"),
    "header only": ("header.csv", "y", "has a header but no data rows"),
    "one target value": ("constant.csv", "y", "TARGET 'y' has a single value ('1') in all 20 rows"),
    "ambiguous target": ("score.csv", "y", "could be classes or a quantity, so the draft will not guess. Say which: "
                                           "TASK=classification"),
    "unknown task": ("ok.csv", "y", "TASK='clustering' is not a task"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_spec_refuses_bad_input_in_one_paragraph_with_exit_2(tmp_path, case):
    files = {"ok.csv": "a,y\n" + "".join(f"{i},{i % 2}\n" for i in range(20)),
             "empty.csv": "", "header.csv": "a,y\n",
             "constant.csv": "a,y\n" + "".join(f"{i},1\n" for i in range(20)),
             "score.csv": "a,y\n" + "".join(f"{i},{i % 15}\n" for i in range(60))}
    name, target, message = REFUSALS[case]
    (tmp_path / name).write_text(files[name])
    extra = ["--task", "clustering"] if case == "unknown task" else []
    proc = spec_cli("--data", str(tmp_path / name), "--target", target, "--out", str(tmp_path / "s.yaml"), *extra)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1  # one paragraph
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert not (tmp_path / "s.yaml").exists()


def test_spec_keeps_an_existing_file_unless_forced(tmp_path):
    csv = shaped_csv(tmp_path / "shop.csv", rows=40)
    out = tmp_path / "shop.yaml"
    out.write_text("name: mine\n")
    proc = spec_cli("--data", str(csv), "--target", "quality", "--out", str(out))
    assert proc.returncode == 2
    assert f"error: {out} already exists and was left as it is. Pass FORCE=1 (`--force`) to replace it" in proc.stderr
    assert out.read_text() == "name: mine\n"
    proc = spec_cli("--data", str(csv), "--target", "quality", "--out", str(out), "--force")
    assert proc.returncode == 0, proc.stderr
    assert load_spec(out, tmp_path).name == "shop"


def test_make_spec_passes_its_variables_to_the_command_line():
    proc = subprocess.run(["make", "-n", "spec", "DATA=my data.csv", "TARGET=mean radius", "TASK=regression", "NAME=x",
                           "FORCE=1"],
                          cwd=PROJECT_DIR, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert ('-m src.spec --data "my data.csv" --target "mean radius" --task "regression" --name "x" --out "" --force'
            in proc.stdout)
