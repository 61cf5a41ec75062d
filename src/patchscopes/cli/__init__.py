"""The ``patchscopes`` command line. Each command (or command group) lives in its own module and registers on
:data:`app`; shared options and checks are in :mod:`~patchscopes.cli.options`.

The top tier: commands may import anything of the package; nothing imports them.
"""

from patchscopes.cli.app import app, eval_app, main

# Importing the command modules registers their commands.
from patchscopes.cli import inspect_cmd, models_cmd  # noqa: F401  isort: skip
from patchscopes.cli import eval_next_token_cmd, lens_cmd  # noqa: F401  isort: skip
from patchscopes.cli import eval_attributes_cmd  # noqa: F401  isort: skip
from patchscopes.cli import crossmodel_cmd, eval_entities_cmd  # noqa: F401  isort: skip
from patchscopes.cli import eval_multihop_cmd  # noqa: F401  isort: skip
from patchscopes.cli import future_cmd, lre_cmd  # noqa: F401  isort: skip
from patchscopes.cli import serve_cmd  # noqa: F401  isort: skip
from patchscopes.cli import knockout_cmd, trace_cmd  # noqa: F401  isort: skip
from patchscopes.cli import vectors_cmd  # noqa: F401  isort: skip

__all__ = ["app", "eval_app", "main"]
