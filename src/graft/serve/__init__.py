"""`graft serve RUN_DIR`: a prediction service on FastAPI + uvicorn (extra `serve`).

- `POST /predict`: images as multipart `file` parts (each answered, in order), or JSON
  `{"texts": [...]}`; answers the classes and probabilities as JSON. Requests are batched
  together (`batching.py`); past `--max-queue` waiting requests: 503 with Retry-After; past
  `--request-timeout`: 504. Bad requests get a 4xx `{"error": ...}`; the server keeps serving.
- `GET /`: a page where a person drops an image (or types a text) and sees the top classes as bars.
- `GET /health` (alive: the model, its precision and engine), `GET /ready` (warmed, queue not full),
  `GET /metrics` (Prometheus).
Binds to 127.0.0.1 unless told otherwise; a network address needs `--token` or `--insecure`.
"""

from .app import create_app, serve
from .inputs import MAX_UPLOAD_BYTES

__all__ = ["MAX_UPLOAD_BYTES", "create_app", "serve"]
