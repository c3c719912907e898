# The MLflow tracking server: Postgres backend store, artifacts served by the server itself (--serve-artifacts)
# from a volume at /mlartifacts. Pins equal requirements.txt's; requirements_dev.txt (as constraints, less its
# `-r` line) pins the transitive versions.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN useradd --create-home --uid 1000 mlflow

COPY requirements_dev.txt /tmp/pins/
RUN grep -v "^-r" /tmp/pins/requirements_dev.txt > /tmp/pins/constraints.txt \
    && pip install mlflow==3.17.2 psycopg2-binary==2.9.13 -c /tmp/pins/constraints.txt && rm -rf /tmp/pins
RUN mkdir /mlartifacts && chown mlflow:mlflow /mlartifacts

USER mlflow
WORKDIR /home/mlflow
# MLFLOW_BACKEND_STORE_URI: postgresql+psycopg2://user:password@host:5432/db (set by docker-compose.yaml from .env;
# the driver is explicit because SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3).
ENV MLFLOW_WORKERS=2
EXPOSE 5000
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=5 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:5000/health', timeout=4)"]
# The placeholder password (.env.example's change-me...) is refused with one line before the server starts.
CMD ["sh", "-c", "case \"$MLFLOW_BACKEND_STORE_URI\" in *://*:change-me*@*) echo \"error: POSTGRES_PASSWORD is still the .env.example placeholder (change-me...): set POSTGRES_PASSWORD in .env to a random URL-safe string, e.g. python3 -c 'import secrets; print(secrets.token_urlsafe(24))'\" >&2; exit 2;; esac; exec mlflow server --backend-store-uri \"$MLFLOW_BACKEND_STORE_URI\" --serve-artifacts --artifacts-destination /mlartifacts --host 0.0.0.0 --port 5000 --workers \"$MLFLOW_WORKERS\""]
