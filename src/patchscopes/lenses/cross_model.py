"""Cross-model maps: affine maps from layer l of a source model A to layer l* of a target model B (paper, Exp. 4).

**Aligned positions.** A and B may tokenize the same text differently. A position pair (i, j) is *aligned*
when A's tokens up to i and B's tokens up to j decode to the same prefix of the text: both models have then
read exactly the same characters (the paper's criterion: "the same decoded prefix"). :func:`prefix_ends`
decodes every prefix of each model's tokens and keeps those that reproduce the text up to some character;
:func:`aligned_positions` pairs the indices of the two models that end at the same character. Special tokens
(``<bos>``) come first and are never aligned; the first text token of each model is left out too (with no
context before it, it carries the attention-sink outliers of models without ``<bos>``).

**Windows.** Each document (a paragraph, see :mod:`patchscopes.data.text`) is cut into pieces of at most
``max_tokens`` tokens of A at A's token boundaries (:func:`text_windows`); both models read each piece.

**The fit.** At the aligned positions of shuffled windows (every aligned position of a window, until
``samples`` vectors), A's output of block l and B's output of block l* are collected, and
:func:`patchscopes.lenses.fit_affine` solves least squares with bias (optional ridge) for every (l, l*) pair.

**The file.** All pairs go in one safetensors file: tensors ``map.{l}.{l*}.weight`` ``(d_B, d_A)``,
``map.{l}.{l*}.bias`` ``(d_B,)`` and ``fit_documents`` (hashes of the fitting documents, so an evaluation can
leave them out), with string metadata ``format``, ``source_model``, ``target_model``, ``layers``,
``target_layers``, ``source_hidden_size``, ``target_hidden_size``, ``data_fingerprint``, ``samples``,
``ridge`` and ``config`` (all of it as JSON: both models' identities, the data, the in-sample R² of every
pair). :meth:`CrossModelMap.export` writes one pair as a plain :class:`~patchscopes.mappings.Affine` file,
which ``Target(mapping="file.safetensors")`` accepts.

    >>> cmap = fit_cross_model_map(smollm2, gemma, documents, layers="0:30:3", target_layers="0:18:3")
    >>> cmap.save("maps/smollm2-to-gemma.safetensors")
    >>> Target(prompt, layer=6, mapping=CrossModelMap.load("maps/...").mapping(9, 6), model=gemma)
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from patchscopes.data.text import Document, data_fingerprint, special_prefix
from patchscopes.errors import PatchscopesError
from patchscopes.lenses.affine import fit_affine
from patchscopes.lenses.base import compare_identity, digest_key, fitted_on, model_identity
from patchscopes.lenses.fit_data import capture_all_layers
from patchscopes.mappings import Affine, affine_metadata
from patchscopes.models import LanguageModel
from patchscopes.runs import RunOptions, open_run_dir, run_options, settings_of
from patchscopes.specs import Spec, parse_spec
from patchscopes.storage import check_finite, write_safetensors

FORMAT = "patchscopes-cross-model-map"


# -- aligned positions -----------------------------------------------------------------------------------
def prefix_ends(model: LanguageModel, text: str, ids: Sequence[int] | None = None) -> dict[int, int]:
    """``{end character: token index}`` for every token of ``model``'s encoding of ``text`` whose prefix decodes
    to ``text[:end]``.

    Args:
        model: The model (its tokenizer).
        text: The text.
        ids: Its token ids if already encoded (with the special prefix, as :meth:`LanguageModel.encode` gives).

    Returns:
        Token indices count the special prefix (``<bos>``...), as the model's positions do. Special tokens and
        prefixes that end inside a character (partial UTF-8 bytes) or decode to anything else are left out.
    """
    ids = list(model.encode(text) if ids is None else ids)
    start = len(special_prefix(model.tokenizer))
    if ids[:start] != special_prefix(model.tokenizer):
        start = 0
    out: dict[int, int] = {}
    for k in range(start, len(ids)):
        prefix = model.tokenizer.decode(ids[start: k + 1], skip_special_tokens=True)
        if prefix and "\ufffd" not in prefix and text.startswith(prefix):
            out.setdefault(len(prefix), k)  # a token that adds no text keeps the earlier index
    return out


def aligned_positions(
    source: LanguageModel,
    target: LanguageModel,
    text: str,
    *,
    source_ids: Sequence[int] | None = None,
    target_ids: Sequence[int] | None = None,
    skip_first: bool = True,
) -> list[tuple[int, int]]:
    """Position pairs (i in A's tokens, j in B's tokens) after which both models have read the same text.

    Args:
        source: Model A.
        target: Model B.
        text: The text both read.
        source_ids: A's encoding of ``text`` (computed if not given).
        target_ids: B's encoding of ``text``.
        skip_first: Leave out pairs where either index is its model's first text token.

    Returns:
        The pairs, in text order.

    Example:
        SmolLM2 reads ``The| E|iffel| Tower``, Gemma 3 ``<bos>|The| Eiffel| Tower``: both have read
        "The Eiffel" after SmolLM2's token 2 and Gemma's token 2, and the whole text after tokens 3 and 3.

        >>> aligned_positions(smollm2, gemma, "The Eiffel Tower")
        [(2, 2), (3, 3)]
    """
    a_ids = list(source.encode(text) if source_ids is None else source_ids)
    b_ids = list(target.encode(text) if target_ids is None else target_ids)
    a_ends = prefix_ends(source, text, a_ids)
    b_ends = prefix_ends(target, text, b_ids)
    a_first = min(a_ends.values(), default=0)
    b_first = min(b_ends.values(), default=0)
    pairs = []
    for end in sorted(set(a_ends) & set(b_ends)):
        i, j = a_ends[end], b_ends[end]
        if skip_first and (i <= a_first or j <= b_first):
            continue
        pairs.append((i, j))
    return pairs


def text_windows(model: LanguageModel, documents: Sequence[Document], max_tokens: int = 64) -> list[tuple[int, str]]:
    """Cut each document into pieces of at most ``max_tokens`` tokens of ``model`` (special tokens not counted),
    at its token boundaries.

    Returns:
        ``(document index, text)`` pairs, in order.
    """
    if max_tokens < 2:
        raise PatchscopesError(f"max_tokens must be at least 2, got {max_tokens}")
    out = []
    tok = model.tokenizer
    for index, doc in enumerate(documents):
        text = doc.text
        try:
            enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
            offsets = enc["offset_mapping"]
        except (NotImplementedError, TypeError, ValueError, KeyError):
            offsets = None
        ids = tok(text, add_special_tokens=False)["input_ids"]
        for first in range(0, len(ids), max_tokens):
            piece = ids[first: first + max_tokens]
            if offsets is not None and len(offsets) == len(ids):
                begin = offsets[first][0] if first else 0
                end = offsets[min(first + max_tokens, len(ids)) - 1][1]
                chunk = text[begin:end]
            else:
                chunk = tok.decode(piece, skip_special_tokens=True)
            chunk = chunk.strip()
            if chunk:
                out.append((index, chunk))
    return out


@dataclass(frozen=True)
class AlignedWindow:
    """A piece of text both models read, with its aligned positions.

    Attributes:
        text: The text.
        source_ids: A's token ids (special prefix included).
        target_ids: B's token ids.
        pairs: Aligned ``(i, j)`` pairs.
        document: Index of the document in the list that was cut.
        digest: The document's SHA-256.
    """

    text: str
    source_ids: tuple[int, ...]
    target_ids: tuple[int, ...]
    pairs: tuple[tuple[int, int], ...]
    document: int
    digest: str


def align_windows(
    source: LanguageModel, target: LanguageModel, documents: Sequence[Document | str], *, max_tokens: int = 64
) -> list[AlignedWindow]:
    """The windows of ``documents`` (see :func:`text_windows`) with their aligned positions; windows without any
    aligned position are left out."""
    docs = [d if isinstance(d, Document) else Document(d) for d in documents]
    out = []
    for index, text in text_windows(source, docs, max_tokens):
        a_ids, b_ids = source.encode(text), target.encode(text)
        pairs = aligned_positions(source, target, text, source_ids=a_ids, target_ids=b_ids)
        if pairs:
            out.append(AlignedWindow(text, tuple(a_ids), tuple(b_ids), tuple(pairs), index, docs[index].digest))
    return out


# -- the map ---------------------------------------------------------------------------------------------
@dataclass(eq=False)
class CrossModelMap:
    """Affine maps f_{l→l*} from the hidden states of a source model A to those of a target model B.

    Attributes:
        maps: ``{(l, l*): Affine}``.
        config: ``source`` and ``target`` (model identities), ``data`` (fingerprint, counts), ``ridge``,
            ``r2`` (in-sample R² per ``"l->l*"``), ``max_tokens``, ``seed``, ``seconds``...
        fit_documents: Hashes of the fitting documents (see :func:`patchscopes.lenses.digest_key`).
    """

    maps: dict[tuple[int, int], Affine]
    config: dict = field(default_factory=dict)
    fit_documents: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))

    def __post_init__(self) -> None:
        for (layer, target_layer), affine in self.maps.items():
            affine.name = f"cross-model-affine[{layer}->{target_layer}]"

    def __repr__(self) -> str:
        return (f"CrossModelMap({self.source_name!r} -> {self.target_name!r}, layers={self.layers}, "
                f"target_layers={self.target_layers})")

    @property
    def source_name(self) -> str:
        return str(self.config.get("source", {}).get("name", "?"))

    @property
    def target_name(self) -> str:
        return str(self.config.get("target", {}).get("name", "?"))

    @property
    def layers(self) -> list[int]:
        """The source layers l that have maps."""
        return sorted({pair[0] for pair in self.maps})

    @property
    def target_layers(self) -> list[int]:
        """The target layers l* that have maps."""
        return sorted({pair[1] for pair in self.maps})

    @property
    def pairs(self) -> list[tuple[int, int]]:
        return sorted(self.maps)

    def mapping(self, layer: int, target_layer: int) -> Affine:
        """f for (l, l*).

        Raises:
            PatchscopesError: No map was fitted for that pair.
        """
        key = (int(layer), int(target_layer))
        if key not in self.maps:
            raise PatchscopesError(
                f"the cross-model map has no map from layer {layer} to layer {target_layer}",
                hint=f"it maps source layers {self.layers} to target layers {self.target_layers}",
            )
        return self.maps[key]

    def check_models(self, source: LanguageModel | None = None, target: LanguageModel | None = None) -> None:
        """Raise a :class:`PatchscopesError` unless the map was fitted between these models."""
        if source is not None:
            compare_identity(self.config.get("source", {}), model_identity(source), "the cross-model map's source")
        if target is not None:
            compare_identity(self.config.get("target", {}), model_identity(target), "the cross-model map's target")

    def metadata(self) -> dict[str, str]:
        """The string metadata written into the safetensors file."""
        src, tgt = self.config.get("source", {}), self.config.get("target", {})
        data = self.config.get("data", {})
        return affine_metadata(
            format=FORMAT, version="1", source_model=str(src.get("name")), target_model=str(tgt.get("name")),
            layers=self.layers, target_layers=self.target_layers, source_hidden_size=src.get("hidden_size"),
            target_hidden_size=tgt.get("hidden_size"), data_fingerprint=str(data.get("fingerprint")),
            samples=data.get("samples"), ridge=self.config.get("ridge"), config=self.config,
        )

    def save(self, path: str | Path) -> Path:
        """Write every pair into one safetensors file (see the module's description)."""
        tensors = {"fit_documents": self.fit_documents.to(torch.long)}
        for (layer, target_layer), affine in self.maps.items():
            tensors[f"map.{layer}.{target_layer}.weight"] = affine.weight.detach().float()
            tensors[f"map.{layer}.{target_layer}.bias"] = affine.bias.detach().float()
        return write_safetensors(path, tensors, self.metadata(), "the map")

    @classmethod
    def load(
        cls, path: str | Path, *, source: LanguageModel | None = None, target: LanguageModel | None = None
    ) -> CrossModelMap:
        """Read a file written by :meth:`save`; with models given, check the map was fitted between them.

        Raises:
            PatchscopesError: No such file, not a cross-model map, or fitted between other models.
        """
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise PatchscopesError(f"no such map file: {path}", hint="fit one with `patchscopes fit-map ...`")
        try:
            with safe_open(str(path), framework="pt") as fh:
                meta = dict(fh.metadata() or {})
                tensors = {key: fh.get_tensor(key) for key in fh.keys()}  # noqa: SIM118
        except Exception as err:
            raise PatchscopesError(f"could not read the map {path}: {err}",
                                   hint="a map file is written by `patchscopes fit-map`") from err
        check_finite(tensors, path, "the map")
        if meta.get("format") != FORMAT:
            raise PatchscopesError(f"{path} is not a cross-model map (format {meta.get('format')!r})",
                                   hint="a map file is written by `patchscopes fit-map`")
        try:
            config = json.loads(meta.get("config", "{}"))
        except json.JSONDecodeError as err:
            raise PatchscopesError(f"the map {path} has broken metadata: {err}") from err
        maps = {}
        for key, value in tensors.items():
            parts = key.split(".")
            if len(parts) == 4 and parts[0] == "map" and parts[3] == "weight":
                layer, target_layer = int(parts[1]), int(parts[2])
                maps[(layer, target_layer)] = Affine(value, tensors.get(f"map.{layer}.{target_layer}.bias"))
        cmap = cls(maps, config, tensors.get("fit_documents", torch.zeros(0, dtype=torch.long)))
        cmap.check_models(source, target)
        return cmap

    def export(self, layer: int, target_layer: int, path: str | Path) -> Path:
        """Write the map of one pair as a plain :class:`Affine` safetensors file (with the models in its metadata)."""
        affine = self.mapping(layer, target_layer)
        single = Affine(affine.weight, affine.bias, name=affine.name, metadata=affine_metadata(
            format="patchscopes-affine", source_model=self.source_name, target_model=self.target_name,
            layer=layer, target_layer=target_layer,
            data_fingerprint=str(self.config.get("data", {}).get("fingerprint"))))
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        single.save(path)
        return path

    def overlaps(self, digests: Sequence[str]) -> list[bool]:
        """For each document digest, whether the map was fitted on that document."""
        return fitted_on(self.fit_documents, digests)


def collect_aligned_states(
    source: LanguageModel,
    target: LanguageModel,
    windows: Sequence[AlignedWindow],
    *,
    layers: Sequence[int],
    target_layers: Sequence[int],
    batch_size: int = 16,
    progress: bool = False,
) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """A's block outputs at layers ``layers`` and B's at ``target_layers``, at every aligned pair of ``windows``.

    Returns:
        ``({l: (n, d_A)}, {l*: (n, d_B)})`` in float32, rows in the order of the windows' pairs.
    """
    xs: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    ys: dict[int, list[torch.Tensor]] = {layer: [] for layer in target_layers}
    total = sum(len(w.pairs) for w in windows)
    bar = tqdm(total=total, desc="reading both models", unit="vec", disable=not progress)
    try:
        for first in range(0, len(windows), batch_size):
            part = windows[first: first + batch_size]
            a_seqs = [w.source_ids[: max(i for i, _ in w.pairs) + 1] for w in part]
            b_seqs = [w.target_ids[: max(j for _, j in w.pairs) + 1] for w in part]
            a_hidden = capture_all_layers(source, a_seqs, [[i for i, _ in w.pairs] for w in part])
            b_hidden = capture_all_layers(target, b_seqs, [[j for _, j in w.pairs] for w in part])
            for layer in layers:
                xs[layer].append(a_hidden[:, layer].clone())
            for layer in target_layers:
                ys[layer].append(b_hidden[:, layer].clone())
            bar.update(a_hidden.shape[0])
    finally:
        bar.close()
    return ({k: torch.cat(v) for k, v in xs.items()}, {k: torch.cat(v) for k, v in ys.items()})


def r_squared(affine: Affine, x: torch.Tensor, y: torch.Tensor) -> float:
    """1 − SSE/SST of ``affine(x)`` against ``y`` (the share of y's variance around its mean the map explains)."""
    with torch.no_grad():
        residual = (affine(x.float()) - y.float()).pow(2).sum()
        total = (y.float() - y.float().mean(0)).pow(2).sum()
    return float(1.0 - residual / total) if float(total) > 0 else float("nan")


def fit_cross_model_map(
    source: LanguageModel,
    target: LanguageModel,
    documents: Sequence[Document | str],
    *,
    layers: Spec = "all",
    target_layers: Spec = "all",
    samples: int = 20000,
    ridge: float = 0.0,
    max_tokens: int = 64,
    seed: int = 0,
    batch_size: int = 16,
    extra_config: dict | None = None,
    options: RunOptions | None = None,
    **legacy: Any,
) -> CrossModelMap:
    """Fit an affine map (least squares with bias, optional ridge) from A's layer l to B's layer l* for every pair.

    Args:
        source: Model A.
        target: Model B.
        documents: The fitting documents (never the evaluation documents).
        layers: A's layers l (a SPEC).
        target_layers: B's layers l* (a SPEC).
        samples: How many aligned positions to fit on (every aligned position of shuffled windows).
        ridge: λ of an optional ridge term (see :meth:`patchscopes.lenses.AffineAccumulator.solve`).
        max_tokens: Window length in A's tokens.
        seed: Seed of the window order.
        batch_size: Windows per forward pass.
        options: The fit's ``progress`` bars and ``run_dir`` (:class:`~patchscopes.runs.RunOptions`: the aligned
            hidden states are kept there and a fit given it again reads them back); 0.2's ``progress=``/
            ``run_dir=`` still work, with a warning.
        extra_config: More entries for the saved config (e.g. the files and the split).

    Raises:
        PatchscopesError: Bad layers, no aligned position, or too few samples.
    """
    options = run_options(options, legacy, "fit_cross_model_map")
    progress = options.progress
    store = open_run_dir(options.run_dir, command="fit_cross_model_map", models=[source, target], data=documents,
                         settings=settings_of(locals(), exclude=("source", "target", "documents", "extra_config",
                                                                 "engine", "budget")))
    start = time.perf_counter()
    if samples < 1:
        raise PatchscopesError(f"samples must be at least 1, got {samples}")
    src_layers = parse_spec(layers, source.num_layers, what="source layer")
    tgt_layers = parse_spec(target_layers, target.num_layers, what="target layer")
    docs = [d if isinstance(d, Document) else Document(d) for d in documents]
    windows = align_windows(source, target, docs, max_tokens=max_tokens)
    if not windows:
        raise PatchscopesError("the fitting text has no position where both models have read the same text",
                               hint="give more or longer text")
    order = torch.randperm(len(windows), generator=torch.Generator().manual_seed(seed)).tolist()
    chosen: list[AlignedWindow] = []
    total = 0
    for index in order:
        if total >= samples:
            break
        w = windows[index]
        pairs = w.pairs[: samples - total]
        chosen.append(AlignedWindow(w.text, w.source_ids, w.target_ids, pairs, w.document, w.digest))
        total += len(pairs)
    if total <= 1:
        raise PatchscopesError(f"only {total} aligned position(s) to fit on", hint="give more text")
    saved = store.load_state("aligned-states") if store is not None else None
    if saved is not None:
        xs = {layer: saved[0][f"source.{layer}"] for layer in src_layers}
        ys = {layer: saved[0][f"target.{layer}"] for layer in tgt_layers}
    else:
        xs, ys = collect_aligned_states(source, target, chosen, layers=src_layers, target_layers=tgt_layers,
                                        batch_size=batch_size, progress=progress)
        if store is not None:
            store.save_state("aligned-states", {**{f"source.{k}": v for k, v in xs.items()},
                                                **{f"target.{k}": v for k, v in ys.items()}}, {})
    maps: dict[tuple[int, int], Affine] = {}
    r2: dict[str, float] = {}
    bar = tqdm(total=len(src_layers) * len(tgt_layers), desc="fitting", unit="map", disable=not progress)
    try:
        for layer in src_layers:
            for target_layer in tgt_layers:
                affine = fit_affine(xs[layer], ys[target_layer], ridge)
                maps[(layer, target_layer)] = affine
                r2[f"{layer}->{target_layer}"] = round(r_squared(affine, xs[layer], ys[target_layer]), 5)
                bar.update(1)
    finally:
        bar.close()
    used = sorted({w.document for w in chosen})
    all_pairs = sum(len(w.pairs) for w in windows)
    config = {
        "source": model_identity(source),
        "target": model_identity(target),
        "layers": src_layers,
        "target_layers": tgt_layers,
        "data": {
            "fingerprint": data_fingerprint(docs[i].text for i in used),
            "documents": len(used),
            "windows": len(chosen),
            "samples": total,
            "aligned_share": round(all_pairs / max(1, sum(len(w.source_ids) for w in windows)), 4),
        },
        "ridge": ridge,
        "r2": r2,
        "r2_note": "in-sample R² of each map on its fitting vectors",
        "max_tokens": max_tokens,
        "seed": seed,
        "seconds": round(time.perf_counter() - start, 1),
        **(extra_config or {}),
    }
    keys = torch.tensor([digest_key(docs[i].digest) for i in used], dtype=torch.long)
    return CrossModelMap(maps, config, keys)


def map_summary(cmap: CrossModelMap) -> str:
    """One line about a map: models, pairs, data and the range of in-sample R²."""
    data = cmap.config.get("data", {})
    r2 = list(cmap.config.get("r2", {}).values())
    r2_text = f", in-sample R² {min(r2):.3f}..{max(r2):.3f}" if r2 else ""
    return (f"cross-model map {cmap.source_name} → {cmap.target_name}: {len(cmap.maps)} pairs (layers "
            f"{cmap.layers} → {cmap.target_layers}), {data.get('samples')} aligned positions from "
            f"{data.get('documents')} documents, ridge {cmap.config.get('ridge')}{r2_text}")
