"""Models: the :class:`LanguageModel` wrapper, loading (embedded aliases, GGUF conversion and its cache, local
folders, hub ids) and the architecture descriptions that say where each family keeps its blocks.

The bottom of the package: modules here import nothing of ``patchscopes`` but :mod:`patchscopes.errors` and
each other.
"""

from patchscopes.models.architectures import (
    BUILTIN_ARCHITECTURES,
    ArchitectureSpec,
    get_module,
    known_model_types,
    register_architecture,
)
from patchscopes.models.embedded import (
    DEFAULT_MODEL,
    EMBEDDED_MODELS,
    EmbeddedModel,
    cache_dir,
    converted_dir,
    embedded_status,
    is_converted,
    mark_converted,
)
from patchscopes.models.language_model import LanguageModel
from patchscopes.models.loading import load_model, quiet_transformers

__all__ = [
    "BUILTIN_ARCHITECTURES",
    "DEFAULT_MODEL",
    "EMBEDDED_MODELS",
    "ArchitectureSpec",
    "EmbeddedModel",
    "LanguageModel",
    "cache_dir",
    "converted_dir",
    "embedded_status",
    "get_module",
    "is_converted",
    "known_model_types",
    "load_model",
    "mark_converted",
    "quiet_transformers",
    "register_architecture",
]
