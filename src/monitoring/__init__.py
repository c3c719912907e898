"""Drift monitoring entry points: `make monitor` (monitor.py), `make simulate` (simulate.py), `make retrain-if-drift`
(retrain.py) and the API's /monitoring routes (api.py). The logic lives in `nbs_lib.drift`, `nbs_lib.publishing` and `nbs_lib.monitor` (notebooks/11_drift, 12_publishing, 13_monitor)."""
