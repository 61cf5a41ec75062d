"""The browser explorer behind ``patchscopes serve``: a FastAPI app, its JSON API, the streamed grid and the
page (``static/``: plain HTML, CSS and JavaScript shipped with the package; no CDN, no build step).

A front end like the command line, at its tier: it imports the root framework (sweep, presets, results,
specs) and the models below it; nothing of the package imports it. It needs the ``serve`` extra (fastapi,
uvicorn): ``pip install 'patchscopes[serve]'``.
"""

from patchscopes.serve.app import create_app
from patchscopes.serve.pool import ModelPool, ModelWorker
from patchscopes.serve.queries import DescribeQuery, InspectQuery, Limits

__all__ = ["DescribeQuery", "InspectQuery", "Limits", "ModelPool", "ModelWorker", "create_app"]
