# The API and the workers (same image, different command). See docker-compose.yml.
FROM python:3.11-slim
WORKDIR /app
ENV HF_HUB_OFFLINE=1 PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
# libgomp1: LightGBM's OpenMP runtime (the evaluation's learned ranker).
RUN apt-get update && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*
COPY setup.cfg pyproject.toml README.md ./
COPY plugin plugin
COPY workers workers
COPY mappings mappings
COPY data data
RUN pip install -e . gunicorn
# The ONNX model backend's files, exported once at build time (no torch at run time).
ENV ES_INTEREST_MODEL_CACHE_DIR=/app/.onnx
RUN es-interest --quiet model export --no-check
EXPOSE 8000
COPY gunicorn.conf.py ./
CMD ["gunicorn", "--config", "gunicorn.conf.py", "--bind", "0.0.0.0:8000", "plugin.wsgi:app"]
