"""The FastAPI app of `graft serve` and the function that runs it on uvicorn.

Requests are answered on the event loop; the model runs in the batcher's one worker thread, on
batches gathered across requests (`batching.py`), so `/health` and `/ready` answer at once under
load. Every error is graft's one shape, `{"error": "..."}`, FastAPI's own (404, 405, a malformed
multipart body) included.
"""

# No `from __future__ import annotations` here: FastAPI reads the endpoints' annotations at
# runtime, and `Request` is imported inside create_app (the extra is optional).
import asyncio
import contextlib
import html
import logging
import time
import uuid
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..options import ServeOptions
from .auth import authorized, check_exposure, resolve_token
from .batching import Batcher, Overloaded, Slot, restore_torch_threads, torch_threads_for_worker
from .inputs import MAX_UPLOAD_BYTES, BadRequest, drain, read_request, takes_pairs
from .metrics import ServeMetrics

LOG = logging.getLogger("graft.serve")
TOP_K = 5
DEFAULT_MAX_BATCH = 32  # a plug-in modality without `serve_batch`
KNOWN_PATHS = frozenset({"/", "/predict", "/health", "/ready", "/metrics"})


def _require_serve() -> Any:
    try:
        import fastapi
        import prometheus_client  # noqa: F401
        import python_multipart  # noqa: F401 - FastAPI needs it for form uploads
        import uvicorn  # noqa: F401
    except ImportError:
        raise ConfigError("graft serve needs the `serve` extra: pip install 'graft-learn[serve]'") from None
    return fastapi


class Service:
    """One loaded model behind a batcher: what the endpoints share."""

    def __init__(
        self,
        model: Any,
        options: ServeOptions,
        token: str | None,
        max_upload_bytes: int,
        log: Any = LOG.info,
        torch_threads: int | None = None,
    ) -> None:
        self.model, self.options, self.token, self.log = model, options, token, log
        self.max_upload_bytes = max_upload_bytes
        self.ready = False
        wait_s = options.max_wait_ms / 1000
        self.max_batch = options.max_batch or getattr(model.modality, "serve_batch", DEFAULT_MAX_BATCH)
        self.batcher = Batcher(
            self._run, self.max_batch, wait_s, options.max_queue, self._on_batch, torch_threads
        )
        # until the race at start-up: what the model would run on alone
        alone = getattr(model, "runtime", "torch").replace("onnx", "onnxruntime")
        self.engine: dict[str, Any] = {"name": alone, "reason": "not raced yet"}
        self.metrics = ServeMetrics(lambda: self.batcher.depth, self._info())

    def _info(self) -> dict[str, str]:
        return {"modality": self.model.modality.name, "classes": str(len(self.model.classes_)),
                "precision": self.precision, "engine": self.engine["name"]}  # fmt: skip

    @property
    def precision(self) -> str:
        """What the served arithmetic is: ONNX Runtime computes in fp32, PyTorch at the model's."""
        return "fp32" if self.engine["name"] == "onnxruntime" else self.model.precision.name

    def _settle_engine(self) -> None:
        """The engine race at --max-batch inputs decides what serves (graft.runtime.engine)."""
        self.engine = settle_engine(self.model, self.max_batch)
        self.metrics.model_info.info(self._info())
        self.log(f"engine {self.engine['name']} ({self.precision}) at batches of "
                 f"{self.max_batch}: {self.engine['reason']}")  # fmt: skip

    def _run(self, inputs: list[Any]) -> Any:
        return self.model.outputs(inputs)  # looked up at each call: tests put a spy there

    def _on_batch(self, size: int) -> None:
        self.metrics.batch_size.observe(size)

    async def warm(self) -> None:
        """The engines raced and one batch run before /ready says yes (the first batch pays for
        lazy set-up)."""
        try:
            await asyncio.get_running_loop().run_in_executor(self.batcher.executor, self._settle_engine)
        except Exception:  # noqa: BLE001 - the model still serves, on what it would run alone
            LOG.exception("the engine race failed; serving on PyTorch")
        try:
            sample = self.model.modality.example_input()
            await self.batcher.compute([(sample, sample) if takes_pairs(self.model) else sample])
        except Exception:  # /ready stays 503 and says why in the log; /predict still answers
            LOG.exception("the warm-up batch failed")
            return
        self.ready = True

    async def predict(self, inputs: list[Any], slot: Slot | None = None) -> list[Any]:
        """The outputs of one request's inputs (queued in `slot`, if it holds one); Overloaded at
        once, TimeoutError past the timeout."""
        task = self.batcher.task
        if task is None or task.get_loop() is not asyncio.get_running_loop():
            # no lifespan (a TestClient outside `with`): each request runs alone, still off the loop
            return await asyncio.wait_for(self.batcher.compute(inputs), self.options.request_timeout)
        return await asyncio.wait_for(self.batcher.submit(inputs, slot), self.options.request_timeout)

    def health(self) -> dict[str, Any]:
        model = self.model
        return {"status": "alive", "ready": self.ready, "modality": model.modality.name,
                "classes": list(model.classes_), "precision": self.precision,
                "engine": self.engine["name"], "engine_reason": self.engine["reason"],
                "max_batch": self.max_batch, "queue": self.batcher.depth}  # fmt: skip


def settle_engine(model: Any, max_batch: int) -> dict[str, Any]:
    """The engines raced on `max_batch` synthetic inputs of the model's kind (the batch size it
    serves); the winner runs every batch after. An exported .onnx model runs on onnxruntime."""
    settle = getattr(model, "settle_engine", None)
    if settle is None:
        return {"name": "onnxruntime", "reason": "an exported ONNX model runs on onnxruntime"}
    from ..predict.graph import signature_for

    return settle(signature_for(model.modality).synthetic(model.preprocessing, max_batch))


def error(status: int, message: str, headers: dict[str, str] | None = None) -> Any:
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": message}, status_code=status, headers=headers)


def create_app(
    run_dir: str | Path,
    max_upload_bytes: int = MAX_UPLOAD_BYTES,
    precision: str = "auto",
    options: ServeOptions | None = None,
    log: Any = LOG.info,
    torch_threads: int | None = None,
) -> Any:
    """The FastAPI app for one run folder (the model is loaded once, here, at `precision`); `options`:
    batching, queue, timeout, token and engine (run it with `with TestClient(app)` or uvicorn: the
    batcher starts with the app, races the engines and runs a warm-up batch; `log` hears which
    engine won and why); `torch_threads`: the batcher's worker's PyTorch CPU threads."""
    fastapi = _require_serve()
    from ..predict.predictor import load

    options = options or ServeOptions(run_dir=str(run_dir), precision=precision)
    model = load(run_dir, precision=precision, engine=options.engine)
    service = Service(model, options, resolve_token(options.token), max_upload_bytes, log, torch_threads)

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> Any:
        service.batcher.start()
        warming = asyncio.get_running_loop().create_task(service.warm())
        yield
        await service.batcher.drain(timeout_s=options.request_timeout)
        warming.cancel()

    app = fastapi.FastAPI(title="graft", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.model, app.state.service = model, service
    _add_error_handlers(app)
    _add_access_log(app, service)
    _add_routes(app, service, Path(run_dir).name)
    return app


def _add_routes(app: Any, service: Service, title: str) -> None:
    from fastapi import Request
    from fastapi.responses import HTMLResponse, Response

    model, options = service.model, service.options

    def denied(request: Request) -> Any:
        if authorized(request.headers.get("authorization"), service.token):
            return None
        return error(401, "send the header Authorization: Bearer <the token graft serve was given>",
                     headers={"WWW-Authenticate": "Bearer"})  # fmt: skip

    # async: answered on the event loop itself, never queued behind the thread pool under load
    @app.get("/health")
    async def health() -> dict[str, Any]:
        return service.health()

    @app.get("/ready")
    async def ready() -> Any:
        batcher = service.batcher
        why = "warming up" if not service.ready else "stopping" if batcher.closing else ""
        why = why or ("queue full" if batcher.full else "")
        return error(503, f"not ready: {why}") if why else {"ready": True}

    @app.get("/metrics")
    def metrics(request: Request) -> Any:
        body, kind = service.metrics.text()
        return denied(request) or Response(body, media_type=kind)

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return _page(model, title, needs_token=service.token is not None)

    @app.post("/predict")
    async def predict(request: Request) -> Any:
        if (refused := denied(request)) is not None:
            return refused
        busy = {"Retry-After": "1"}
        try:  # a place in the queue before the body is read and decoded: a refusal comes first
            slot = service.batcher.reserve()
        except Overloaded as err:
            await drain(request, service.max_upload_bytes)  # read, never decoded: the 503 arrives
            return error(503, f"the server is busy ({err}): try again in a second", headers=busy)
        try:
            inputs, echoes = await read_request(request, model, service.max_upload_bytes)
            outputs = await service.predict(inputs, slot)
        except BadRequest as err:
            return error(err.status, err.message)
        except Overloaded as err:
            return error(503, f"the server is busy ({err}): try again in a second", headers=busy)
        except TimeoutError:
            return error(504, f"no answer within --request-timeout {options.request_timeout:g} s")
        finally:
            slot.release()
        pairs = zip(echoes, outputs, strict=True)
        rows = [{"input": e, **model.task.answer(o, model.classes_, TOP_K)} for e, o in pairs]
        return {"predictions": rows}


def _add_error_handlers(app: Any) -> None:
    """FastAPI's own errors (404, 405, validation, malformed multipart) in graft's shape; an
    unexpected one is logged with its traceback and answered 500."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    @app.exception_handler(HTTPException)
    async def http_error(request: Any, exc: HTTPException) -> Any:
        return error(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Any, exc: RequestValidationError) -> Any:
        where = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return error(422, f"bad request: {where}")

    @app.exception_handler(Exception)
    async def unexpected(request: Any, exc: Exception) -> Any:
        LOG.error("unexpected error on %s", request.url.path, exc_info=exc)
        return error(500, f"internal error ({type(exc).__name__}): see the server's log")


def _add_access_log(app: Any, service: Service) -> None:
    """Each request: an id (the client's X-Request-ID, else a new one, sent back), its latency in
    the access log and in /metrics. Plain ASGI, not `@app.middleware`: no task and no stream per
    request on the event loop that answers /health."""
    app.add_middleware(AccessLog, service=service)


class AccessLog:
    def __init__(self, app: Any, service: Service) -> None:
        self.app, self.service = app, service

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = (given or uuid.uuid4().hex[:16])[:64]
        start, status = time.perf_counter(), 500  # 500: the app raised before it answered
        id_header = (b"x-request-id", request_id.encode("latin-1"))

        async def send_with_id(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), id_header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds, path = time.perf_counter() - start, scope["path"]
            self.service.metrics.observe(path if path in KNOWN_PATHS else "other", status, seconds)
            LOG.info("%s %s %s %d %.1fms", request_id, scope["method"], path, status, 1000 * seconds)


def _page(model: Any, title: str, needs_token: bool) -> str:
    """The upload page, filled in for this model (a token field when the server needs one)."""
    page = resources.files("graft.serve").joinpath("page.html").read_text(encoding="utf-8")
    classes = ", ".join(html.escape(name) for name in model.classes_)
    return (
        page.replace("__TAKES__", model.modality.request_field)
        .replace("__TITLE__", html.escape(title))
        .replace("__NCLASSES__", str(len(model.classes_)))
        .replace("__CLASSES__", classes)
        .replace("__NEEDS_TOKEN__", "true" if needs_token else "false")
    )


def serve(run_dir: str | Path, options: ServeOptions | None = None, log: Any = print) -> None:
    """Run the app on uvicorn until Ctrl-C; requests accepted before it finish."""
    options = options or ServeOptions(run_dir=str(run_dir))
    token = resolve_token(options.token)
    warning = check_exposure(options.host, token, options.insecure)  # before loading the model
    threads = torch_threads_for_worker()  # before the model loads: see batching.py
    try:
        _serve_app(run_dir, options, token, warning, threads, log)
    finally:  # the caller's thread gets its PyTorch threads back
        restore_torch_threads(threads)


def _serve_app(
    run_dir: str | Path, options: ServeOptions, token: str | None, warning: str | None, threads: int, log: Any
) -> None:
    app = create_app(run_dir, precision=options.precision, options=options, log=log, torch_threads=threads)
    used = app.state.model.precision
    if warning:
        log(warning)
    auth = "a bearer token" if token else "no token"
    log(f"serving {run_dir} on http://{options.host}:{options.port}/ at {used.name} ({used.reason}), "
        f"{auth}, batches of up to {app.state.service.max_batch}; Ctrl-C stops")  # fmt: skip
    if not LOG.handlers:  # the access log, on stderr
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        LOG.addHandler(handler)
        LOG.setLevel(logging.INFO)
    import uvicorn

    uvicorn.run(app, host=options.host, port=options.port, log_level="warning", timeout_graceful_shutdown=30)
