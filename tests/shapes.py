"""Dataset specs of the shapes a user brings that obesity is not: built here so tests can write them as YAML and
generate their data with the spec's own synthetic generator."""

from __future__ import annotations

from pathlib import Path

import yaml


def numeric_regression() -> dict:
    "All numeric, no id column, odd column names, a nullable feature, a derived feature over backticked names."
    return {
        "name": "readings", "task": "regression", "target": "yield", "model_name": "readings", "primary_metric": "rmse",
        "min_rows": 100,
        "features": {"pH.level": {"kind": "numeric", "min": 0, "max": 14, "nullable": 0.2, "description": "acidity"},
                     "2nd_reading": {"kind": "numeric", "min": -50, "max": 50},
                     "cap-diameter": {"kind": "numeric", "min": 0, "max": 30, "unit": "cm"},
                     "stem width": {"kind": "numeric", "min": 0, "max": 5}},
        "derived_features": {"cap area": "`cap-diameter` ** 2"},
        "synthetic": {"rows": 600, "seed": 3,
                      "columns": {"pH.level": {"dist": "normal", "mean": 7, "std": 1.5, "null_share": 0.1},
                                  "2nd_reading": {"dist": "normal", "mean": 0, "std": 15}},
                      "target": {"expression": "3 * `cap-diameter` - 2 * `2nd_reading` + 10 * `stem width`", "noise_std": 5}},
    }


def categorical_binary() -> dict:
    "All categorical, a 95/5 binary target written as integers, two id columns, a 200-level feature, a nullable one."
    stores = [f"store-{i:03d}" for i in range(200)]
    return {
        "name": "churn", "task": "classification", "target": "churned", "target_levels": [0, 1], "model_name": "churn",
        "primary_metric": "balanced_accuracy", "id_columns": ["customer_id", "account"], "min_rows": 100,
        "features": {"plan": {"kind": "categorical", "levels": ["basic", "plus", "pro"]},
                     "contract": {"kind": "categorical", "levels": ["monthly", "yearly"], "nullable": True},
                     "store": {"kind": "categorical", "levels": stores},
                     "support calls": {"kind": "categorical", "levels": ["0", "1", "2", "3+"]}},
        "synthetic": {"rows": 1200, "seed": 5,
                      "columns": {"contract": {"null_share": 0.1}},
                      "target": {"expression": "2 * (`support calls` == '3+') + (plan == 'basic') + 1.5 * (contract == 'monthly')",
                                 "noise_std": 0.5, "shares": [0.95, 0.05]}},
    }


def wide_multiclass_small(features: int = 100) -> dict:
    "A wide (100 numeric features) and small (150 rows) table, multiclass with integer-like labels 3..8."
    names = [f"x{i:03d}" for i in range(features)]
    return {
        "name": "wide", "task": "classification", "target": "quality", "target_levels": ["3", "4", "5", "6", "7", "8"],
        "model_name": "wide", "primary_metric": "accuracy", "min_rows": 60, "holdout_fraction": 0.2,
        "features": {n: {"kind": "numeric", "min": -10, "max": 10} for n in names},
        "synthetic": {"rows": 150, "seed": 9, "columns": {n: {"dist": "normal", "mean": 0, "std": 1} for n in names},
                      "target": {"expression": "x000 + x001 - x002", "noise_std": 0.3, "shares": [0.1, 0.2, 0.3, 0.2, 0.1, 0.1]}},
    }


SHAPES = {"numeric_regression": numeric_regression, "categorical_binary": categorical_binary,
          "wide_multiclass_small": wide_multiclass_small}


def write_spec(spec: dict, folder: Path) -> Path:
    "The spec as YAML in `folder`, as a user would save it."
    path = Path(folder) / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path
