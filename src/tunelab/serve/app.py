"""The HTTP API: FastAPI routes over loaded Predictors, with keys, limits, micro-batching and metrics.

Routes: ``GET /health`` (alive), ``GET /ready`` (models loaded), ``GET /metrics`` (Prometheus),
``GET /v1/models`` (name, task, labels, schemas, runtime) and ``POST /v1/models/{name}/predict`` — one route
per model, whose request and response bodies are that task's own pydantic schemas (so ``/docs`` documents each
model). Errors are JSON ``{"error": ..., "field": ..., "request_id": ...}``.

Example:
    >>> app = create_app(ServeSettings(models={"sentiment": "runs/sst2"}))      # doctest: +SKIP
    >>> uvicorn.run(app, host="127.0.0.1", port=8000)                          # doctest: +SKIP
"""

# No ``from __future__ import annotations`` here: FastAPI reads the route functions' annotations (the request
# and per-model body types) as objects.
import asyncio
import functools
import json
import logging
import time
import uuid
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator, Optional, Union

from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field, create_model

from ..adapters import BasePool
from ..errors import ConfigError, DataError, TunelabError
from ..predictor import Predictor
from .keys import Key, KeyStore
from .microbatch import MicroBatcher
from .settings import NAME, ServeSettings

log = logging.getLogger("tunelab.serve")


class ServeError(Exception):
    """An HTTP error with a JSON body naming what was wrong."""

    def __init__(self, status: int, message: str, field: Optional[str] = None, headers: Optional[dict] = None):
        super().__init__(message)
        self.status, self.message, self.field, self.headers = status, message, field, headers or {}


class Guard:
    """ASGI middleware in front of every route (plain ASGI: no per-request task or body copy): gives each
    request an id (``X-Request-ID``), answers 503 while the server drains, and 413 for a body over ``limit``
    bytes — declared in ``Content-Length``, or growing past it while read (chunked)."""

    def __init__(self, app: Any, limit: int, draining: Any):
        self.app, self.limit, self.draining = app, limit, draining

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request_id = uuid.uuid4().hex[:16]
        scope.setdefault("state", {})["request_id"] = request_id
        if self.draining():
            return await _json(send, 503, {"error": "the server is shutting down", "request_id": request_id},
                               request_id)
        size = dict(scope["headers"]).get(b"content-length")
        if size is not None and (not size.isdigit() or int(size) > self.limit):
            return await _json(send, 413, {"error": f"the request body is larger than {self.limit} bytes",
                                           "field": "body", "request_id": request_id}, request_id)
        received = 0

        async def limited() -> dict:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                from starlette.exceptions import HTTPException

                raise HTTPException(413, f"body: the request body is larger than {self.limit} bytes")
            return message

        async def with_id(message: dict) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        await self.app(scope, limited, with_id)


async def _json(send: Any, status: int, body: dict, request_id: str) -> None:
    """A whole JSON response straight onto ASGI ``send``."""
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
        (b"x-request-id", request_id.encode())]})
    await send({"type": "http.response.body", "body": data})


class RateLimiter:
    """A token bucket per key: ``rate`` requests per minute, bursts up to ``rate``."""

    def __init__(self, rate_per_minute: int):
        self.rate = rate_per_minute
        self.buckets: dict[str, tuple[float, float]] = {}

    def take(self, who: str) -> float:
        """0 when the request may go ahead, else the seconds until it may."""
        if not self.rate:
            return 0.0
        now = time.monotonic()
        tokens, last = self.buckets.get(who, (float(self.rate), now))
        tokens = min(float(self.rate), tokens + (now - last) * self.rate / 60.0)
        if tokens < 1.0:
            self.buckets[who] = (tokens, now)
            return (1.0 - tokens) * 60.0 / self.rate
        self.buckets[who] = (tokens - 1.0, now)
        return 0.0


class Served:
    """One loaded model: its predictor, batcher and request/response schemas."""

    def __init__(self, name: str, predictor: Predictor, settings: ServeSettings, metrics: Any):
        self.name, self.predictor, self.model_batch_size = name, predictor, settings.model_batch_size
        task = predictor.task
        speech = predictor.manifest.get("speech") or {}
        self.media = {**task.media_columns(), **({speech["audio_column"]: "audio"} if speech.get("audio_column") else {})}
        item = Union[str, predictor.input_schema]  # a text, or a record with the task's columns
        self.Request = create_model(f"{name}_request".replace("-", "_").replace(".", "_"),
                                    inputs=(Union[item, list[item]], Field(..., description="one input or a list")))
        self.Response = create_model(f"{name}_response".replace("-", "_").replace(".", "_"), model=(str, name),
                                     predictions=(list[predictor.output_schema], ...))
        self.batcher = MicroBatcher(self._predict, max_batch_size=settings.max_batch_size,
                                    max_wait_ms=settings.max_wait_ms,
                                    observe=lambda size: metrics.batch_size.labels(name).observe(size))
        manifest = predictor.manifest
        self.card = {"name": name, "task": task.name, "labels": predictor.labels,
                     "strategy": manifest.get("strategy"), "model_format": manifest.get("model_format"),
                     # a local base model is named by its folder: the server's paths stay private
                     "base_model": Path(str(manifest.get("base_model", {}).get("name", ""))).name or None,
                     "runtime": (manifest.get("export") or {}).get("runtime", "pytorch"),
                     "streams": bool(task.streams),
                     "media": self.media,  # fields taking a file's content (image, audio) as a data URI
                     "shares_base": predictor.adapter is not None,
                     "input_schema": predictor.input_schema.model_json_schema(),
                     "output_schema": predictor.output_schema.model_json_schema()}
        # the artifact's plots by name: a request can only pick one of these, never name a path
        self.plots = {Path(f).name: Path(f) for f in manifest.get("sha256", {})
                      if f.startswith("plots/") and f.endswith(".png")} if predictor.path else {}

    def model_card(self) -> dict[str, Any]:
        """What the page's model card shows: the listing plus method, metrics, parameters and plot names."""
        manifest = self.predictor.manifest
        scalars = {split: {k: v for k, v in values.items() if isinstance(v, (int, float))}
                   for split, values in (manifest.get("metrics") or {}).items() if isinstance(values, dict)}
        return {**{k: v for k, v in self.card.items() if not k.endswith("_schema")},
                "method": (manifest.get("method") or {}).get("name"), "metrics": scalars,
                "parameters": (manifest.get("parameters") or {}).get("total"), "created": manifest.get("created"),
                "plots": sorted(self.plots)}

    def _predict(self, items: list[Any]) -> list[dict[str, Any]]:
        return self.predictor.predict(items, batch_size=self.model_batch_size, on_error="record")


class Metrics:
    """The Prometheus metrics of one app (its own registry)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("tunelab_requests", "Requests by model and status", ["model", "status"],
                                registry=self.registry)
        self.latency = Histogram("tunelab_request_seconds", "Request latency", ["model"], registry=self.registry,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.batch_size = Histogram("tunelab_batch_size", "Inputs per model call", ["model"], registry=self.registry,
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
        self.tokens = Counter("tunelab_generated_pieces", "Pieces of generated text streamed", ["model"],
                              registry=self.registry)
        self.queue = Gauge("tunelab_queue_depth", "Requests waiting for the model", ["model"], registry=self.registry)


def create_app(settings: ServeSettings, predictors: dict[str, Predictor] | None = None,
               keys: KeyStore | None = None) -> Any:
    """The FastAPI app serving ``settings.models`` (or the given ``predictors``).

    Args:
        settings: names, limits and security settings.
        predictors: already loaded predictors by name (default: load ``settings.models``).
        keys: the accepted API keys (default: from ``settings.keys_file`` and ``settings.keys_env``).

    Raises:
        ConfigError: a non-loopback host without keys, or a model that cannot be loaded.
    """
    import os

    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response
    from starlette.exceptions import HTTPException as StarletteHTTPException

    keys = keys if keys is not None else KeyStore.load(settings.keys_file, os.environ.get(settings.keys_env))
    if not settings.loopback and not keys.enabled:
        raise ConfigError(f"refusing to serve on {settings.host} without API keys: anyone who can reach it could use "
                          f"the models; set --keys-file or {settings.keys_env}, or bind to 127.0.0.1")
    pool = BasePool() if settings.share_bases else None  # LoRA artifacts on one base share its weights
    if predictors is None:
        predictors = {}
        for name, path in settings.models.items():
            try:
                predictors[name] = Predictor.load(path, pool=pool)
            except TunelabError as err:
                raise ConfigError(f"model {name!r}: {err}") from None
    metrics = Metrics()
    served = {name: Served(name, p, settings, metrics) for name, p in predictors.items()}
    limiter = RateLimiter(settings.rate_per_minute)
    state = {"ready": False, "draining": False}

    @asynccontextmanager
    async def lifespan(app: Any):
        state["ready"] = True
        yield
        state["draining"] = True  # new requests get 503; the ones in flight finish
        for model in served.values():
            model.batcher.close()

    app = FastAPI(title="tunelab", version=_version(), lifespan=lifespan)
    app.add_middleware(Guard, limit=settings.max_body_bytes, draining=lambda: state["draining"])
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])

    def error(exc: ServeError, request_id: str) -> JSONResponse:
        body = {"error": exc.message, "request_id": request_id}
        if exc.field:
            body["field"] = exc.field
        return JSONResponse(body, status_code=exc.status, headers=exc.headers)  # Guard adds X-Request-ID

    @app.exception_handler(ServeError)
    async def serve_error(request: Request, exc: ServeError) -> JSONResponse:
        return error(exc, request.state.request_id)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error(ServeError(exc.status_code, str(exc.detail)), request.state.request_id)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": ("body",), "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", ())[1:]) or "body"
        return error(ServeError(422, f"{where}: {first.get('msg')}", where), request.state.request_id)

    def authorize(request: Request, model: str | None = None, admin: bool = False) -> Key | None:
        if not keys.enabled:
            return None
        header = request.headers.get("authorization", "")
        token = header[7:].strip() if header.lower().startswith("bearer ") else None
        key = keys.check(token)
        if key is None:
            raise ServeError(401, "missing or unknown API key (send 'Authorization: Bearer <key>')",
                             headers={"WWW-Authenticate": "Bearer"})
        if (model is not None and not key.allows(model)) or (admin and not key.admin):
            raise ServeError(403, f"this key may not use {model if model else 'admin endpoints'}")
        wait = limiter.take(key.id)
        if wait:
            raise ServeError(429, "rate limit reached for this key", headers={"Retry-After": str(int(wait) + 1)})
        return key

    @app.get("/health")
    async def health() -> dict[str, str]:
        """Alive."""
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> Any:
        """Ready when every model is loaded."""
        if not state["ready"]:
            return JSONResponse({"status": "loading"}, status_code=503)
        return {"status": "ready", "models": sorted(served)}

    @app.get("/metrics")
    async def prometheus(request: Request) -> Response:
        """Prometheus metrics (a valid key is needed when keys are configured)."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        authorize(request)
        for name, model in served.items():
            metrics.queue.labels(name).set(model.batcher.depth)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def list_models(request: Request) -> dict[str, Any]:
        """The models this key may use: name, task, labels, input/output schema and runtime."""
        key = authorize(request)
        return {"models": [m.card for name, m in sorted(served.items()) if key is None or key.allows(name)]}

    def model_named(request: Request, name: str) -> Served:
        authorize(request, name)
        model = served.get(name)
        if model is None:
            raise ServeError(404, f"no model named {name[:80]!r} is served here", "name")
        return model

    @app.get("/v1/models/{name}/card")
    async def model_card(name: str, request: Request) -> dict[str, Any]:
        """The model card: task, base model, method, runtime, metrics, parameters and the names of its plots."""
        return model_named(request, name).model_card()

    @app.get("/v1/models/{name}/plots/{plot}", response_class=Response)
    async def model_plot(name: str, plot: str, request: Request) -> Response:
        """One of the model card's plots (PNG), by a name from the card."""
        model = model_named(request, name)
        if plot not in model.plots:
            raise ServeError(404, f"model {name!r} has no plot named {plot[:80]!r}", "plot")
        return Response((model.predictor.path / model.plots[plot]).read_bytes(), media_type="image/png")

    if settings.ui:
        _add_page_routes(app)

    def add_routes(model: Served) -> None:
        _add_predict_route(app, model, settings, authorize, metrics)
        if not model.predictor.task.streams:
            _add_explain_route(app, model, settings, authorize, metrics)
        if model.predictor.task.streams:
            _add_generate_route(app, model, settings, authorize, metrics)
        # the catch-all for unknown names must stay after every model's own routes
        app.router.routes.sort(key=lambda route: getattr(route, "name", "") == "unknown_model")
        app.openapi_schema = None  # /docs shows the models served now

    for model in served.values():
        add_routes(model)
    _add_chat_route(app, served, settings, authorize, metrics)

    @app.post("/v1/models/{name}/predict", include_in_schema=False)
    async def unknown_model(name: str, request: Request) -> None:
        authorize(request)
        raise ServeError(404, f"no model named {name[:80]!r} is served here", "name")

    def admin(request: Request) -> None:
        if not keys.enabled:
            raise ServeError(403, "admin endpoints need API keys with the admin scope (--keys-file)")
        authorize(request, admin=True)

    @app.post("/v1/admin/models", status_code=201, tags=["admin"])
    async def load_model(body: LoadRequest, request: Request) -> dict[str, Any]:
        """Load an artifact under a new name (admin scope)."""
        admin(request)
        if body.name in served:
            raise ServeError(409, f"a model named {body.name!r} is already served; unload it first", "name")
        try:
            predictor = await asyncio.get_running_loop().run_in_executor(
                None, functools.partial(Predictor.load, body.artifact, pool=pool))
        except TunelabError as err:
            raise ServeError(422, f"artifact: {err}", "artifact") from None
        served[body.name] = Served(body.name, predictor, settings, metrics)
        add_routes(served[body.name])
        return {"loaded": body.name, "task": predictor.task.name}

    @app.delete("/v1/admin/models/{name}", tags=["admin"])
    async def unload_model(name: str, request: Request) -> dict[str, Any]:
        """Stop serving a model (admin scope): a batch already running finishes, queued requests fail."""
        admin(request)
        model = served.pop(name, None)
        if model is None:
            raise ServeError(404, f"no model named {name[:80]!r} is served here", "name")
        prefix = f"/v1/models/{name}/"
        app.router.routes[:] = [r for r in app.router.routes if not getattr(r, "path", "").startswith(prefix)]
        app.openapi_schema = None
        model.batcher.stop()
        await asyncio.get_running_loop().run_in_executor(None, model.batcher.executor.shutdown)
        if pool is not None and model.predictor.adapter is not None:
            pool.release(model.predictor.adapter)  # the shared base stays while other adapters use it
        return {"unloaded": name}

    app.state.served, app.state.settings = served, settings
    app.state.drain = lambda: state.update(draining=True)  # called when the server is told to stop
    return app


# The page's files: a request picks one of these names, nothing else is read.
PAGE_FILES = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
              "style.css": "text/css; charset=utf-8"}
# The page loads nothing from elsewhere and cannot be framed; plots arrive as blob: URLs (fetched with the key).
PAGE_HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' blob:; script-src 'self'; "
                                           "style-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
                "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"}


def _add_page_routes(app: Any) -> None:
    """``GET /``: the web page (plain HTML, CSS and JS from the package), and ``GET /ui/<file>``."""
    from importlib.resources import files

    from fastapi.responses import Response

    def page_file(name: str) -> Response:
        if name not in PAGE_FILES:
            raise ServeError(404, f"no page file named {name[:80]!r}", "file")
        body = files("tunelab.serve").joinpath("static", name).read_bytes()
        return Response(body, media_type=PAGE_FILES[name], headers=PAGE_HEADERS)

    @app.get("/", include_in_schema=False)
    async def page() -> Response:
        return page_file("index.html")

    @app.get("/ui/{name}", include_in_schema=False)
    async def page_asset(name: str) -> Response:
        return page_file(name)


def _add_predict_route(app: Any, model: Served, settings: ServeSettings, authorize: Any, metrics: Metrics) -> None:
    """``POST /v1/models/<name>/predict`` with the task's schemas; for a model with image or audio columns also
    ``POST /v1/models/<name>/predict/upload``: one record as ``multipart/form-data``."""
    Body, Reply = model.Request, model.Response

    async def answer(body: Any, request: Request, field: str = "inputs[{}]") -> dict[str, Any]:
        started = time.perf_counter()
        status = "500"
        try:
            items = body.inputs if isinstance(body.inputs, list) else [body.inputs]
            if not items:
                raise ServeError(422, "inputs: give at least one input", "inputs")
            if len(items) > settings.max_inputs:
                raise ServeError(413, f"inputs: {len(items)} inputs, more than the limit of {settings.max_inputs}", "inputs")
            rows = [_record(model, item if isinstance(item, str) else item.model_dump(), settings, field.format(at))
                    for at, item in enumerate(items)]
            if settings.log_inputs:
                log.info("model %s inputs %s", model.name, json.dumps(rows)[:2000])
            results = await _run(model, rows, settings, request.state.request_id, field)
            status = "200"
            return {"model": model.name, "predictions": results}
        except ServeError as err:
            status = str(err.status)
            raise
        finally:
            metrics.requests.labels(model.name, status).inc()
            metrics.latency.labels(model.name).observe(time.perf_counter() - started)

    async def predict(body: Body, request: Request) -> Any:  # type: ignore[valid-type]
        authorize(request, model.name)
        return await answer(body, request)

    predict.__doc__ = f"Predict with {model.name!r} ({model.predictor.task.name})."
    app.post(f"/v1/models/{model.name}/predict", response_model=Reply, name=f"predict_{model.name}",
             tags=[model.name])(predict)
    if not model.media:
        return

    async def upload(request: Request) -> Any:
        authorize(request, model.name)
        return await answer(await _form_request(model, request), request, "form")

    upload.__doc__ = (f"Predict with {model.name!r} for one record sent as multipart/form-data: a file part for "
                      f"each of {sorted(model.media)}, a text field for each other column.")
    app.post(f"/v1/models/{model.name}/predict/upload", response_model=Reply, name=f"upload_{model.name}",
             tags=[model.name], openapi_extra=_form_schema(model))(upload)


async def _form_request(model: Served, request: Request) -> Any:
    """A ``multipart/form-data`` request as the model's JSON request: each file part becomes a data URI (so it
    takes exactly the JSON route's checks), each text field a string; 415/422 name what is wrong."""
    import base64

    from fastapi.exceptions import RequestValidationError
    from pydantic import ValidationError

    if not request.headers.get("content-type", "").lower().startswith(("multipart/form-data",
                                                                        "application/x-www-form-urlencoded")):
        raise ServeError(415, "body: send multipart/form-data, with a file part for each of "
                              f"{sorted(model.media)} and a text field for each other column", "body")
    columns = set(model.predictor.input_schema.model_fields) | set(model.media)
    record: dict[str, Any] = {}
    async with request.form(max_files=len(columns) + 1, max_fields=len(columns) + 1) as form:
        for name, value in form.multi_items():
            if name in record:
                raise ServeError(422, f"{name}: given twice; one record per request", name)
            if name not in columns:
                raise ServeError(422, f"{name}: not an input of this model (its inputs: {sorted(columns)})", name)
            is_file = not isinstance(value, str)
            if name in model.media and not is_file:
                raise ServeError(422, f"{name}: send the {model.media[name]} as a file part, not as a text field", name)
            if name not in model.media and is_file:
                raise ServeError(422, f"{name}: a text field, not a file", name)
            if is_file:
                data = await value.read()
                if not data:
                    raise ServeError(422, f"{name}: the file {value.filename!r} is empty", name)
                kind = value.content_type or "application/octet-stream"
                record[name] = f"data:{kind};base64,{base64.b64encode(data).decode()}"
            else:
                record[name] = value
    try:
        model.predictor.input_schema.model_validate(record)  # errors name the column, not the JSON route's union
    except ValidationError as err:  # answered by the app's own handler, as the JSON route's errors are
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in err.errors()]) from None
    return model.Request.model_validate({"inputs": record})


def _form_schema(model: Served) -> dict[str, Any]:
    """The upload route's request body in the OpenAPI document."""
    properties = {name: {"type": "string"} for name in model.predictor.input_schema.model_fields}
    properties.update({name: {"type": "string", "format": "binary", "description": f"the {kind} file"}
                       for name, kind in model.media.items()})
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "properties": properties}}}}}


class ExplainRequest(BaseModel):
    """``POST /v1/models/<name>/explain``: which words of one input led to the prediction."""

    input: Union[str, dict[str, Any]]
    method: str = Field("ig", description="ig, gradxinput, attention, occlusion or lime")
    target: Optional[str] = Field(None, description="what to explain: a label (default: the predicted one), an entity "
                                  "(TYPE@start:end, its text or type; default: the first), or start/end of an answer")


def _add_explain_route(app: Any, model: Served, settings: ServeSettings, authorize: Any, metrics: Metrics) -> None:
    """``POST /v1/models/<name>/explain``: the attribution of each word, run in the model's own thread."""

    async def explain(body: ExplainRequest, request: Request) -> Any:
        authorize(request, model.name)
        record = _record(model, body.input, settings)

        def work() -> list[dict[str, Any]]:
            try:
                return [model.predictor.explain([record], method=body.method, target=body.target)[0]]
            except (ConfigError, DataError) as err:
                return [{"error": str(err)}]

        loop = asyncio.get_running_loop()
        (result,) = await _run(model, [record], settings, request.state.request_id, "input",
                               call=lambda: loop.run_in_executor(model.batcher.executor, work))
        metrics.requests.labels(model.name, "200").inc()
        return {"model": model.name, "explanation": result}

    explain.__doc__ = f"Explain a prediction of {model.name!r}: the attribution of each word of the input."
    app.post(f"/v1/models/{model.name}/explain", name=f"explain_{model.name}", tags=[model.name])(explain)


class LoadRequest(BaseModel):
    """``POST /v1/admin/models``: serve the artifact at ``artifact`` under ``name``."""

    name: str = Field(..., pattern=NAME.pattern)
    artifact: str


class Decoding(BaseModel):
    """Per-request decoding, OpenAI's names: unset fields keep the artifact's ``generate`` settings."""

    max_tokens: Optional[int] = Field(None, ge=1, le=4096, description="most new tokens")
    temperature: Optional[float] = Field(None, ge=0, le=2, description="0: greedy; above: sampling")
    top_p: Optional[float] = Field(None, gt=0, le=1)
    stop: Optional[Union[str, list[str]]] = Field(None, description="stop strings (cut from the output)")
    seed: Optional[int] = None

    def changes(self) -> dict[str, Any]:
        """The ``GenerateConfig`` fields this request changes."""
        out: dict[str, Any] = {}
        if self.max_tokens is not None:
            out["max_new_tokens"] = self.max_tokens
        if self.temperature == 0:
            out["strategy"] = "greedy"
        elif self.temperature is not None:
            out.update(strategy="sample", temperature=self.temperature)
        if self.top_p is not None:
            out["top_p"] = self.top_p
        if self.stop is not None:
            out["stop"] = [self.stop] if isinstance(self.stop, str) else self.stop
        if self.seed is not None:
            out["seed"] = self.seed
        return out


class GenerateRequest(Decoding):
    """``POST /v1/models/<name>/generate``: one input; ``stream`` sends Server-Sent Events as text is made;
    ``max_tokens``, ``temperature``, ``top_p``, ``stop`` and ``seed`` change this request's decoding."""

    input: Union[str, dict[str, Any]]
    stream: bool = False


class ChatMessage(BaseModel):
    """One turn of an OpenAI-style conversation."""

    role: str
    content: str


class ChatRequest(Decoding):
    """The OpenAI ``/v1/chat/completions`` request fields tunelab reads: ``model``, ``messages``, ``stream``
    and decoding (``max_tokens`` or ``max_completion_tokens``, ``temperature``, ``top_p``, ``stop``, ``seed``);
    others are accepted and ignored."""

    model_config = ConfigDict(extra="allow")
    model: str
    messages: list[ChatMessage] = Field(..., min_length=1)
    stream: bool = False
    max_completion_tokens: Optional[int] = Field(None, ge=1, le=4096)

    def changes(self) -> dict[str, Any]:
        out = super().changes()
        if self.max_completion_tokens is not None:
            out["max_new_tokens"] = self.max_completion_tokens
        return out


async def _pieces(model: Served, record: dict[str, Any], changes: dict[str, Any]) -> AsyncIterator[str]:
    """The model's output for ``record`` as it is produced, generated in the model's own worker thread (so it
    never overlaps a batch of the same model), decoded with ``changes`` to its settings."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    done = object()

    def work() -> None:
        try:
            with model.predictor.decoding(**changes):
                for piece in model.predictor.stream([record]):
                    loop.call_soon_threadsafe(queue.put_nowait, piece)
        except Exception as err:  # handed to the event loop, raised there
            loop.call_soon_threadsafe(queue.put_nowait, err)
        finally:
            loop.call_soon_threadsafe(queue.put_nowait, done)

    loop.run_in_executor(model.batcher.executor, work)
    while (item := await queue.get()) is not done:
        if isinstance(item, Exception):
            raise item
        yield item


def _sse(data: Any) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


def _record(model: Served, value: Union[str, dict[str, Any]], settings: ServeSettings,
            field: str = "input") -> dict[str, Any]:
    """A request's input as the task's record, within the character limit (413 naming ``field``)."""
    row = model.predictor.task.input_row(value) if isinstance(value, str) else dict(value)
    for column, item in row.items():
        if column in model.media:  # a file's content: only as a data URI, never a path on the server's disk
            if item is not None and not (isinstance(item, str) and item.lstrip().startswith("data:")):
                raise ServeError(422, f"{field}.{column}: send the file's content as a base64 data URI "
                                      "(data:image/png;base64,... or data:audio/wav;base64,...); the server does not "
                                      "read files from its own disk", f"{field}.{column}")
        elif isinstance(item, str) and len(item) > settings.max_chars:
            raise ServeError(413, f"{field}: longer than {settings.max_chars} characters", field)
    return row


async def _run(model: Served, rows: list[dict[str, Any]], settings: ServeSettings, request_id: str,
               field: str, call: Any = None) -> list[dict[str, Any]]:
    """The model's predictions for ``rows`` through its batcher (or ``call()``), with the timeout; a model
    failure is a 500 naming the request (the server keeps serving), an input it cannot predict a 422 naming
    ``field.format(i)``."""
    try:
        results = await asyncio.wait_for(call() if call else model.batcher.submit(rows), settings.timeout_s)
    except asyncio.TimeoutError:
        raise ServeError(504, f"the model did not answer within {settings.timeout_s} s") from None
    except Exception as err:  # the model raised: the request fails, the server keeps serving
        log.error("model %s failed (request %s): %s", model.name, request_id, type(err).__name__)
        raise ServeError(500, f"the model failed on this request ({type(err).__name__}); request id "
                              f"{request_id}") from None
    for at, result in enumerate(results):
        if "error" in result:
            where = field.format(at)
            raise ServeError(422, f"{where}: {result['error']}", where)
    return results


async def _generate_once(model: Served, record: dict[str, Any], settings: ServeSettings, request_id: str,
                         changes: dict[str, Any]) -> str:
    """The whole output for ``record``: batched with others when it keeps the model's decoding, else alone in
    the model's own thread with its ``changes``."""
    if not changes:
        return (await _run(model, [record], settings, request_id, "input"))[0]["text"]

    def alone() -> list[dict[str, Any]]:
        with model.predictor.decoding(**changes):
            return model.predictor.predict([record], on_error="record")

    loop = asyncio.get_running_loop()
    return (await _run(model, [record], settings, request_id, "input",
                       call=lambda: loop.run_in_executor(model.batcher.executor, alone)))[0]["text"]


def _changes(model: Served, body: Decoding) -> dict[str, Any]:
    """The request's decoding changes, checked against the model's settings (422 naming the field)."""
    changes = body.changes()
    if changes:
        try:
            model.predictor.decoding_config(**changes)  # checked here; applied in the model's own thread
        except ConfigError as err:
            raise ServeError(422, str(err), str(err).split(":")[0]) from None
    return changes


def _add_generate_route(app: Any, model: Served, settings: ServeSettings, authorize: Any, metrics: Metrics) -> None:
    """``POST /v1/models/<name>/generate``: the whole text, or Server-Sent Events ``{"text": piece}`` then
    ``[DONE]``."""
    from fastapi.responses import StreamingResponse

    async def generate(body: GenerateRequest, request: Request) -> Any:
        authorize(request, model.name)
        record = _record(model, body.input, settings)
        changes = _changes(model, body)
        if not body.stream:
            text = await _generate_once(model, record, settings, request.state.request_id, changes)
            metrics.requests.labels(model.name, "200").inc()
            return {"model": model.name, "text": text}

        async def events() -> AsyncIterator[str]:
            try:
                async for piece in _pieces(model, record, changes):
                    metrics.tokens.labels(model.name).inc()
                    yield _sse({"text": piece})
            except Exception as err:  # the headers are sent: the error is the last event
                yield f"event: error\n{_sse({'error': type(err).__name__, 'request_id': request.state.request_id})}"
            yield _sse("[DONE]")
            metrics.requests.labels(model.name, "200").inc()

        return StreamingResponse(events(), media_type="text/event-stream")

    generate.__doc__ = f"Generate with {model.name!r}; ``stream: true`` sends Server-Sent Events."
    app.post(f"/v1/models/{model.name}/generate", name=f"generate_{model.name}", tags=[model.name])(generate)


def _add_chat_route(app: Any, served: dict[str, Served], settings: ServeSettings, authorize: Any,
                    metrics: Metrics) -> None:
    """OpenAI-compatible ``POST /v1/chat/completions`` for the generation models: a dialogue model reads the
    whole conversation, the others the last user message."""
    from fastapi.responses import StreamingResponse

    async def chat(body: ChatRequest, request: Request) -> Any:
        model = served.get(body.model)
        authorize(request, body.model)
        if model is None or not model.predictor.task.streams:
            raise ServeError(404, f"no generation model named {body.model[:80]!r} is served here", "model")
        turns = [m.model_dump() for m in body.messages]
        task = model.predictor.task
        if task.name == "dialogue":
            record = {task.input_columns()[0]: turns}
        else:
            users = [t["content"] for t in turns if t["role"] == "user"]
            if not users:
                raise ServeError(422, "messages: no user message", "messages")
            record = _record(model, users[-1], settings)
        changes = _changes(model, body)
        ident, created = f"chatcmpl-{request.state.request_id}", int(time.time())
        head = {"id": ident, "created": created, "model": body.model}
        if not body.stream:
            text = await _generate_once(model, record, settings, request.state.request_id, changes)
            metrics.requests.labels(model.name, "200").inc()
            return {**head, "object": "chat.completion", "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}

        async def events() -> AsyncIterator[str]:
            chunk = {**head, "object": "chat.completion.chunk"}
            yield _sse({**chunk, "choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]})
            async for piece in _pieces(model, record, changes):
                metrics.tokens.labels(model.name).inc()
                yield _sse({**chunk, "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]})
            yield _sse({**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
            yield _sse("[DONE]")
            metrics.requests.labels(model.name, "200").inc()

        return StreamingResponse(events(), media_type="text/event-stream")

    app.post("/v1/chat/completions", name="chat_completions", tags=["openai"])(chat)


def _version() -> str:
    from ..version import __version__

    return __version__


__all__ = ["RateLimiter", "ServeError", "create_app"]
