"""Models: the :class:`LanguageModel` wrapper, loading (embedded aliases, GGUF conversion and its cache, local
folders, hub ids), the architecture descriptions that say where each family keeps its blocks, the discovery
of a layout no description gives, and the proof every layout passes at load.

The bottom of the package: modules here import nothing of ``patchscopes`` but :mod:`patchscopes.errors` and
each other.
"""

from patchscopes.models.architectures import (
    BUILTIN_ARCHITECTURES,
    ArchitectureSpec,
    get_module,
    known_model_types,
    register_architecture,
    registered_architecture,
)
from patchscopes.models.discovery import discover_architecture
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
from patchscopes.models.proof import FastPathSupport, prove_layout

__all__ = [
    "BUILTIN_ARCHITECTURES",
    "DEFAULT_MODEL",
    "EMBEDDED_MODELS",
    "ArchitectureSpec",
    "EmbeddedModel",
    "FastPathSupport",
    "LanguageModel",
    "cache_dir",
    "converted_dir",
    "discover_architecture",
    "embedded_status",
    "get_module",
    "is_converted",
    "known_model_types",
    "load_model",
    "mark_converted",
    "prove_layout",
    "quiet_transformers",
    "register_architecture",
    "registered_architecture",
]
