"""The explorer's web application: the page, its static files and the JSON API, as one FastAPI app.

:func:`create_app` builds it over a :class:`~patchscopes.serve.pool.ModelPool`. The API (see
``docs/explorer.md``):

- ``GET /api/models``: the models this server serves, and its limits;
- ``GET /api/presets``: every preset (target prompt, placeholder, whether it generates);
- ``POST /api/inspect``: an :class:`~patchscopes.serve.queries.InspectQuery`; answers the records
  ``patchscopes inspect --json`` writes for the same query;
- ``POST /api/inspect/stream``: the same query, answered as server-sent events while it runs
  (:mod:`~patchscopes.serve.streaming`);
- ``POST /api/describe``: a :class:`~patchscopes.serve.queries.DescribeQuery`; answers a list of one record.
- ``POST /api/describe-vector``: a :class:`~patchscopes.serve.vectors.DescribeVectorQuery` (a pasted or
  uploaded vector); answers one record per scale (:mod:`~patchscopes.serve.vectors`).

Errors are JSON ``{"error": message, "hint": hint}`` with a 4xx status: 400 bad input, 401 a missing or
wrong token, 403 a foreign ``Host`` header or a cross-origin ``POST`` without the token, 404 an unknown model
or path, 413 a request over the limits (its body included), 422 a malformed body, 429 a model's queue full.
A failure that is not the request's fault is a JSON 500 too (:class:`~patchscopes.serve.middleware.Failsafe`),
never a plain-text one. Who may ask, and the token, are :mod:`~patchscopes.serve.guard`'s.
"""

from __future__ import annotations

import asyncio
import threading
from importlib import resources

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from patchscopes.errors import PatchscopesError
from patchscopes.serve.guard import Guard, problem
from patchscopes.serve.middleware import BodyLimit, Failsafe, input_errors
from patchscopes.serve.pool import Cancelled, ModelPool, ModelWorker
from patchscopes.serve.queries import (
    DescribeQuery,
    InspectQuery,
    Limits,
    Plan,
    RequestProblem,
    check_preset,
    inspect_records,
    is_generation,
    plan_query,
    presets_info,
)
from patchscopes.serve.streaming import error_data, stream_inspect
from patchscopes.serve.vectors import add_vector_routes

STATIC_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}


def static_files() -> dict[str, tuple[bytes, str]]:
    """The page's files (name → content, media type), read once from the package: nothing a browser asks for
    is ever looked up on the file system."""
    folder = resources.files("patchscopes.serve") / "static"
    files = {}
    for entry in folder.iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1]
        if entry.is_file() and suffix in STATIC_TYPES:
            files[entry.name] = (entry.read_bytes(), STATIC_TYPES[suffix])
    return files


def create_app(pool: ModelPool, *, token: str | None = None, limits: Limits | None = None,
               first_patches: int = 16) -> FastAPI:
    """The explorer's app over ``pool``.

    Args:
        pool: The models served; the browser can only name these.
        token: When given, every request must carry it (see the module's docstring); needed to serve on any
            address other than the loopback.
        limits: What one request may ask for.
        first_patches: About how many patches the first streamed ``cells`` event carries (later ones grow).

    The app does not own the pool: whoever made it closes it (:meth:`ModelPool.close`) when serving ends.
    """
    limits = limits or Limits()
    files = static_files()
    app = FastAPI(title="patchscopes explorer", docs_url=None, redoc_url=None, openapi_url="/api/openapi.json")
    app.state.pool = pool

    app.add_middleware(Failsafe)  # innermost of the three: its JSON 500 still gets the guard's headers
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes)
    app.add_middleware(Guard, token=token)  # outermost: a request that may not pass is not even read

    @app.exception_handler(RequestProblem)
    async def on_problem(request: Request, err: RequestProblem):
        return problem(err.status, err.message, err.hint)

    @app.exception_handler(PatchscopesError)
    async def on_patchscopes_error(request: Request, err: PatchscopesError):
        return problem(400, err.message, err.hint)

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, err: RequestValidationError):
        issues = [invalid_issue(e) for e in err.errors()]
        return problem(422, "invalid request: " + "; ".join(issues), "see GET /api/openapi.json for the fields")

    @app.exception_handler(MemoryError)
    @app.exception_handler(torch.cuda.OutOfMemoryError)
    async def on_out_of_memory(request: Request, err: MemoryError):
        data = error_data(err) if isinstance(err, torch.cuda.OutOfMemoryError) else {
            "error": "the server ran out of memory", "hint": "sweep fewer layers or positions"}
        return problem(413, data["error"], data["hint"])

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, err: StarletteHTTPException):
        if err.status_code == 400 and err.detail == "There was an error parsing the body":  # FastAPI's words
            return problem(400, "the request body could not be read (not JSON in UTF-8)",
                           hint="send a JSON object, UTF-8 encoded, with 'Content-Type: application/json'")
        hints = {404: "the API is under /api/ (GET /api/openapi.json lists it)",
                 405: "see GET /api/openapi.json for each path's method"}
        return problem(err.status_code, str(err.detail), hints.get(err.status_code))

    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        return static_response("index.html")

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> Response:
        return static_response(name)

    def static_response(name: str) -> Response:
        if name not in files:
            raise RequestProblem(404, f"no such file: {name[:100]}", hint="the page is at / and its files under "
                                 "/static/, by the names it uses")
        content, media_type = files[name]
        return Response(content, media_type=media_type, headers={"Cache-Control": "no-cache"})

    @app.get("/api/models")
    async def models() -> dict:
        """The models served (name, loaded, layers and width once loaded), the default and the limits."""
        out = []
        for name in pool.names:
            worker = pool.loaded(name)
            info: dict = {"name": name, "default": name == pool.default, "loaded": worker is not None}
            if worker is not None:
                info.update(num_layers=worker.model.num_layers, hidden_size=worker.model.hidden_size,
                            waiting=worker.waiting)
            out.append(info)
        return {"models": out, "default": pool.default, "limits": limits.to_dict()}

    @app.get("/api/presets")
    async def presets() -> dict:
        """Every preset: name, target prompt, placeholder, target layer, whether it generates text."""
        return {"presets": presets_info()}

    @app.post("/api/inspect")
    async def inspect(query: InspectQuery, request: Request) -> Response:
        """Run an inspect query; answers the records ``patchscopes inspect --json`` writes."""
        return await records_of(query, request)

    @app.post("/api/inspect/stream")
    async def inspect_stream(query: InspectQuery) -> StreamingResponse:
        """Run an inspect query and stream its grid as server-sent events, chunk by chunk."""
        worker = await worker_for(query.model)
        plan = await planned(worker, query)
        return StreamingResponse(stream_inspect(worker, query, plan, first_patches=first_patches),
                                 media_type="text/event-stream", headers={"X-Accel-Buffering": "no"})

    @app.post("/api/describe")
    async def describe(query: DescribeQuery, request: Request) -> Response:
        """Run a generation preset from one hidden state; answers a list of one record."""
        inspect_query = query.as_inspect()
        if not is_generation(check_preset(inspect_query, limits)):
            generating = [p["name"] for p in presets_info() if p["generation"]]
            raise RequestProblem(400, f"the scope {query.scope!r} does not generate text",
                                 hint=f"describe with one of {', '.join(generating)}")
        return await records_of(inspect_query, request)

    async def records_of(query: InspectQuery, request: Request) -> Response:
        """Check ``query``, run it as one sweep on its model's queue, answer its records (499 if the client
        left)."""
        worker = await worker_for(query.model)
        await planned(worker, query)
        try:
            records = await while_connected(request, worker, inspect_records, query)
        except Cancelled:
            return Response(status_code=499)
        return JSONResponse(records)

    async def worker_for(name: str | None) -> ModelWorker:
        name = pool.default if name is None else name
        if name not in pool.names:
            raise RequestProblem(404, f"this server has no model {name!r}",
                                 hint=f"use one of {', '.join(pool.names)} (GET /api/models)")
        worker = await run_in_threadpool(pool.worker, name)
        if worker.waiting >= limits.max_queued:
            raise RequestProblem(429, f"{name} has {worker.waiting} jobs queued; this server queues at most "
                                 f"{limits.max_queued} per model", hint="try again when the running queries finish")
        return worker

    async def planned(worker: ModelWorker, query: InspectQuery) -> Plan:
        """:func:`plan_query` off the event loop; whatever reading the query raises is a 400."""
        with input_errors():
            return await run_in_threadpool(plan_query, worker.model, worker.name, query, limits)

    add_vector_routes(app, limits, worker_for, while_connected)
    return app


def invalid_issue(error: dict) -> str:
    """One line of a 422 answer: where in the body, and what is wrong (a body that is not JSON said so)."""
    if error["type"] == "json_invalid":
        reason = error.get("ctx", {}).get("error", "")
        at = next((p for p in error["loc"] if isinstance(p, int)), None)
        return "the body is not valid JSON" + (f" ({reason}, at character {at})" if reason else "")
    if error["type"] == "model_attributes_type" and tuple(error["loc"]) == ("body",):
        return "the body must be a JSON object, sent with 'Content-Type: application/json'"
    return "{}: {}".format(".".join(str(p) for p in error["loc"] if p != "body") or "body", error["msg"])


async def while_connected(request: Request, worker: ModelWorker, fn, *args, poll_s: float = 0.25):
    """Run ``fn(model, *args)`` on the worker's queue; if the client disconnects first, drop or abandon it.

    Raises:
        Cancelled: The client went away before the result was ready.
    """
    cancel = threading.Event()
    task = asyncio.ensure_future(worker.call(fn, *args, cancel=cancel))
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=poll_s)
            if done:
                return task.result()
            if await request.is_disconnected():
                task.cancel()
                raise Cancelled("the client went away")
    finally:
        cancel.set()
