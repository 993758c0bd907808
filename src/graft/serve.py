"""`graft serve RUN_DIR`: a small prediction service on FastAPI + uvicorn (extra `serve`).

- `POST /predict`: an image as the multipart field `file`, or JSON `{"texts": [...]}`; answers the
  classes and probabilities as JSON. Oversized uploads (413), non-images (415) and inputs of the
  wrong modality (400) get a 4xx with a message; the server keeps serving.
- `GET /`: a page where a person drops an image (or types a text) and sees the top classes as bars.
- `GET /health`: the model's classes and modality.
Binds to 127.0.0.1 unless told otherwise: a model is not published to the network by accident.
"""

# No `from __future__ import annotations` here: FastAPI reads the endpoints' annotations at
# runtime, and `Request` is imported inside create_app (the extra is optional).
import html
import json
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import ConfigError, DataError
from .options import ServeOptions

MAX_UPLOAD_BYTES = 20 * 1024 * 1024
MAX_TEXTS = 256
HOW_TO_SEND = {"file": 'an image as the multipart field "file"', "texts": 'JSON {"texts": ["a text", ...]}'}
TOP_K = 5


def _require_serve() -> Any:
    try:
        import fastapi
        import python_multipart  # noqa: F401 - FastAPI needs it for form uploads
        import uvicorn  # noqa: F401
    except ImportError:
        raise ConfigError("graft serve needs the `serve` extra: pip install 'graft-learn[serve]'") from None
    return fastapi


def _answer(model: Any, outputs: Any) -> dict[str, Any]:
    """One input's answer, as the model's task gives it: the top classes (single-label); the
    labels that apply and the top probabilities (multi-label); the predicted numbers (regression)."""
    return model.task.answer(outputs, model.classes_, TOP_K)


def _text_answers(model: Any, texts: Any) -> tuple[int, dict[str, Any]]:
    """(HTTP status, JSON answer) for a request's texts: a list of texts or sentence pairs."""
    if not isinstance(texts, list) or not texts or not all(model.modality.accepts(t) for t in texts):
        expected = 'a non-empty list of strings (or of ["first", "second"] sentence pairs)'
        return 400, {"error": f'send {{"texts": ["a text", ...]}}: {expected}'}
    if len(texts) > MAX_TEXTS:
        return 413, {"error": f"{len(texts)} texts in one request; at most {MAX_TEXTS}"}
    outputs = model.outputs(texts)
    rows = [{"input": t, **_answer(model, o)} for t, o in zip(texts, outputs, strict=True)]
    return 200, {"predictions": rows}


def create_app(
    run_dir: str | Path, max_upload_bytes: int = MAX_UPLOAD_BYTES, precision: str = "auto"
) -> Any:
    """The FastAPI app for one run folder (the model is loaded once, here, at `precision`)."""
    fastapi = _require_serve()
    from fastapi import Request
    from fastapi.responses import HTMLResponse, JSONResponse

    from .predict.predictor import load

    model = load(run_dir, precision=precision)
    modality = model.modality.name
    takes = model.modality.request_field  # "file" (an uploaded image) or "texts" (a JSON list)
    how = HOW_TO_SEND[takes]
    app = fastapi.FastAPI(title="graft", docs_url=None, redoc_url=None)
    app.state.model = model

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"modality": modality, "classes": list(model.classes_), "precision": model.precision.name}

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return _page(model, takes, Path(run_dir).name)

    @app.post("/predict")
    async def predict(request: Request) -> Any:
        size = int(request.headers.get("content-length") or 0)
        if size > max_upload_bytes:
            return error(413, f"upload of {size} bytes is over the {max_upload_bytes}-byte limit")
        kind = request.headers.get("content-type", "")
        if kind.startswith("application/json"):
            try:
                body = json.loads(await request.body())
            except json.JSONDecodeError as err:
                return error(400, f"the JSON body does not parse ({err.msg})")
            texts = body.get("texts") if isinstance(body, dict) else None
            if takes != "texts":
                return error(400, f"this is an {modality} model: send {how}")
            status, answer = _text_answers(model, texts)
            return answer if status == 200 else JSONResponse(answer, status_code=status)
        if not kind.startswith("multipart/form-data"):
            return error(415, 'send an image as the multipart field "file", or JSON {"texts": [...]}')
        if takes != "file":
            return error(400, f"this is a {modality} model: send {how}")
        status, answer = await _upload_answers(request, model, max_upload_bytes)
        return answer if status == 200 else JSONResponse(answer, status_code=status)

    return app


def _page(model: Any, takes: str, title: str) -> str:
    """The upload page, filled in for this model."""
    page = resources.files("graft").joinpath("serve_page.html").read_text(encoding="utf-8")
    classes = ", ".join(html.escape(name) for name in model.classes_)
    return (
        page.replace("__TAKES__", takes)
        .replace("__TITLE__", html.escape(title))
        .replace("__NCLASSES__", str(len(model.classes_)))
        .replace("__CLASSES__", classes)
    )


async def _upload_answers(request: Any, model: Any, max_upload_bytes: int) -> tuple[int, Any]:
    """(200, the answer) for an image uploaded as the multipart field "file", else (status, error)."""
    form = await request.form()
    upload = form.get("file")
    if upload is None or not hasattr(upload, "read"):
        return 400, {"error": 'no multipart field "file" with an image'}
    data = await upload.read(max_upload_bytes + 1)
    if len(data) > max_upload_bytes:
        return 413, {"error": f"the image is over the {max_upload_bytes}-byte limit"}
    try:
        given = model.modality.read_upload(data, upload.filename or "the upload")
    except DataError as err:
        return 415, {"error": str(err)}
    outputs = model.outputs([given])[0]
    return 200, {"predictions": [{"input": upload.filename, **_answer(model, outputs)}]}


def serve(
    run_dir: str | Path,
    host: str = ServeOptions.host,
    port: int = ServeOptions.port,
    precision: str = ServeOptions.precision,
    log: Any = print,
) -> None:
    app = create_app(run_dir, precision=precision)
    used = app.state.model.precision
    log(f"serving {run_dir} on http://{host}:{port}/ at {used.name} ({used.reason}); Ctrl-C stops")
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level="warning")
