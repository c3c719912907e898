"""The Great Expectations data contract: a corruption matrix built from a valid generated dataset.

Each case asserts the exact failure reported (expectation and column, or the not-a-table reason), the exit code of
`make validate`, and that a pipeline run on the file leaves the champion, data/raw and reports/ as they were."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import PROJECT_DIR, REAL_CURRENT, REAL_TRAIN, needs_real_data
from test_pipeline import project_state

from nbs_lib.config import load_spec
from nbs_lib.data import generate_synthetic
from nbs_lib.validation import validate_file

SPEC = load_spec("obesity", PROJECT_DIR)


def valid_frame() -> pd.DataFrame:
    return generate_synthetic(SPEC, rows=500, seed=5)


def _text_in_numeric(df):
    df = df.astype({"Age": object})
    df.loc[[3, 10, 20], "Age"] = "twenty"
    return df


def _mostly_null(df):
    df = df.copy()
    df.loc[df.index[: int(len(df) * 0.8)], "FAF"] = np.nan
    return df


def _set(df, column, rows, value):
    df = df.copy()
    df.loc[rows, column] = value
    return df


# case name -> (how to write the file, expected (expectation, column, unexpected rows) or not-a-table message)
TABLE_CASES = {
    "missing column": (lambda p: valid_frame().drop(columns="Height").to_csv(p, index=False), ("expect_column_to_exist", "Height", None)),
    "renamed column": (lambda p: valid_frame().rename(columns={"Weight": "weight_kg"}).to_csv(p, index=False), ("expect_column_to_exist", "Weight", None)),
    "text in a numeric column": (lambda p: _text_in_numeric(valid_frame()).to_csv(p, index=False), ("expect_column_values_to_be_in_type_list", "Age", 3)),
    "negative height": (lambda p: _set(valid_frame(), "Height", [1, 2, 3, 4, 5], -1.65).to_csv(p, index=False), ("expect_column_values_to_be_between", "Height", 5)),
    "unseen category": (lambda p: _set(valid_frame(), "MTRANS", [0, 7, 9, 11], "Teleport").to_csv(p, index=False), ("expect_column_values_to_be_in_set", "MTRANS", 4)),
    "mostly-null column": (lambda p: _mostly_null(valid_frame()).to_csv(p, index=False), ("expect_column_values_to_not_be_null", "FAF", 400)),
}
NOT_A_TABLE = {
    "empty file": (lambda p: p.write_bytes(b""), "is empty"),
    "header only": (lambda p: p.write_text(",".join(valid_frame().columns) + "\n"), "has a header but no data rows"),
    "wrong delimiter": (lambda p: valid_frame().to_csv(p, index=False, sep=";"), "uses semicolons as the delimiter"),
    "garbage bytes": (lambda p: p.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()), "binary data"),
    "non-UTF-8": (lambda p: p.write_bytes(valid_frame().head(50).to_csv(index=False).replace("Male", "Mäle").encode("latin-1")), "is not UTF-8 text"),
}


def make_validate(path: Path, env: dict[str, str], policy: str = "") -> subprocess.CompletedProcess:
    args = ["make", "-s", "validate", f"DATA={path}"] + ([f"POLICY={policy}"] if policy else [])
    return subprocess.run(args, cwd=PROJECT_DIR, env={**os.environ, **env}, capture_output=True, text=True, timeout=300)


def validate_in_process(path: Path, env: dict[str, str], monkeypatch, capsys) -> tuple[int, str, str]:
    """What `make validate` runs (src.validate), in this process: (exit code, stdout, stderr). The matrix below uses
    it; `make validate` itself is run by the tests after the matrix."""
    from src.validate import main

    for k, v in {**env, "DATA": str(path)}.items():
        monkeypatch.setenv(k, v)
    capsys.readouterr()
    code = main([])
    out = capsys.readouterr()
    return code, out.out, out.err


def run_pipeline_in_process(path: Path, env: dict[str, str], monkeypatch, capsys) -> tuple[int, str]:
    from src.pipeline import main

    for k, v in {**env, "DATA": str(path)}.items():
        monkeypatch.setenv(k, v)
    code = main([])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("case", list(TABLE_CASES))
def test_contract_violation_is_reported_exactly_and_changes_nothing(case, trained_project, tmp_path, monkeypatch, capsys):
    write, (expectation, column, rows) = TABLE_CASES[case]
    path = tmp_path / "data.csv"
    write(path)

    report = validate_file(path, SPEC)
    assert [(f.expectation, f.column, f.unexpected_count) for f in report.errors] == [(expectation, column, rows)]

    code, out, err = validate_in_process(path, trained_project, monkeypatch, capsys)
    assert code == 1, out + err
    assert f"{expectation} failed on column {column!r}" in out or f"column {column!r} is missing ({expectation})" in out
    assert "What to do" in out
    assert (Path(trained_project["REPORTS_DIR"]) / "validation" / "index.html").exists()  # Data Docs

    before = project_state(trained_project)
    code, err = run_pipeline_in_process(path, trained_project, monkeypatch, capsys)
    assert code == 2
    assert "breaks the 'obesity' data contract" in err and repr(column) in err
    assert project_state(trained_project) == before


@pytest.mark.parametrize("case", list(NOT_A_TABLE))
def test_file_that_is_not_a_table_gets_a_clear_error_before_gx(case, trained_project, tmp_path, monkeypatch, capsys):
    write, message = NOT_A_TABLE[case]
    path = tmp_path / "data.csv"
    write(path)
    code, _, err = validate_in_process(path, trained_project, monkeypatch, capsys)
    assert code == 2  # not a table
    assert message in err and str(path) in err

    before = project_state(trained_project)
    code, err = run_pipeline_in_process(path, trained_project, monkeypatch, capsys)
    assert code == 2 and message in err
    assert project_state(trained_project) == before


@pytest.mark.parametrize("case", ["negative height", "wrong delimiter"])
def test_make_validate_exits_1_on_a_broken_contract_and_2_on_a_file_that_is_not_a_table(case, tmp_path, isolated):
    write, expected = TABLE_CASES[case] if case in TABLE_CASES else NOT_A_TABLE[case]
    path = tmp_path / "data.csv"
    write(path)
    proc = make_validate(path, isolated)
    assert "Traceback" not in proc.stdout + proc.stderr
    if case in TABLE_CASES:
        assert "validate] Error 1" in proc.stderr and f"failed on column {expected[1]!r}" in proc.stdout, proc.stdout + proc.stderr
    else:
        assert "validate] Error 2" in proc.stderr and expected in proc.stderr, proc.stderr


def test_valid_generated_file_passes(tmp_path, isolated):
    path = tmp_path / "valid.csv"
    valid_frame().to_csv(path, index=False)
    proc = make_validate(path, isolated)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "passes the 'obesity' data contract (training policy, 500 rows)" in proc.stdout


def test_current_policy_reports_unseen_category_as_a_finding(tmp_path, isolated):
    path = tmp_path / "current.csv"
    _set(valid_frame(), "MTRANS", [0, 7], "Teleport").drop(columns="NObeyesdad").to_csv(path, index=False)
    proc = make_validate(path, isolated, policy="current")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "finding: expect_column_values_to_be_in_set failed on column 'MTRANS': 2 rows" in proc.stdout


@needs_real_data
def test_real_training_file_passes_the_contract(tmp_path, isolated):
    proc = make_validate(REAL_TRAIN, isolated)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "20758 rows" in proc.stdout


@needs_real_data
def test_real_current_file_passes_under_the_current_policy():
    report = validate_file(REAL_CURRENT, SPEC, "current")
    assert report.ok, report.summary()


# ------------------------------------------- another shape of dataset: gaps, odd column names, integer labels ----

def odd_file(folder: Path, empty: dict[str, int], changes: dict[tuple[int, str], object] | None = None) -> Path:
    """200 generated rows of the odd spec (tests/odd_spec.py) with exactly `empty[column]` empty cells per column."""
    from odd_spec import odd_frame

    frame = odd_frame(200, seed=4)
    frame = frame.fillna({"cap-diameter": 5.0, "pH.level": 3.0}).astype({"2nd_reading": object})
    frame["2nd_reading"] = frame["2nd_reading"].where(frame["2nd_reading"].notna(), "low")
    for column, n in empty.items():
        frame.loc[frame.index[:n], column] = None
    for (row, column), value in (changes or {}).items():
        frame.loc[row, column] = value
    frame.to_csv(folder / "odd.csv", index=False)
    return folder / "odd.csv"


def test_nullable_features_may_be_empty_up_to_their_share_under_odd_column_names(tmp_path, isolated, monkeypatch, capsys):
    from odd_spec import write_spec

    # cap-diameter and 2nd_reading allow 30% (60 of 200 rows), pH.level any share (nullable: true)
    path = odd_file(tmp_path, {"cap-diameter": 60, "2nd_reading": 60, "pH.level": 200})
    code, out, err = validate_in_process(path, {**isolated, "SPEC": str(write_spec(tmp_path))}, monkeypatch, capsys)
    assert (code, err) == (0, "")
    assert out.splitlines()[0] == f"{path} passes the 'odd' data contract (training policy, 200 rows)"
    assert out.splitlines()[1].startswith("  Data Docs: ")   # no finding between them


def test_too_many_empty_cells_or_any_in_a_feature_that_is_not_nullable_break_the_contract(tmp_path, isolated, monkeypatch, capsys):
    from odd_spec import write_spec

    path = odd_file(tmp_path, {"cap-diameter": 61, "stem width": 1},
                    {(100, "cap-diameter"): 25.0, (101, "2nd_reading"): "huge", (102, "class"): "2"})
    code, out, err = validate_in_process(path, {**isolated, "SPEC": str(write_spec(tmp_path))}, monkeypatch, capsys)
    assert (code, err) == (1, "")
    assert out.splitlines()[1:6] == [
        "  - error: expect_column_values_to_not_be_null failed on column 'cap-diameter': 61 rows (30.50%); at most 30% of "
        "the values may be empty (the spec's nullable share)",
        "  - error: expect_column_values_to_be_between failed on column 'cap-diameter': 1 rows (0.72%), e.g. '25.0'; "
        "allowed range 0.0..20.0",
        "  - error: expect_column_values_to_not_be_null failed on column 'stem width': 1 rows (0.50%); values must not be empty",
        "  - error: expect_column_values_to_be_in_set failed on column '2nd_reading': 1 rows (0.50%), e.g. 'huge'; "
        "allowed values ['low', 'mid', 'high']",
        "  - error: expect_column_values_to_be_in_set failed on column 'class': 1 rows (0.50%), e.g. '2'; allowed values ['0', '1']"]
