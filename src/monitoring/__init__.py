"""Drift monitoring entry points: `make monitor` (monitor.py), `make simulate` (simulate.py), `make retrain-if-drift`
(retrain.py) and the API's /monitoring routes (api.py). The logic lives in `nbs_lib.drift` (notebooks/11_drift.ipynb)."""
