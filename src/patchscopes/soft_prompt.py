"""Soft prompts: a target prompt whose middle is given as input vectors instead of tokens.

A :class:`SoftPrompt` is k vectors (in the space of the token embedding's output) with optional text or
token ids before and after; it goes wherever a target prompt does::

    prompt = SoftPrompt(vectors, after=" means")
    Target(prompt, layer=5, position=prompt.last_vector_position(model))

Positions index the whole sequence: the tokens of ``before`` (with the tokenizer's special tokens, as any
prompt), then the k vectors, then the tokens of ``after``. It is saved as safetensors with the model's identity
in its metadata, and :meth:`SoftPrompt.load` refuses it on another model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from patchscopes.errors import PatchscopesError, check_text
from patchscopes.models import LanguageModel
from patchscopes.models.identity import check_model_identity, model_identity
from patchscopes.storage import read_safetensors, write_safetensors

FORMAT = "patchscopes-soft-prompt"


@dataclass(eq=False)
class SoftPrompt:
    """k input vectors, with text (or token ids) around them.

    Attributes:
        vectors: ``(k, d)``, read in place of token embeddings.
        before: Text (encoded with the special tokens, as a prompt) or token ids (as given) before the vectors.
        after: Text (encoded without special tokens) or token ids after the vectors.
        name: A label for results.
        metadata: What was saved with it (the model's identity under ``model``, training settings...).
    """

    vectors: torch.Tensor
    before: str | tuple[int, ...] = ""
    after: str | tuple[int, ...] = ""
    name: str = "soft prompt"
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.vectors, torch.Tensor) or self.vectors.ndim != 2 or not self.vectors.shape[0]:
            shape = tuple(self.vectors.shape) if isinstance(self.vectors, torch.Tensor) else type(self.vectors)
            raise PatchscopesError(f"a soft prompt needs a (k, d) tensor of vectors with k >= 1, got {shape}")

    def __repr__(self) -> str:
        return f"SoftPrompt({self.name!r}, k={len(self)}, before={self.before!r}, after={self.after!r})"

    def __len__(self) -> int:
        return int(self.vectors.shape[0])

    def with_after(self, after: str | tuple[int, ...]) -> SoftPrompt:
        """The same vectors (shared, not copied) followed by ``after``."""
        return SoftPrompt(self.vectors, self.before, after, self.name, self.metadata)

    def token_layout(self, model: LanguageModel) -> tuple[list[int], list[int]]:
        """The token ids before and after the vectors, for ``model``."""
        before = model.encode(self.before) if isinstance(self.before, str) else [int(t) for t in self.before]
        if isinstance(self.after, str):
            after = (list(model.tokenizer(check_text(self.after, "soft prompt's text after the vectors"),
                                          add_special_tokens=False)["input_ids"]) if self.after else [])
        else:
            after = [int(t) for t in self.after]
        return before, after

    def last_vector_position(self, model: LanguageModel) -> int:
        """The position of the last vector in the whole sequence (where the future lens patches)."""
        return len(self.token_layout(model)[0]) + len(self) - 1

    def check_model(self, model: LanguageModel) -> None:
        """Raise unless the vectors fit ``model``'s width (and, if recorded, it was made for ``model``)."""
        if self.vectors.shape[1] != model.hidden_size:
            raise PatchscopesError(f"the soft prompt {self.name!r} has vectors of size {self.vectors.shape[1]}, but "
                                   f"{model.name} reads vectors of size {model.hidden_size}")
        if "model" in self.metadata:
            check_model_identity(self.metadata["model"], model, f"the soft prompt {self.name!r}")

    def save(self, path: str | Path, model: LanguageModel | None = None) -> Path:
        """Write the vectors as safetensors; with ``model``, record its identity (checked on loading)."""
        meta = dict(self.metadata)
        if model is not None:
            self.check_model(model)
            meta["model"] = model_identity(model)
        info = {"name": self.name, "before": self.before if isinstance(self.before, str) else list(self.before),
                "after": self.after if isinstance(self.after, str) else list(self.after), "metadata": meta}
        return write_safetensors(path, {"vectors": self.vectors.detach().float()},
                                 {"format": FORMAT, "soft_prompt": json.dumps(info)}, "the soft prompt")

    @classmethod
    def load(cls, path: str | Path, model: LanguageModel | None = None) -> SoftPrompt:
        """Read a soft prompt written by :meth:`save`; with ``model``, check it fits that model.

        Raises:
            PatchscopesError: The file is missing or not a soft prompt, or it was made for another model.
        """
        metadata, tensors = read_safetensors(path, "the soft prompt")
        vectors = tensors.get("vectors")
        if metadata.get("format") != FORMAT or vectors is None:
            raise PatchscopesError(f"{path} is not a soft-prompt file")
        info = json.loads(metadata["soft_prompt"])
        before, after = info["before"], info["after"]
        prompt = cls(vectors, before if isinstance(before, str) else tuple(before),
                     after if isinstance(after, str) else tuple(after), info["name"], info["metadata"])
        if model is not None:
            prompt.check_model(model)
        return prompt
