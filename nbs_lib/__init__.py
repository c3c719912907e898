"""Notebook-first research-to-production ML: notebooks -> nbs_lib -> batch pipeline -> MLflow champion -> API and drift monitoring

Modules:

- `nbs_lib.config`: One settings object and the dataset spec: every path, URI and schema the project uses comes from here. One module of ~500 lines on purpose: settings (with the API's and the monitor's sections), spec and the checks of the stores they name validate each other, and every process (API, notebooks, command-line tools) imports them first, as one module with no heavy dependency.
- `nbs_lib.eda`: What the raw data looks like before any model sees it: the target's balance (or spread), each feature's distribution and missing share, categories the spec does not know, correlations, and which features go with the target. The plots are kept in the executed copy under `reports/notebooks/`; the last section states the findings in words, computed from this run's data, so they hold for whichever dataset the spec describes.
- `nbs_lib.predictor`: The registered sklearn Pipeline compiled to a few numpy operations and a direct estimator call: the same outputs, bit for bit, in microseconds instead of milliseconds per record. About 500 lines on purpose: each compiled step (expressions, imputers, scalers, one-hot, forests, LightGBM, linear models) must match its sklearn original bit for bit, and they are checked together against the pipeline."""

__version__ = "0.0.1"
