"""Data: relations, entities, text documents and windows, two-hop queries. Pure data.

- :mod:`~patchscopes.data.relation_types`: relations, their samples, source contexts, located samples.
- :mod:`~patchscopes.data.relation_loaders`: relation files (JSON of Hernandez et al., the paper's TSVs).
- :mod:`~patchscopes.data.target_prompts`: the placeholder ``x``, the paper's target prompts, verbalization.
- :mod:`~patchscopes.data.contexts`: source contexts of a subject and its position in them.
- :mod:`~patchscopes.data.matching`: whether a generated text names an object (normalised, whole words).
- :mod:`~patchscopes.data.relations`: all of the five above under one import (the path of 0.2).
- :mod:`~patchscopes.data.entities`: entity files (PopQA, WikiDes shapes) and their selection.
- :mod:`~patchscopes.data.text`: plain-text documents, the fit/eval split, token windows.
- :mod:`~patchscopes.data.two_hop`: two-hop queries chained from relations (multi-hop correction).
- :mod:`~patchscopes.data.tokens`: :class:`Tokenizes`, all that data code asks of a model.

Nothing here loads or runs a model: modules import :mod:`patchscopes.errors` and each other, never
:mod:`patchscopes.models`, :mod:`patchscopes.engine`, ``runner`` or ``sweep``. Code that needs tokens takes any
object that tokenizes (:class:`Tokenizes`); a :class:`~patchscopes.models.LanguageModel` is one.
"""

from patchscopes.data.entities import Entity, EntitySet, read_entities, select_entities
from patchscopes.data.matching import mentions, normalize_text
from patchscopes.data.relation_loaders import load_relation, load_relations
from patchscopes.data.relation_types import Relation
from patchscopes.data.text import Document, Documents, Window, read_documents, split_documents, token_windows
from patchscopes.data.tokens import Tokenizes
from patchscopes.data.two_hop import TwoHopQuery, build_queries

__all__ = [
    "Document",
    "Documents",
    "Entity",
    "EntitySet",
    "Relation",
    "Tokenizes",
    "TwoHopQuery",
    "Window",
    "build_queries",
    "load_relation",
    "load_relations",
    "mentions",
    "normalize_text",
    "read_documents",
    "read_entities",
    "select_entities",
    "split_documents",
    "token_windows",
]
