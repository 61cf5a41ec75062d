"""The explorer's last lines of defence: a bound on request bodies, and a JSON answer to any failure.

:class:`BodyLimit` refuses a request whose body is over the limit (413) before the app reads it, whether its
``Content-Length`` says so or a chunked body grows past it. :class:`Failsafe` turns an exception that no
handler answered into a JSON 500 (``{"error", "hint"}``, as every other error), never Starlette's plain-text
"Internal Server Error", and logs its traceback. :func:`input_errors` is for the code that reads a request's
input: whatever it raises from bad input becomes a :class:`~patchscopes.errors.PatchscopesError` (400).

Both middlewares are plain ASGI ones (as :class:`~patchscopes.serve.guard.Guard`), which keep a client's
disconnect visible to the app.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from patchscopes.errors import PatchscopesError
from patchscopes.serve.guard import problem

logger = logging.getLogger("patchscopes.serve")

MAX_BODY_BYTES = 1 << 20  # 1 MiB: a prompt at its longest, escaped, is a few tens of kB
BODILESS_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
DIGITS = re.compile(r"[0-9]+")


def too_large(max_bytes: int):
    """The 413 answer to a body over ``max_bytes``."""
    return problem(413, f"the request body is over this server's limit of {max_bytes:,} bytes",
                   hint="send a shorter prompt (the limits are in GET /api/models)")


class BodyLimit:
    """ASGI middleware: refuses (413) a request body over ``max_bytes``, and hands the app the body it read.

    Args:
        app: The application it guards.
        max_bytes: The largest body accepted.
    """

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in BODILESS_METHODS:
            await self.app(scope, receive, send)
            return
        length = Headers(scope=scope).get("content-length")
        if length is not None and not DIGITS.fullmatch(length):
            await problem(400, "the Content-Length header is not a number",
                          hint="send the body's length in bytes, or no Content-Length")(scope, receive, send)
            return
        if length is not None and int(length) > self.max_bytes:
            await too_large(self.max_bytes)(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:  # read the body here, so that a chunked one cannot grow past the limit either
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client went away before it finished sending: nothing to answer
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                await too_large(self.max_bytes)(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()  # then the client's own messages: its disconnect stays visible

        await self.app(scope, replay, send)


class Failsafe:
    """ASGI middleware: an exception no handler answered becomes a JSON 500, and its traceback is logged.

    An exception raised after the response started (a stream) cannot change its status: it is logged and
    raised again, and the server closes the connection.

    Args:
        app: The application it wraps.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as err:
            logger.exception("request %s %s failed", scope.get("method"), scope.get("path"))
            if started:
                raise
            text = f"{type(err).__name__}: {err}"
            answer = problem(500, f"the server failed on this request: {text[:300]}",
                             hint="this is a bug in patchscopes; please report it with the request that caused it")
            await answer(scope, receive, send)


@contextmanager
def input_errors(what: str = "the query") -> Iterator[None]:
    """Turn what reading a request's input raises, other than a :class:`PatchscopesError`, into one (400).

    For the code that only checks and resolves a request (its SPECs, its prompt's tokens), where any error is
    caused by the input: an ``OverflowError`` from a huge number, a ``TypeError`` from the tokenizer, a
    ``MemoryError`` from a range too large to build.

    Raises:
        PatchscopesError: The input could not be read.
    """
    try:
        yield
    except PatchscopesError:
        raise
    except MemoryError as err:
        raise PatchscopesError(f"{what} is too large for this server's memory",
                               hint="sweep fewer layers or positions") from err
    except (ValueError, TypeError, OverflowError, ArithmeticError, RecursionError, LookupError) as err:
        raise PatchscopesError(f"{what} could not be read: {type(err).__name__}: {str(err)[:300]}",
                               hint="check the prompt and the SPECs (GET /api/openapi.json has the fields)") from err
