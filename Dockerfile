# The serving image: the FastAPI app (src/serving) on the MLflow champion. Runtime libraries from requirements.txt
# only: no papermill, JupyterLab or nbdev. Build: docker build -t nbs-mlops-api .   Run: see docker-compose.yaml (api).
# PYTHON_IMAGE: the base image; pin it by digest in .env for production (see .env.example).
ARG PYTHON_IMAGE=python:3.11-slim
FROM ${PYTHON_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
# libgomp1: OpenMP, which LightGBM loads (the slim image lacks it)
RUN apt-get update && apt-get install -y --no-install-recommends libgomp1 && rm -rf /var/lib/apt/lists/*
RUN useradd --create-home --uid 1000 app
WORKDIR /app

# Dependencies before code, so a code change rebuilds only the last layers. requirements_dev.txt, less its
# `-r requirements.txt` line (pip would install a nested -r of a constraints file), is used as constraints only: it
# pins the tested versions of transitive dependencies and installs nothing requirements.txt does not need.
# (dev.Dockerfile starts with the same lines, so both images share these layers.)
COPY requirements.txt requirements_dev.txt ./
RUN grep -v "^-r" requirements_dev.txt > constraints.txt && pip install -r requirements.txt -c constraints.txt

COPY pyproject.toml ./
COPY nbs_lib nbs_lib
COPY src src
RUN pip install --no-deps . && rm -rf build nbs_lib.egg-info
COPY specs specs
RUN mkdir -p data/predictions models reports && chown -R app:app data models reports

USER app
# WEB_CONCURRENCY: uvicorn worker processes; PORT: where the app listens inside the container.
# MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false: no MLflow loader deserialises a model; the champion is loaded by skops
# after its MLmodel is checked (nbs_lib.champion.load_sklearn_model), so a pickled model cannot run code here.
ENV PORT=8000 \
    WEB_CONCURRENCY=1 \
    MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PORT', '8000'), timeout=4)"]
# python -m src.serving checks the settings first (a placeholder API_KEY stops the container with one line, before
# uvicorn), and gives several workers one shared folder for their metrics and reload signal (src/serving/__main__.py).
CMD ["python", "-m", "src.serving", "--host", "0.0.0.0"]
