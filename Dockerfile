# The API and the workers (same image, different command). See docker-compose.yml.
FROM python:3.11-slim
WORKDIR /app
ENV HF_HUB_OFFLINE=1 PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
COPY setup.cfg pyproject.toml README.md ./
COPY plugin plugin
COPY workers workers
COPY mappings mappings
COPY data data
RUN pip install -e . gunicorn
EXPOSE 8000
CMD ["gunicorn", "--bind", "0.0.0.0:8000", "--workers", "2", "plugin.wsgi:app"]
