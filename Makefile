# Notebook-first ML: `make help` lists the targets. Variables: DATA=path.csv PROFILE=smoke|full SPEC=specs/x.yaml TARGET=col
.DEFAULT_GOAL := help
SHELL := /bin/bash

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DATA ?=
PROFILE ?=
SPEC ?=
RUN_ENV := DATA="$(DATA)" PROFILE="$(PROFILE)" SPEC="$(SPEC)"
# Processes that only load the champion: no MLflow loader may deserialise a model (pickle runs code); the champion is
# loaded by skops after its MLmodel is checked (nbs_lib.champion). Not the pipeline: MLflow reloads what it logs.
NO_PICKLE := MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false
COMPOSE ?= $(shell docker compose version >/dev/null 2>&1 && echo "docker compose" || echo docker-compose)
TUNERS ?= 1
# Where `make jupyter` and `make mlflow-ui` listen: this machine only, unless BIND_ADDRESS=0.0.0.0 is asked for.
BIND_ADDRESS ?= 127.0.0.1
# JupyterLab refuses to start as root without --allow-root (a root shell in a container, say).
USER_ID ?= $(shell id -u)
MAKE_SECRET := python3 -c 'import secrets; print(secrets.token_urlsafe(24))'

help: ## show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): requirements.txt requirements_dev.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements_dev.txt
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (project)" >/dev/null
	@touch $(STAMP)

install: $(STAMP) ## create .venv with requirements_dev.txt and nbs_lib installed (done by the other targets when missing)

pipeline: $(STAMP) ## run the notebooks in order with papermill and register the best model [DATA= PROFILE=smoke|full SPEC=]
	$(RUN_ENV) $(PY) -m src.pipeline

test: $(STAMP) ## run every test: nbdev notebook tests, pipeline, gate, model behaviour, data contract
	$(PY) -m pytest -q

validate: $(STAMP) ## check a CSV against the spec's data contract [DATA=path SPEC= POLICY=training|current]
	$(RUN_ENV) $(PY) -m src.validate $(if $(POLICY),--policy $(POLICY))

spec: $(STAMP) ## draft specs/<name>.yaml from a CSV: kinds, ranges, levels, ids, task, metric, guesses commented [DATA= TARGET= TASK= NAME= OUT= FORCE=1]
	$(PY) -m src.spec --data "$(DATA)" --target "$(TARGET)" --task "$(TASK)" --name "$(NAME)" --out "$(OUT)" $(if $(filter 1 yes true,$(FORCE)),--force)

example-data: $(STAMP) ## write scikit-learn's diabetes, breast_cancer, wine and iris to data/examples/*.csv (specs in specs/examples/)
	$(PY) -m src.examples

export: $(STAMP) ## regenerate nbs_lib/ from the notebooks and strip notebook outputs
	$(VENV)/bin/nbdev-export && $(VENV)/bin/nbdev-clean

lint: $(STAMP) ## ruff over src/, tests/, docker/ and the generated library
	$(VENV)/bin/ruff check src tests nbs_lib docker

bench-pipeline: $(STAMP) ## papermill run vs the same notebook code run in one plain Python process [DATA= PROFILE=]
	$(RUN_ENV) $(PY) -m src.bench.pipeline

bench-model: $(STAMP) ## 5-fold CV on all of DATA: the champion vs LightGBM defaults, gain with a 95% CI (run the pipeline first) [DATA= PROFILE= REPEATS=3]
	$(RUN_ENV) $(PY) -m src.bench.model $(if $(REPEATS),--repeats $(REPEATS))

bench-validate: $(STAMP) ## time and peak memory to validate 1M generated rows
	$(PY) -m src.bench.validate

monitor: $(STAMP) ## drift report of CURRENT vs the champion's reference; exit 1 on drift [CURRENT=csv|log.db REFERENCE= SINCE= UNTIL= SPEC=]
	$(NO_PICKLE) SPEC="$(SPEC)" $(PY) -m src.monitoring.monitor --current "$(CURRENT)" --reference "$(REFERENCE)" --since "$(SINCE)" --until "$(UNTIL)"

retrain-if-drift: $(STAMP) ## run the monitor and, on drift, the pipeline (its gate decides) [CURRENT= REFERENCE= DATA= PROFILE=]
	$(RUN_ENV) $(PY) -m src.monitoring.retrain --current "$(CURRENT)" --reference "$(REFERENCE)" --since "$(SINCE)" --until "$(UNTIL)"

simulate: $(STAMP) ## replay rows against the local API [DATA=csv RATE=20 ROWS=500 BATCH=1 SHIFT=Weight=1.5 MIX="MTRANS=Walking:1" API_URL=]
	SPEC="$(SPEC)" $(PY) -m src.monitoring.simulate --data "$(DATA)" --shift "$(SHIFT)" --mix "$(MIX)" $(if $(RATE),--rate $(RATE)) \
		$(if $(ROWS),--rows $(ROWS)) $(if $(BATCH),--batch $(BATCH)) $(if $(API_URL),--url "$(API_URL)")

bench-monitor: $(STAMP) ## drift check of 1M generated rows (sampled) vs plain Evidently on 100k: time, peak memory, verdicts
	$(PY) -m src.bench.monitor

serve: $(STAMP) ## the prediction API on :8000 over the local store's champion [SPEC= API_KEY= WORKERS=1 MODEL_POLL_SECONDS=]
	$(NO_PICKLE) SPEC="$(SPEC)" $(PY) -m src.serving --host 0.0.0.0 --port 8000 --workers $(or $(WORKERS),1)

bench-serve: $(STAMP) ## this API vs mlflow models serve vs in-process: latency, req/s, batch rows/s, errors (trains a champion if none)
	SPEC="$(SPEC)" $(PY) -m src.bench.serve

bench-robustness: $(STAMP) ## the API over HTTP (2 workers): schemathesis, a hostile set with /health p99, 10k requests across 5 reloads; exit 1 on a 5xx or lost request [SPEC= WORKERS=2]
	SPEC="$(SPEC)" $(PY) -m src.bench.robustness --workers $(or $(WORKERS),2)

mlflow-ui: $(STAMP) ## MLflow UI on :5000 over the local store [BIND_ADDRESS=127.0.0.1]
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///models/mlflow.db --host $(BIND_ADDRESS) --port 5000

jupyter: $(STAMP) ## JupyterLab on :8888, as root too [BIND_ADDRESS=127.0.0.1]
	$(VENV)/bin/jupyter lab --ip $(BIND_ADDRESS) --port 8888 --no-browser$(if $(filter 0,$(USER_ID)), --allow-root) notebooks

up: ## build and start the docker-compose stack (needs .env: cp .env.example .env, set the secrets; refuses change-me ones) [TUNERS=n]
	@test -f .env || { echo "error: no .env. Copy .env.example to .env and set POSTGRES_PASSWORD, JUPYTER_TOKEN, API_KEY, MLFLOW_PASSWORD and MLFLOW_SECRET_KEY."; exit 2; }
	@bad=$$(grep -oE '^(POSTGRES_PASSWORD|JUPYTER_TOKEN|API_KEY|MLFLOW_PASSWORD|MLFLOW_SECRET_KEY)="?change-me' .env | cut -d= -f1 | paste -sd' ' -); \
	test -z "$$bad" || { echo "error: .env still has the .env.example placeholder (change-me...) for $$bad: set each to a random URL-safe string, e.g. $(MAKE_SECRET)" >&2; exit 2; }
	@key=$$(sed -nE 's/^API_KEY="?([^"]*)"?$$/\1/p' .env | tail -n 1); \
	test $${#key} -ge 16 || { echo "error: API_KEY in .env has $${#key} characters, fewer than 16: set it to a random URL-safe string, e.g. $(MAKE_SECRET)" >&2; exit 2; }
	$(COMPOSE) up -d --build --scale tuner=$(TUNERS)
	$(COMPOSE) ps

down: ## stop the stack and remove its containers (volumes kept; `docker-compose down -v` drops them too)
	$(COMPOSE) down --remove-orphans

test-compose: ## build the images, run the whole stack end to end with a real engine, tear it down (prints timings)
	bash docker/test-compose.sh

bench-tuners: ## time the shared Optuna study with 1 vs 3 tuner containers (real engine) [BENCH_TRIALS=30]
	bash docker/bench-tuners.sh

vendor: $(STAMP) ## re-fetch the /docs and /redoc assets (npm pack) into src/serving/static/vendor with a sha256 manifest [SWAGGER_UI=version REDOC=version]
	$(PY) -m src.serving.docs $(if $(SWAGGER_UI),--swagger-ui $(SWAGGER_UI)) $(if $(REDOC),--redoc $(REDOC))

clean: ## remove run products (models/, reports/, data/processed) but keep data/raw
	rm -rf models/mlflow.db models/optuna.db models/artifacts reports/notebooks reports/validation reports/monitoring

.PHONY: help install pipeline test validate spec example-data export lint bench-pipeline bench-model bench-validate mlflow-ui jupyter clean up down test-compose bench-tuners monitor retrain-if-drift simulate bench-monitor serve bench-serve bench-robustness vendor
