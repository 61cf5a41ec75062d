"""Micro-batching under a memory budget, with out-of-memory back-off on GPUs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch

from patchscopes.errors import PatchscopesError, check_integer

T = TypeVar("T")
R = TypeVar("R")

_OOM_ERRORS: tuple[type[BaseException], ...] = tuple(
    e for e in (getattr(torch, "OutOfMemoryError", None), getattr(torch.cuda, "OutOfMemoryError", None)) if e
)


@dataclass(frozen=True)
class BatchBudget:
    """How much one forward pass may hold. A batch is cut at whichever limit comes first.

    Attributes:
        rows: The most batch rows.
        tokens: The most tokens (rows × tokens each row runs).
        bytes: The memory one batch may need (estimated), and the most source states a run holds at once (runs.memory).
    """

    rows: int | None = 256
    tokens: int | None = 16384
    bytes: int | None = None

    def __post_init__(self) -> None:
        for name in ("rows", "tokens", "bytes"):
            value, hint = getattr(self, name), f"e.g. BatchBudget({name}=256), or None for no limit"
            if value is not None:
                check_integer(value, f"the batch budget's {name}", hint)
                if value < 1:
                    raise PatchscopesError(f"the batch budget's {name} must be at least 1, got {value}", hint=hint)

    def rows_per_batch(self, tokens_per_row: int, bytes_per_row: int) -> int:
        """How many rows fit in one batch."""
        limits = [self.rows] if self.rows else []
        if self.tokens:
            limits.append(self.tokens // max(1, tokens_per_row))
        if self.bytes:
            limits.append(self.bytes // max(1, bytes_per_row))
        return max(1, min(limits)) if limits else 1 << 30


GPU_ROWS = 4096
"""The most rows of one batch on a GPU: on an H200 a 7B token-identity sweep ran 1.4× faster with 4,096 rows and
262,144 tokens than with the CPU default (fewer, larger kernels; see docs/performance.md)."""
GPU_TOKENS = 262144
MEMORY_FRACTION = 0.5
"""The share of a GPU's free memory one batch may plan for (the estimates are rough; out-of-memory halves it)."""


def budget_for_memory(free_bytes: int | None, *, fraction: float = MEMORY_FRACTION) -> BatchBudget:
    """The batch budget for a device with ``free_bytes`` of free memory (``None``: the CPU default).

    On a GPU, batches are as large as :data:`GPU_ROWS` and :data:`GPU_TOKENS` allow, and their estimated memory
    stays under ``fraction`` of the free memory.
    """
    if free_bytes is None:
        return BatchBudget()
    return BatchBudget(rows=GPU_ROWS, tokens=GPU_TOKENS, bytes=max(1, int(free_bytes * fraction)))


def device_budget(models: Sequence, *, fraction: float = MEMORY_FRACTION) -> BatchBudget:
    """The batch budget for ``models`` where they are: the CPU default, or sized from the least free memory of
    the GPUs holding them (a model spread over several GPUs with ``device="auto"`` counts each of them)."""
    devices = {p.device for m in models for p in m.hf.parameters() if p.device.type == "cuda"}
    if not devices:
        return BatchBudget()
    return budget_for_memory(min(torch.cuda.mem_get_info(d)[0] for d in devices), fraction=fraction)


def chunks(items: Sequence[T], size: int) -> list[Sequence[T]]:
    """``items`` cut into consecutive pieces of at most ``size``."""
    return [items[i: i + size] for i in range(0, len(items), size)]


def run_with_backoff(fn: Callable[[Sequence[T]], list[R]], items: Sequence[T]) -> list[R]:
    """Call ``fn(items)``; on a GPU out-of-memory error, halve the batch and retry each half."""
    try:
        return fn(items)
    except _OOM_ERRORS as err:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if len(items) <= 1:
            raise PatchscopesError(
                "out of memory on a single batch row",
                hint="use a smaller model, a shorter prompt, fewer new tokens, or another device",
            ) from err
        half = len(items) // 2
        return run_with_backoff(fn, items[:half]) + run_with_backoff(fn, items[half:])


def kv_bytes_per_token(model) -> int:
    """Bytes of key/value cache one token takes across all layers (an estimate from the config)."""
    cfg = model.hf.config.get_text_config() if hasattr(model.hf.config, "get_text_config") else model.hf.config
    def get(name: str):  # per-layer configs (Gemma 4) refuse global reads: take the estimate's fallback
        try:
            return getattr(cfg, name, None)
        except Exception:
            return None

    heads = get("num_attention_heads") or get("n_head") or 1
    kv_heads = get("num_key_value_heads") or heads
    head_dim = get("head_dim") or model.hidden_size // heads
    element = torch.finfo(model.dtype).bits // 8
    return 2 * model.num_layers * kv_heads * head_dim * element
