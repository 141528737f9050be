"""Celery workers: embed documents, ingest events, fold them into interest vectors."""
