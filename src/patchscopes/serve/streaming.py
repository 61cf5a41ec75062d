"""The streaming grid: an inspect query run chunk by chunk, sent as server-sent events while it runs.

The events, in order (each ``data`` is one line of JSON):

- ``plan``: the resolved query (:class:`~patchscopes.serve.queries.Plan`): tokens, layers, positions, patches;
- ``queued``: ``{"ahead": n}``, only when other work on the model runs first;
- ``model``: ``{"records": [...]}``, the unpatched model's own next-token prediction at each position;
- ``cells``: ``{"records": [...], "done": n, "total": N}``, once per chunk of layers (small first, then
  growing), records as ``inspect --json``;
- ``done``: ``{"patches": N, "seconds": s}``; or ``error``: ``{"error": message, "hint": hint}``.

Every chunk is a job on the model's queue. When the browser goes away the response stops iterating, and the
``finally`` clause marks the request cancelled: the chunks not yet run are dropped.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import AsyncIterator

import torch

from patchscopes.errors import PatchscopesError
from patchscopes.serve.guard import encodable
from patchscopes.serve.pool import Cancelled, ModelWorker
from patchscopes.serve.queries import InspectQuery, Plan, chunk_records, layer_chunks, own_next_tokens

logger = logging.getLogger("patchscopes.serve")


def sse(event: str, data: object) -> str:
    """One server-sent event: its name and its data as one line of JSON (a lone surrogate escaped, so that
    the event can always be sent as UTF-8)."""
    return f"event: {event}\ndata: {encodable(json.dumps(data, ensure_ascii=False, allow_nan=False))}\n\n"


def error_data(err: Exception) -> dict[str, str | None]:
    """The ``error`` event (or JSON error body) of an exception raised while running a query."""
    if isinstance(err, PatchscopesError):
        return {"error": err.message, "hint": err.hint}
    if isinstance(err, torch.cuda.OutOfMemoryError):
        return {"error": "the device ran out of memory", "hint": "sweep fewer layers or positions"}
    return {"error": f"the query failed: {type(err).__name__}: {err}", "hint": None}


async def stream_inspect(
    worker: ModelWorker, query: InspectQuery, plan: Plan, *, first_patches: int = 16
) -> AsyncIterator[str]:
    """The events of one streamed inspect query (see the module's docstring).

    Args:
        worker: The model's worker; every chunk waits its turn on its queue.
        query: The query, already checked by :func:`~patchscopes.serve.queries.plan_query`.
        plan: Its plan.
        first_patches: About how many patches the first ``cells`` event carries; later ones grow
            (:func:`~patchscopes.serve.queries.layer_chunks`).
    """
    cancel = threading.Event()
    start = time.perf_counter()
    try:
        yield sse("plan", plan.to_dict())
        if worker.waiting:
            yield sse("queued", {"ahead": worker.waiting})
        own = await worker.call(own_next_tokens, plan, query.top_k, cancel=cancel)
        yield sse("model", {"records": own})
        done = 0
        for layers in layer_chunks(plan, first_patches=first_patches):
            records = await worker.call(chunk_records, query, plan, layers, cancel=cancel)
            done += len(records)
            yield sse("cells", {"records": records, "done": done, "total": plan.patches})
        yield sse("done", {"patches": done, "seconds": round(time.perf_counter() - start, 3)})
    except Cancelled:
        return
    except Exception as err:  # the response has started: report in the stream, never break it
        if not isinstance(err, (PatchscopesError, torch.cuda.OutOfMemoryError)):
            logger.exception("streamed query failed")
        yield sse("error", error_data(err))
    finally:
        cancel.set()
