"""``patchscopes serve``: the explorer in the browser (``patchscopes.serve``), on a local web server.

The models named with ``--model`` (or, without any, the installed embedded ones) are the only ones served;
the first is loaded before the URL is printed, the others on first use. Serving on an address other than the
loopback needs ``--token``.
"""

from __future__ import annotations

import importlib.util
import secrets
import socket
from typing import Annotated

import typer
from rich.text import Text

from patchscopes.cli.app import app, console, err_console, handle_errors
from patchscopes.cli.options import DeviceOption, DtypeOption
from patchscopes.errors import PatchscopesError
from patchscopes.models import DEFAULT_MODEL, embedded_status, load_model

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@app.command("serve")
@handle_errors
def serve_command(
    model: Annotated[
        list[str] | None,
        typer.Option("--model", "-m", help="A model to serve (repeat for several): an embedded alias, a .gguf "
                     "file, a local Hugging Face folder or a hub id. Default: the installed embedded models."),
    ] = None,
    host: Annotated[str, typer.Option("--host", help="The address to listen on. Anything but the loopback "
                                      "needs --token.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="The port (0: any free port).")] = 8765,
    token: Annotated[
        str | None,
        typer.Option("--token", envvar="PATCHSCOPES_TOKEN", help="A secret every request must carry (the printed "
                     "URL holds it). Needed with --host other than 127.0.0.1; 'random' makes one up."),
    ] = None,
    device: DeviceOption = "cpu",
    dtype: DtypeOption = None,
    max_patches: Annotated[int, typer.Option("--max-patches", min=1, help="The most patches one request may "
                                             "run (next-token readouts).")] = 4096,
    max_prompt_tokens: Annotated[int, typer.Option("--max-prompt-tokens", min=1, help="The longest source prompt, "
                                                   "in tokens.")] = 256,
) -> None:
    """Explore hidden states in the browser: type a prompt, watch the layer × position grid fill in, click a cell
    to have the model describe it.

    Examples:

        patchscopes serve

        patchscopes serve --model smollm2-135m --model gemma3-270m --port 8000

        patchscopes serve --host 0.0.0.0 --token random
    """
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
    pool = ModelPool({name: _loader(name, device, dtype) for name in names})
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
    except OSError as err:
        raise PatchscopesError(f"cannot listen on {host}:{port}: {err.strerror or err}",
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


def _loader(name: str, device: str, dtype: str | None):
    return lambda: load_model(name, device=device, dtype=dtype)
