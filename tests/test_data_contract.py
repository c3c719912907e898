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
