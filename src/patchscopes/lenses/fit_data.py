"""Hidden states at sampled positions of text documents: what the affine and tuned lenses are fitted on."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from patchscopes.data.text import Document, Window, data_fingerprint, token_windows
from patchscopes.engine import capture_states
from patchscopes.errors import PatchscopesError
from patchscopes.lenses.base import digest_key
from patchscopes.models import LanguageModel


# -- hidden states at sampled positions ------------------------------------------------------------------
@dataclass
class FitData:
    """The windows and positions a lens is fitted on.

    Attributes:
        windows: The windows (each contributes several positions).
        positions: For each window, the positions sampled (text tokens after the first).
        documents: The documents the windows come from.
        skipped: Windows skipped as too short.
    """

    windows: list[Window]
    positions: list[list[int]]
    documents: list[Document]
    skipped: int

    @property
    def samples(self) -> int:
        return sum(len(p) for p in self.positions)

    def info(self) -> dict:
        """The ``data`` entry of a lens config."""
        used = sorted({w.document for w in self.windows})
        return {
            "fingerprint": data_fingerprint(self.documents[i].text for i in used),
            "documents": len(used),
            "windows": len(self.windows),
            "samples": self.samples,
            "skipped_windows": self.skipped,
        }

    def document_keys(self) -> torch.Tensor:
        used = sorted({w.document for w in self.windows})
        return torch.tensor([digest_key(self.documents[i].digest) for i in used], dtype=torch.long)


def plan_fit_data(
    model: LanguageModel,
    documents: Sequence[Document | str],
    *,
    samples: int,
    max_tokens: int = 64,
    seed: int = 0,
) -> FitData:
    """Choose windows (shuffled, seeded) and use every text position after the first until ``samples``.

    Every position of a window is a sample: a forward pass yields as many vectors as it reads tokens. The
    first text token of a window is left out (with no context it carries the attention-sink outliers of
    models without a ``<bos>`` token).

    Raises:
        PatchscopesError: No document is long enough.
    """
    docs = [d if isinstance(d, Document) else Document(d) for d in documents]
    if samples < 1:
        raise PatchscopesError(f"samples must be at least 1, got {samples}")
    windows, skipped = token_windows(model, docs, max_tokens=max_tokens, min_tokens=2)
    if not windows:
        raise PatchscopesError(
            "no fitting document is long enough (2 tokens or more)", hint="give more or longer text"
        )
    order = torch.randperm(len(windows), generator=torch.Generator().manual_seed(seed)).tolist()
    chosen, positions, total = [], [], 0
    for i in order:
        if total >= samples:
            break
        w = windows[i]
        pos = list(range(w.start + 1, len(w.ids)))[: samples - total]
        chosen.append(w)
        positions.append(pos)
        total += len(pos)
    return FitData(chosen, positions, docs, skipped)


def capture_all_layers(
    model: LanguageModel, sequences: Sequence[Sequence[int]], positions: Sequence[Sequence[int]]
) -> torch.Tensor:
    """The output of every block at the given positions of each sequence, from one batched forward.

    Args:
        model: The model.
        sequences: Token ids (run left-padded in one batch).
        positions: For each sequence, the positions to read.

    Returns:
        ``(n, L, d)`` in float32, rows in the order of the (sequence, position) pairs.
    """
    return capture_states(model, sequences, positions)


def iter_hidden(
    model: LanguageModel, data: FitData, *, batch_size: int = 32, progress: bool = False, desc: str = "reading",
    skip: int = 0,
):
    """Yield ``(n, L, d)`` hidden states of ``data`` batch by batch (windows sorted by length), after the first
    ``skip`` batches (a resumed fit has them already)."""
    order = sorted(range(len(data.windows)), key=lambda i: len(data.windows[i].ids))
    bar = tqdm(total=data.samples, desc=desc, unit="vec", disable=not progress)
    try:
        bar.update(sum(len(data.positions[i]) for i in order[: skip * batch_size]))
        for start in range(skip * batch_size, len(order), batch_size):
            part = order[start: start + batch_size]
            seqs = [data.windows[i].ids[: max(data.positions[i]) + 1] for i in part]
            hidden = capture_all_layers(model, seqs, [data.positions[i] for i in part])
            bar.update(hidden.shape[0])
            yield hidden
    finally:
        bar.close()
