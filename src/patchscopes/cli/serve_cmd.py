"""``patchscopes serve``: the explorer in the browser (``patchscopes.serve``), on a local web server.

The models named with ``--model`` (or, without any, the installed embedded ones) are the only ones served;
the first is loaded before the URL is printed, the others on first use. Serving on an address other than the
loopback needs ``--token``.
"""

from __future__ import annotations

import functools
import importlib.util
import ipaddress
import re
import secrets
import socket
from typing import Annotated

import typer
from rich.text import Text

from patchscopes.cli import options as opt
from patchscopes.cli.app import app, console, err_console
from patchscopes.errors import PatchscopesError
from patchscopes.models import DEFAULT_MODEL, embedded_status

LOOPBACK = ("127.0.0.1", "localhost", "::1")
HOST_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)", re.ASCII | re.IGNORECASE)


@app.command("serve", short_help="Explore hidden states in the browser.")
@opt.runtime_options(engine=False)
def serve_command(
    model: Annotated[
        list[str] | None,
        typer.Option("--model", "-m", metavar="NAME", show_default=False,
                     help=f"A model to serve; repeat for several. {opt.MODEL_HELP}  [default: the installed "
                     "embedded models]"),
    ] = None,
    host: Annotated[
        str, typer.Option("--host", metavar="ADDRESS", help="Listen here; anything but the loopback needs --token.")
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option("--port", metavar="N", callback=opt.at_least(0, 65535), help="The port (0: a free one).")
    ] = 8765,
    token: Annotated[
        str | None,
        typer.Option("--token", metavar="SECRET", envvar="PATCHSCOPES_TOKEN", show_default=False,
                     help="A secret every request must carry (the printed URL holds it); 'random' makes one up."),
    ] = None,
    max_patches: Annotated[
        int, typer.Option("--max-patches", metavar="N", callback=opt.at_least(1),
                          help="The most patches of one request (next-token readouts).")
    ] = 4096,
    max_prompt_tokens: Annotated[
        int, typer.Option("--max-prompt-tokens", metavar="N", callback=opt.at_least(1),
                          help="The longest source prompt, in tokens.")
    ] = 256,
    *,
    runtime: opt.Runtime,
) -> None:
    """Explore hidden states in the browser: type a prompt, watch the layer × position grid fill in, click a
    cell to have the model describe it.

    Examples:

        patchscopes serve

        patchscopes serve --model smollm2-135m --model gemma3-270m --port 8000

        patchscopes serve --host 0.0.0.0 --token random
    """
    host = check_host(host)  # before anything else: a typo in the address is not worth a model load
    runtime.check()
    missing = [name for name in ("fastapi", "uvicorn") if importlib.util.find_spec(name) is None]
    if missing:
        raise PatchscopesError(f"patchscopes serve needs {' and '.join(missing)}, which is not installed",
                               hint="pip install 'patchscopes[serve]'")
    import uvicorn

    from patchscopes.serve import Limits, ModelPool, create_app

    if token == "random":
        token = secrets.token_urlsafe(18)
    if host not in LOOPBACK and not token:
        raise PatchscopesError(
            f"serving on {host} would let anyone who can reach it run models on this machine",
            hint="add --token SECRET (or --token random), or keep the default --host 127.0.0.1",
        )
    names = list(dict.fromkeys(model or [])) or installed_embedded()
    pool = ModelPool({name: functools.partial(runtime.load, name) for name in names})
    sock = bind(host, port)  # before the model loads: a taken port fails at once
    try:
        console.print(Text.assemble("loading ", (pool.default, "bold"), " ..."), soft_wrap=True)
        pool.worker(pool.default)
        limits = Limits(max_patches=max_patches, max_prompt_tokens=max_prompt_tokens)
        server = uvicorn.Server(uvicorn.Config(create_app(pool, token=token, limits=limits), log_level="warning"))
        if host not in LOOPBACK:
            err_console.print(Text.assemble(("warning: ", "bold yellow"), f"serving on {host}: anyone who can "
                                            "reach this address and has the token can run models here"),
                              soft_wrap=True)
        shown = f"[{host}]" if ":" in host else host
        url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else shown}:{sock.getsockname()[1]}/"
        if token:
            url += f"?token={token}"
        console.print(Text.assemble(("patchscopes explorer", "bold"), f" ({', '.join(pool.names)}): ",
                                    (url, "bold cyan")), soft_wrap=True)
        console.print(Text("Ctrl+C to stop", style="dim"))
        server.run(sockets=[sock])
    finally:
        sock.close()
        pool.close()


def check_host(host: str) -> str:
    """``host`` if it can be an address to listen on: an IP address, or a host name (RFC 1123: dot-separated
    labels of ASCII letters, digits and inner hyphens, each 1 to 63 long, 253 in all); names in lower case.

    Raises:
        PatchscopesError: It can be neither (``bad..name``, ``-x``, a space, a non-ASCII name).
    """
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    if 0 < len(host) <= 253 and all(HOST_LABEL.fullmatch(label) for label in host.split(".")):
        return host.lower()
    raise PatchscopesError(f"--host {host!r} is neither an IP address nor a host name",
                           hint="use an address such as 127.0.0.1 (the default), 0.0.0.0 or ::, or a name such as "
                           "localhost")


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host``:``port`` (port 0: a free one).

    Raises:
        PatchscopesError: The address cannot be used (the port is taken, the host is not this machine's).
    """
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except (OSError, UnicodeError) as err:  # a name the resolver refuses (IDNA) is a UnicodeError
        raise PatchscopesError(f"cannot listen on {host}:{port}: {getattr(err, 'strerror', None) or err}",
                               hint="choose another --port (0 picks a free one) or --host") from err
    sock.listen(128)
    return sock


def installed_embedded() -> list[str]:
    """The installed embedded models, the default first.

    Raises:
        PatchscopesError: None is installed.
    """
    names = [str(row["alias"]) for row in embedded_status() if row["installed"]]
    if not names:
        raise PatchscopesError("no embedded model is installed", hint="name one with --model, or install "
                               "one (see `patchscopes models`)")
    return sorted(names, key=lambda name: name != DEFAULT_MODEL)
