"""The :class:`LanguageModel` wrapper the engine works on: a Hugging Face causal LM, its tokenizer and its layout."""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
from torch import nn

from patchscopes.errors import PatchscopesError, check_text
from patchscopes.models.architectures import ArchitectureSpec, registered_architecture, resolve_architecture
from patchscopes.models.discovery import discover_architecture
from patchscopes.models.proof import FastPathSupport, prove_layout
from patchscopes.models.token_text import readable_token


class LanguageModel:
    """A causal language model, its tokenizer and the location of its parts.

    Most users get one from :func:`load_model`; wrapping an already loaded Hugging Face model works too::

        lm = LanguageModel(AutoModelForCausalLM.from_pretrained(...), AutoTokenizer.from_pretrained(...))

    Args:
        hf_model: A Hugging Face ``*ForCausalLM`` model.
        tokenizer: Its tokenizer.
        name: A name for messages and result tables.
        spec: The architecture description; by default the one registered for the model type or class, or
            else the layout found from the model itself (:func:`~patchscopes.models.discovery.discover_architecture`).

        proof: The outcome of a proof already made on the same weights, layout, device and dtype
            (:func:`load_model` keeps one per checkpoint); by default the layout is proved here.

    The layout is proved on a few tokens (:func:`~patchscopes.models.proof.prove_layout`); :attr:`fast_path`
    says whether the batched engine's fast path is exact on this model.

    Raises:
        PatchscopesError: The layout cannot be found, or fails the proof.
    """

    def __init__(
        self,
        hf_model: nn.Module,
        tokenizer,
        *,
        name: str | None = None,
        spec: ArchitectureSpec | None = None,
        proof: FastPathSupport | None = None,
    ) -> None:
        self.hf = hf_model.eval()
        self.tokenizer = tokenizer
        self.name = name or getattr(hf_model.config, "_name_or_path", None) or type(hf_model).__name__
        self.arch = resolve_architecture(
            hf_model, spec or registered_architecture(hf_model) or discover_architecture(hf_model))
        params = inspect.signature(hf_model.forward).parameters
        self._cache_kwarg = "cache" if "cache" in params else "past_key_values"
        self._accepts_logits_to_keep = "logits_to_keep" in params
        self._token_texts: dict[int, str] = {}
        self.fast_path: FastPathSupport = proof if proof is not None else prove_layout(self)

    def __repr__(self) -> str:
        return (
            f"LanguageModel({self.name!r}, family={self.arch.spec.name!r}, layers={self.num_layers}, "
            f"d={self.hidden_size}, device={self.device}, dtype={self.dtype})"
        )

    # -- sizes ------------------------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        """L, the number of decoder blocks."""
        return len(self.arch.blocks)

    @property
    def hidden_size(self) -> int:
        """d, the width of the residual stream."""
        return int(self.arch.unembed.weight.shape[1])

    @property
    def vocab_size(self) -> int:
        """The number of logits the unembedding produces."""
        return int(self.arch.unembed.weight.shape[0])

    @property
    def device(self) -> torch.device:
        """The device of the token embedding (where inputs go)."""
        return self.arch.embed.weight.device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the residual stream."""
        return self.arch.embed.weight.dtype

    @property
    def context_length(self) -> int | None:
        """The most positions the model reads (its config's ``max_position_embeddings``); ``None`` if unknown."""
        n = getattr(self.hf.config, "max_position_embeddings", None)
        return n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else None

    def check_length(self, n_positions: int, what: str = "prompt") -> None:
        """Refuse ``what`` (a prompt, or a prompt and the tokens to generate after it) when its
        ``n_positions`` exceed :attr:`context_length`, rather than run it past what the model was made for.

        Raises:
            PatchscopesError: Too many positions.
        """
        limit = self.context_length
        if limit is not None and n_positions > limit:
            raise PatchscopesError(
                f"the {what} takes {n_positions} positions, more than the {limit} {self.name} can read",
                hint="shorten it (keep the part around the tokens you inspect), or use a model with a longer context",
            )

    # -- tokens -----------------------------------------------------------------------------------------
    def encode(self, prompt: str) -> list[int]:
        """Token ids of ``prompt``, with the special tokens the tokenizer adds (positions index these).

        Raises:
            PatchscopesError: ``prompt`` is not valid Unicode text (:func:`~patchscopes.errors.check_text`).
        """
        return list(self.tokenizer(check_text(prompt), add_special_tokens=True)["input_ids"])

    def token_strings(self, ids: Sequence[int]) -> list[str]:
        """Each token decoded on its own (each id decoded once per model, then remembered: a sweep reads the
        same few thousand tokens hundreds of thousands of times)."""
        known = self._token_texts
        out = []
        for i in ids:
            i = int(i)
            text = known.get(i)
            if text is None:
                text = known[i] = self.tokenizer.decode([i])
            out.append(text)
        return out

    def token_labels(self, ids: Sequence[int]) -> list[str]:
        """Each token as a person reads it: :meth:`token_strings`, except that a token which is part of a
        character (a byte of ``東`` or of an emoji, ``"�"`` when decoded alone) shows its bytes as ``<0xE6>``
        (:func:`~patchscopes.models.token_text.readable_token`). Results' ``source_token`` and ``top_tokens``
        are these."""
        return [readable_token(self.tokenizer, i, text) for i, text in zip(ids, self.token_strings(ids))]

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids`` without special tokens."""
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)

    @property
    def eos_token_ids(self) -> set[int]:
        """Token ids that end generation (from the generation config and the tokenizer)."""
        ids: set[int] = set()
        gen = getattr(self.hf, "generation_config", None)
        for value in (getattr(gen, "eos_token_id", None), getattr(self.tokenizer, "eos_token_id", None)):
            if isinstance(value, int):
                ids.add(value)
            elif isinstance(value, (list, tuple)):
                ids.update(int(v) for v in value)
        return ids

    @property
    def pad_token_id(self) -> int:
        """A token id for padding (never attended to)."""
        for value in (getattr(self.tokenizer, "pad_token_id", None), *sorted(self.eos_token_ids)):
            if isinstance(value, int):
                return value
        return 0

    # -- computation ------------------------------------------------------------------------------------
    def final_normed(self, hidden: torch.Tensor) -> torch.Tensor:
        """The final norm applied to residual-stream vectors (what the unembedding reads)."""
        hidden = hidden.to(self.arch.final_norm.weight.device if hasattr(self.arch.final_norm, "weight")
                           else self.device)
        return self.arch.final_norm(hidden)

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final norm, unembedding and soft-capping applied to residual-stream vectors (logit lens)."""
        return self.arch.transform_logits(self.arch.unembed(self.final_normed(hidden)))

    def forward(
        self,
        input_ids: torch.Tensor | None,
        *,
        inputs_embeds: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache=None,
        use_cache: bool = False,
        logits_to_keep: int | torch.Tensor | None = None,
    ):
        """One forward pass of the Hugging Face model; returns ``(logits, cache)``.

        The input is token ids, or ``inputs_embeds`` (what the token embedding would give, ``(b, n, d)``) with
        ``input_ids=None``.
        """
        kwargs = {
            "input_ids": None if input_ids is None else input_ids.to(self.device),
            "attention_mask": None if attention_mask is None else attention_mask.to(self.device),
            "position_ids": None if position_ids is None else position_ids.to(self.device),
            "use_cache": use_cache,
            self._cache_kwarg: cache,
        }
        if inputs_embeds is not None:
            kwargs["inputs_embeds"] = inputs_embeds.to(self.device)
        if logits_to_keep is not None and self._accepts_logits_to_keep:
            kwargs["logits_to_keep"] = logits_to_keep
        out = self.hf(**kwargs)
        if not use_cache:
            return out.logits, None
        key = self._cache_kwarg
        return out.logits, out.get(key) if hasattr(out, "get") else getattr(out, key, None)

    def token_at_char(self, prompt: str, ids: Sequence[int], char: int) -> int:
        """The index of the token of ``ids`` (``prompt`` encoded) that covers character ``char`` of ``prompt``."""
        tok = self.tokenizer
        try:
            enc = tok(prompt, add_special_tokens=True, return_offsets_mapping=True)
            offsets = enc["offset_mapping"]
        except (NotImplementedError, TypeError, ValueError, KeyError):
            offsets = None
        if offsets is not None and len(offsets) == len(ids):
            best = None
            for index, (start, stop) in enumerate(offsets):
                if start == stop:  # special tokens
                    continue
                if start <= char < stop or (best is None and start > char):
                    best = index
            if best is not None:
                return best
        # Without offsets: the first prefix of tokens whose decoded text covers the character.
        for index in range(len(ids)):
            if len(tok.decode(ids[: index + 1], skip_special_tokens=True)) > char:
                return index
        return len(ids) - 1

    def check_layer(self, layer: int, what: str = "layer") -> int:
        """Resolve a possibly negative layer index to ``[0, L)``; raise a clear error if out of range."""
        n = self.num_layers
        if not isinstance(layer, (int,)) or isinstance(layer, bool):
            raise PatchscopesError(f"{what} must be an integer, got {layer!r}")
        if not -n <= layer < n:
            raise PatchscopesError(
                f"{what} {layer} is out of range for {self.name} ({n} layers)",
                hint=f"use a layer in 0..{n - 1}, or -1..-{n} to count from the end",
            )
        return layer % n
