"""gunicorn settings for the API (`gunicorn -c gunicorn.conf.py plugin.wsgi:app`; Docker's
image and compose use it). GUNICORN_CMD_ARGS overrides any of them.

Chosen by measurement (`make bench`, bench/search.py, 2 cores shared with the engine): at
concurrency 8, personalized linear_retriever, one process with 16 threads served 0.86 of the
requests/s of the same engine requests sent straight to the engine; 2 x 8 served 0.73 and
4 x 4 0.52 (more processes compete with the engine for the cores). The threads overlap the
waits on the engine and Redis; the Python work per request is a few milliseconds (ONNX query
encode ~2 ms). Give more processes more cores. Each process loads the model once (ONNX: about
270 MiB).
"""

import os

# Where `es-interest serve` listens (ES_INTEREST_API_HOST / _PORT); containers pass --bind.
bind = (f"{os.environ.get('ES_INTEREST_API_HOST') or '127.0.0.1'}:"
        f"{os.environ.get('ES_INTEREST_API_PORT') or '8000'}")
worker_class = "gthread"
workers = 1
threads = 16
# A personalized search answers in milliseconds; a stuck engine call is bounded by
# ES_INTEREST_SEARCH_TIMEOUT_S, well inside this.
timeout = 60
