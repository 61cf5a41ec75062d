"""Who may use the explorer: the token, the loopback-only rule, and the headers every answer carries.

:class:`Guard` is a plain ASGI middleware (not Starlette's ``BaseHTTPMiddleware``, which hides a client's
disconnect from the app, and the app drops the work of a client that went away). Without a token it answers
only requests addressed to the loopback host (compared without case, as host names are), a guard against DNS
rebinding; with one, every request must carry it: an ``Authorization: Bearer`` header, the ``token`` query
parameter (the URL the server prints; a ``GET`` with it sets a same-site, HTTP-only cookie) or that cookie.

A request that can change something (any method but ``GET``, ``HEAD``, ``OPTIONS``) and whose ``Origin``
header names another origin than the server's own (another host, another port, ``null``) is refused (403)
unless it carries the token itself, in the header or the query: a page elsewhere, even on another port of
this machine (whose requests carry this host's cookies), cannot make the server run work. Without a token
such a request is always refused.
"""

from __future__ import annotations

import secrets

from fastapi.responses import JSONResponse, Response
from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
DEFAULT_PORTS = {"http": "80", "https": "443"}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; "
                               "base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def problem(status: int, message: str, hint: str | None = None) -> JSONResponse:
    """A JSON error response: ``{"error": message, "hint": hint}``.

    Text that UTF-8 cannot encode (a lone surrogate quoted from the request) is written as its escape, so the
    answer itself never fails.
    """
    return JSONResponse({"error": encodable(message), "hint": None if hint is None else encodable(hint)},
                        status_code=status)


def encodable(text: str) -> str:
    """``text`` with any character UTF-8 cannot encode (a lone surrogate) written as ``\\udXXX``."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def host_name(host_header: str) -> str:
    """The host of a ``Host`` header, without its port (``[::1]:8765`` → ``::1``)."""
    if host_header.startswith("["):
        return host_header[1:].split("]", 1)[0]
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


def origin_address(origin: str) -> str | None:
    """The ``host[:port]`` of an ``Origin`` header, lower case, without its scheme's default port; ``None``
    for ``null`` or a malformed one."""
    scheme, sep, rest = origin.strip().lower().partition("://")
    if not sep or not rest or "/" in rest or "@" in rest:
        return None
    default = DEFAULT_PORTS.get(scheme)
    return rest[: -len(default) - 1] if default and rest.endswith(":" + default) else rest


def own_address(request: Request) -> str:
    """The ``host[:port]`` the request was addressed to (its ``Host`` header), as :func:`origin_address`."""
    host = request.headers.get("host", "").strip().lower()
    default = DEFAULT_PORTS.get(request.url.scheme)
    return host[: -len(default) - 1] if default and host.endswith(":" + default) else host


def foreign_origin(request: Request) -> bool:
    """Whether the request's ``Origin`` header names another origin than the one it was addressed to."""
    origin = request.headers.get("origin")
    return origin is not None and origin_address(origin) != own_address(request)


class Guard:
    """ASGI middleware: checks the token (or, without one, the host) of every HTTP request, adds headers.

    Args:
        app: The application it guards.
        token: The secret every request must carry, or ``None`` to serve the loopback host only.
    """

    def __init__(self, app: ASGIApp, token: str | None = None) -> None:
        self.app = app
        self.token = token

    def cookie_name(self, request: Request) -> str:
        """The token cookie's name, by port: cookies are shared by every port of a host."""
        return f"patchscopes_token_{request.url.port or 0}"

    def refusal(self, request: Request) -> Response | None:
        """The error answer to a request that may not pass, or ``None``."""
        if self.token is None and host_name(request.headers.get("host", "")).lower() not in LOOPBACK_HOSTS:
            return problem(403, "this server only answers requests addressed to 127.0.0.1 or localhost",
                           "open the URL the server printed")
        header = request.headers.get("authorization", "")
        explicit = [header[7:] if header.lower().startswith("bearer ") else None, request.query_params.get("token")]
        if request.method not in SAFE_METHODS and foreign_origin(request) and not self.carries_token(explicit):
            return problem(403, f"this server refuses {request.method} requests from another origin",
                           "use the page this server serves, or send the token in an 'Authorization: Bearer "
                           "TOKEN' header" if self.token else "use the page this server serves")
        if self.token is None or self.carries_token([*explicit, request.cookies.get(self.cookie_name(request))]):
            return None
        return problem(401, "this server needs its token", "open the URL the server printed (it holds ?token=...), "
                       "or send the header 'Authorization: Bearer TOKEN'")

    def carries_token(self, given: list[str | None]) -> bool:
        """Whether one of ``given`` is the token (compared in constant time); never without a token."""
        token = self.token
        return token is not None and any(
            g is not None and secrets.compare_digest(g.encode("utf-8", "surrogatepass"), token.encode())
            for g in given
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        refused = self.refusal(request)
        if refused is not None:
            await refused(scope, receive, send)
            return
        cookie = None
        if self.token is not None and request.method == "GET" and request.query_params.get("token"):
            setter = Response()
            setter.set_cookie(self.cookie_name(request), self.token, httponly=True, samesite="strict")
            cookie = setter.headers["set-cookie"]
        api = request.url.path.startswith("/api/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for key, value in SECURITY_HEADERS.items():
                    headers.setdefault(key, value)
                if api:
                    headers.setdefault("Cache-Control", "no-store")
                if cookie is not None:
                    headers.append("Set-Cookie", cookie)
            await send(message)

        await self.app(scope, receive, send_with_headers)
