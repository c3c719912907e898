# The MLflow tracking server: Postgres backend store, artifacts served by the server itself (--serve-artifacts)
# from a volume at /mlartifacts, behind MLflow's basic-auth app (Flask-WTF: its CSRF check; `mlflow[auth]` pins none). Pins equal requirements.txt's; requirements_dev.txt (as constraints, less its
# `-r` line) pins the transitive versions.
# PYTHON_IMAGE: the base image; pin it by digest in .env for production (see .env.example).
ARG PYTHON_IMAGE=python:3.11-slim
FROM ${PYTHON_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN useradd --create-home --uid 1000 mlflow

COPY requirements_dev.txt /tmp/pins/
RUN grep -v "^-r" /tmp/pins/requirements_dev.txt > /tmp/pins/constraints.txt \
    && pip install mlflow==3.17.2 psycopg2-binary==2.9.13 Flask-WTF==1.3.0 -c /tmp/pins/constraints.txt && rm -rf /tmp/pins
RUN mkdir /mlartifacts && chown mlflow:mlflow /mlartifacts

USER mlflow
WORKDIR /home/mlflow
# MLFLOW_BACKEND_STORE_URI: postgresql+psycopg2://user:password@host:5432/db (set by docker-compose.yaml from .env;
# the driver is explicit because SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3).
ENV MLFLOW_WORKERS=2
EXPOSE 5000
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=5 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:5000/health', timeout=4)"]
COPY docker/mlflow-entrypoint.sh /usr/local/bin/mlflow-entrypoint.sh
# The placeholder secrets (.env.example's change-me...) are refused with one line before the server starts.
CMD ["sh", "/usr/local/bin/mlflow-entrypoint.sh"]
