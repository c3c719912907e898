# The research image: JupyterLab on :8888 with requirements_dev.txt and nbs_lib installed editable. The jupyter
# service mounts the repo over /app (edit notebooks on the host); pipeline, tuner and scheduler run the copy baked in.
# Token: JUPYTER_TOKEN from the environment (.env). Build: docker build -f dev.Dockerfile -t nbs-mlops-dev .
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

# Same first layers as the serving Dockerfile (shared in the build cache), then the research stack on top.
COPY requirements.txt requirements_dev.txt ./
RUN grep -v "^-r" requirements_dev.txt > constraints.txt && pip install -r requirements.txt -c constraints.txt
RUN pip install -r requirements_dev.txt

COPY --chown=app:app . .
RUN pip install --no-deps -e . && mkdir -p data models reports && chown -R app:app /app

USER app
# no git in the image: keep GitPython (MLflow's run tags) quiet about it
ENV GIT_PYTHON_REFRESH=quiet
EXPOSE 8888
ENTRYPOINT ["sh", "/app/docker/entrypoint.sh"]
# allow_root only matters when DEV_UID=0 is asked for in .env; the image's own user is app.
CMD ["jupyter", "lab", "--ip=0.0.0.0", "--port=8888", "--no-browser", "--ServerApp.root_dir=/app", "--ServerApp.allow_root=True"]
