"""The explorer's vector description: ``POST /api/describe-vector`` describes a pasted or uploaded vector.

The body is a :class:`DescribeVectorQuery`: the vector (numbers, or their text as pasted or read from a file),
where to write it, the scales and the prompt. The answer is the records of
:func:`patchscopes.describe_vectors` (one per scale, the chosen one marked), run on the model's queue like every
other query. A vector of the wrong width, with NaN or infinite entries, or zero, is a 400 with a hint; more
scales or tokens than the server's limits allow is a 413.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from patchscopes.experiments.vectors import AUTO_FACTORS, describe_vectors
from patchscopes.models import LanguageModel
from patchscopes.results import to_records
from patchscopes.serve.pool import Cancelled
from patchscopes.serve.queries import Limits, RequestProblem

MAX_SCALES = 16
"""The most scales one request may try (and at most the server's ``max_generations``)."""


class DescribeVectorQuery(BaseModel):
    """The body of ``POST /api/describe-vector``."""

    model_config = ConfigDict(extra="forbid")

    vector: list[float] | str = Field(description="The vector: a list of numbers, or text of numbers separated by "
                                      "spaces, commas or new lines (pasted, or a file's contents).")
    layer: int | Literal["embeddings"] = Field(description="Where to write it: a layer or 'embeddings'.")
    model: str | None = Field(None, description="A name from GET /api/models; the server's default if omitted.")
    scales: Literal["auto"] | list[float] = Field("auto", description="'auto' or the norms to write.")
    prompt: Literal["self-explanation", "selfie"] = Field("self-explanation", description="The explanation prompt.")
    max_new_tokens: int = Field(16, ge=1, description="Tokens to generate per scale.")


def parse_vector(value: list[float] | str) -> list[float]:
    """The numbers of a pasted or uploaded vector (brackets, commas, semicolons and white space separate them).

    Raises:
        RequestProblem: No numbers, or a part that is not one (400).
    """
    if isinstance(value, list):
        numbers = [float(x) for x in value]
    else:
        parts = [p for p in re.split(r"[\s,;\[\]()]+", value) if p]
        try:
            numbers = [float(p) for p in parts]
        except ValueError:
            bad = next(p for p in parts if not _is_number(p))
            raise RequestProblem(400, f"the vector holds {bad[:20]!r}, which is not a number",
                                 hint="paste numbers separated by spaces, commas or new lines") from None
    if not numbers:
        raise RequestProblem(400, "the vector is empty", hint="paste or upload the vector's numbers")
    return numbers


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def check_vector_query(query: DescribeVectorQuery, limits: Limits) -> list[float]:
    """The query's vector, after the server's limits.

    Raises:
        RequestProblem: Too many scales or tokens (413), or an unreadable vector (400).
    """
    n_scales = len(AUTO_FACTORS) if query.scales == "auto" else len(query.scales)
    most = min(MAX_SCALES, limits.max_generations)
    if n_scales > most:
        raise RequestProblem(413, f"{n_scales} scales asked for; this server tries at most {most}",
                             hint="give fewer scales, or scales='auto'")
    if query.max_new_tokens > limits.max_new_tokens:
        raise RequestProblem(413, f"{query.max_new_tokens} new tokens asked for; this server generates at most "
                             f"{limits.max_new_tokens}", hint=f"ask for at most {limits.max_new_tokens}")
    return parse_vector(query.vector)


def vector_records(model: LanguageModel, query: DescribeVectorQuery, vector: list[float]) -> list[dict]:
    """:func:`patchscopes.describe_vectors` of one vector, as JSON records (plain Python values)."""
    import torch

    df = describe_vectors(model, torch.tensor(vector, dtype=torch.float32), layer=query.layer, scales=query.scales,
                          prompt=query.prompt, max_new_tokens=query.max_new_tokens)
    return to_records(df)


def add_vector_routes(app: FastAPI, limits: Limits, worker_for: Callable[[str | None], Awaitable],
                      while_connected: Callable[..., Awaitable]) -> None:
    """Add ``POST /api/describe-vector`` to ``app``: ``worker_for`` finds a model's queue (404/429 as for every
    query), ``while_connected`` runs the work there while the client waits."""

    @app.post("/api/describe-vector")
    async def describe_vector(query: DescribeVectorQuery, request: Request) -> Response:
        """Describe one vector at several scales; answers the records of ``patchscopes describe-vectors``."""
        vector = check_vector_query(query, limits)
        worker = await worker_for(query.model)
        try:
            records = await while_connected(request, worker, vector_records, query, vector)
        except Cancelled:
            return Response(status_code=499)
        return JSONResponse(records)
