"""The linear relational embedding (LRE) of Hernandez et al. (2024, "Linearity of Relation Decoding in
Transformer Language Models"), and its attribute lens.

For a relation (``{} plays the sport of`` ...), the LRE approximates how the model turns the subject's state
s = h_l(subject's last token) into the state o = h_{L-1}(prompt's last token) from which it predicts the
object: o ≈ β W s + b. It is estimated on ``n`` examples, each put in an in-context prompt that lists the
other examples first (``"{s_j} ... {o_j}\\n" ... template(s_i)``):

- W is the mean over the examples of the Jacobian ∂o/∂s at the model's own s
  (:func:`patchscopes.engine.gradients.state_jacobians`);
- b is the mean of the residuals o_i − J_i s_i;
- β > 1 makes up for the Jacobian's underestimate of the slope (the paper's finding); by default it is
  chosen on the fitting examples, from :data:`BETAS`, as the one whose decoded top token most often equals
  the model's own.

As a patchscope (REFERENCE.md, Table 1) the LRE is f(h) = β W h + b with T = S and l* = L-1: the state is
written at the last layer and read through the final norm and unembedding (:meth:`LinearRelation.mapping`).
Faithfulness (the paper's metric): how often the LRE's top token equals the model's own top token on the same
prompt. The attribute lens applies f at every position of any text.

An LRE is saved as one safetensors file (``weight``, ``bias``) with JSON metadata (relation, layer, β,
template, examples, model identity); :meth:`LinearRelation.load` refuses one fitted on another model.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from patchscopes.data.relations import Relation, RelationSample
from patchscopes.engine.gradients import state_jacobians
from patchscopes.errors import PatchscopesError
from patchscopes.lenses.base import check_model_identity, model_identity
from patchscopes.mappings import Affine
from patchscopes.models import LanguageModel
from patchscopes.runner import run
from patchscopes.runs import RunDir, RunOptions, open_run_dir, run_options, settings_of
from patchscopes.scope import NextToken, Patchscope, Source, Target
from patchscopes.storage import read_safetensors, write_safetensors

FORMAT = "patchscopes-lre"
DEFAULT_EXAMPLES = 8
"""The paper's number of in-context examples (n = 8)."""
BETAS = (1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 7.0, 10.0)
"""The values of β tried when it is chosen on the fitting examples."""


def lre_template(relation: Relation) -> str:
    """The relation's prompt with ``{}`` for the subject: its first template with one ``{}``, else its target
    prompt with the placeholder ``x`` turned into ``{}``.

    Raises:
        PatchscopesError: The relation has neither.
    """
    for template in relation.prompt_templates:
        if isinstance(template, str) and template.count("{}") == 1:
            return template
    prompt = relation.resolved_target_prompt()
    marker = "\x00"
    return relation.verbalize(marker, prompt).replace("{", "{{").replace("}", "}}").replace(marker, "{}")


def icl_prompt(template: str, subject: str, examples: Sequence[RelationSample]) -> tuple[str, int]:
    """The in-context prompt for ``subject`` (the other examples first, one a line, then the query) and the
    character offset just after the query's subject."""
    lines = [f"{template.format(x.subject)} {x.object}" for x in examples if x.subject != subject]
    head = "".join(line + "\n" for line in lines)
    before, _, _ = template.partition("{}")
    return head + template.format(subject), len(head) + len(before) + len(subject)


def token_matches(token: str, obj: str, aliases: Sequence[str] = ()) -> bool:
    """The original's test of a one-token prediction: the token, stripped and lower-cased, is a non-empty
    prefix of the object (or of an alias)."""
    t = token.strip().lower()
    return bool(t) and any(name.strip().lower().startswith(t) for name in (obj, *aliases))


@dataclass(eq=False)
class LinearRelation:
    """An LRE: f(s) = β W s + b from the subject's state at ``layer`` to the last layer.

    Attributes:
        relation: The relation's name.
        key: Its key (file stem).
        layer: l, the layer of the subject state s.
        weight: W, ``(d, d)``: the mean Jacobian.
        bias: b, ``(d,)``: the mean residual.
        beta: β, the scale of W.
        template: The prompt, with ``{}`` for the subject.
        examples: The in-context examples it was fitted on (and that precede every query).
        config: Model identity, fit settings, the fit's faithfulness and time.
    """

    relation: str
    key: str
    layer: int
    weight: torch.Tensor
    bias: torch.Tensor
    beta: float
    template: str
    examples: list[RelationSample]
    config: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        return (f"LinearRelation({self.relation!r}, layer={self.layer}, beta={self.beta}, "
                f"examples={len(self.examples)}, model={self.config.get('model', {}).get('name')!r})")

    @property
    def name(self) -> str:
        """``lre[l]``: the method's name in results."""
        return f"lre[{self.layer}]"

    def mapping(self) -> Affine:
        """f as an :class:`~patchscopes.mappings.Affine` (β W, b): patch it at l* = L-1, reading at i* = i."""
        return Affine(self.beta * self.weight, self.bias.clone(), name=self.name)

    def prompt(self, subject: str) -> tuple[str, int]:
        """The in-context prompt for ``subject`` and the character offset after its subject."""
        return icl_prompt(self.template, subject, self.examples)

    def check_model(self, model: LanguageModel) -> None:
        """Raise a :class:`PatchscopesError` unless the LRE was fitted on ``model``."""
        check_model_identity(self.config.get("model", {}), model, f"the LRE of {self.relation!r}")

    def save(self, path: str | Path) -> Path:
        """Write the LRE as a safetensors file."""
        meta = {"relation": self.relation, "key": self.key, "layer": self.layer, "beta": self.beta,
                "template": self.template,
                "examples": [[x.subject, x.object, list(x.aliases)] for x in self.examples], **self.config}
        return write_safetensors(path, {"weight": self.weight, "bias": self.bias},
                                 {"format": FORMAT, "lre": json.dumps(meta)}, "the LRE")

    @classmethod
    def load(cls, path: str | Path, model: LanguageModel | None = None) -> LinearRelation:
        """Read an LRE written by :meth:`save`; with ``model``, check it was fitted on that model.

        Raises:
            PatchscopesError: The file is missing or not an LRE, or belongs to another model.
        """
        metadata, tensors = read_safetensors(
            path, "the LRE", hint="make one with `patchscopes fit-lre --model M --relation FILE --out PATH`")
        weight, bias = tensors.get("weight"), tensors.get("bias")
        if metadata.get("format") != FORMAT or weight is None or bias is None:
            raise PatchscopesError(f"{path} is not an LRE file (format {metadata.get('format')!r})")
        meta = json.loads(metadata["lre"])
        examples = [RelationSample(s, o, tuple(a)) for s, o, a in meta.pop("examples")]
        beta = float(meta.pop("beta"))
        if not math.isfinite(beta):
            raise PatchscopesError(f"the LRE {path}: its β is {beta}, not a finite number",
                                   hint="the file is corrupt: fit it again with `patchscopes fit-lre`")
        lre = cls(meta.pop("relation"), meta.pop("key"), int(meta.pop("layer")), weight, bias,
                  beta, meta.pop("template"), examples, meta)
        if model is not None:
            lre.check_model(model)
        return lre


def _subject_position(model: LanguageModel, prompt: str, end: int) -> tuple[list[int], int]:
    ids = model.encode(prompt)
    return ids, model.token_at_char(prompt, ids, end - 1)


def choose_examples(relation: Relation, n: int, *, seed: int = 0) -> list[RelationSample]:
    """``n`` examples of distinct subjects, drawn with a seed.

    Raises:
        PatchscopesError: The relation has fewer than ``n`` subjects, or ``n`` < 2.
    """
    if n < 2:
        raise PatchscopesError(f"an LRE needs at least 2 examples, got {n}")
    by_subject = list({x.subject: x for x in relation.samples}.values())
    if len(by_subject) < n:
        raise PatchscopesError(
            f"relation {relation.name!r} has {len(by_subject)} subjects, fewer than the {n} examples asked for",
            hint="give fewer --examples, or a relation file with more samples",
        )
    return random.Random(seed).sample(by_subject, n)


def fit_lre(
    model: LanguageModel,
    relation: Relation,
    layers: int | Sequence[int],
    *,
    examples: int | Sequence[RelationSample] = DEFAULT_EXAMPLES,
    beta: float | None = None,
    seed: int = 0,
    options: RunOptions | None = None,
    **legacy: Any,
) -> dict[int, LinearRelation]:
    """Fit the LRE of ``relation`` at each source layer (one Jacobian pass per example serves every layer).

    Args:
        model: The model.
        relation: The relation (its first template with ``{}`` is the prompt).
        layers: The source layer(s) l of the subject state.
        examples: The in-context examples, or how many to draw (seeded) from the relation.
        beta: β; ``None`` chooses it per layer on the fitting examples from :data:`BETAS`.
        seed: Seed of the example draw.
        options: Its ``progress`` bar and ``run_dir`` (:class:`~patchscopes.runs.RunOptions`): the fitted LREs
            are kept there, and a fit given it again reads them back instead of computing the Jacobians again.

    Returns:
        ``{layer: LinearRelation}``.

    Raises:
        PatchscopesError: Too few examples, bad layers or β.
    """
    options = run_options(options, legacy, "fit_lre")
    progress = options.progress
    store = open_run_dir(options.run_dir, command="fit_lre", models=[model], data=relation,
                         settings=settings_of(locals(), exclude=("model", "relation", "engine", "budget")))
    start = time.perf_counter()
    layer_list = [model.check_layer(x, "layer") for x in ([layers] if isinstance(layers, int) else layers)]
    layer_list = list(dict.fromkeys(layer_list))
    if beta is not None and not (isinstance(beta, (int, float)) and not isinstance(beta, bool) and math.isfinite(beta)
                                 and beta > 0):
        raise PatchscopesError(f"β must be a finite number above 0, got {beta!r}", hint="e.g. beta=2.0, or None to "
                               "choose it on the fitting examples")
    chosen = choose_examples(relation, examples, seed=seed) if isinstance(examples, int) else list(examples)
    if len(chosen) < 2:
        raise PatchscopesError(f"an LRE needs at least 2 examples, got {len(chosen)}")
    saved = _load_lres(store, relation, layer_list) if store is not None else None
    if saved is not None:
        return saved
    template = lre_template(relation)
    last = model.num_layers - 1
    jac, hs, zs, top = [], [], [], []
    for x in tqdm(chosen, desc=f"LRE {relation.name}: Jacobians", unit="example", disable=not progress):
        prompt, end = icl_prompt(template, x.subject, chosen)
        ids, position = _subject_position(model, prompt, end)
        result = state_jacobians(model, ids, layer_list, position, last, -1)
        jac.append(result.jacobians)
        hs.append(result.h)
        zs.append(result.z)
        top.append(int(result.logits.argmax()))
    jacobians = torch.stack(jac)  # (n, k, d, d)
    h = torch.stack(hs)  # (n, k, d)
    z = torch.stack(zs)  # (n, d)
    lm_top = torch.tensor(top)
    out = {}
    for k, layer in enumerate(layer_list):
        weight = jacobians[:, k].mean(0)
        bias = (z - torch.einsum("nij,nj->ni", jacobians[:, k], h[:, k])).mean(0)
        betas = [float(beta)] if beta is not None else list(BETAS)
        scores = []
        with torch.no_grad():
            for b in betas:
                logits = model.head((b * h[:, k] @ weight.T + bias).to(model.dtype)).float()
                agree = (logits.argmax(-1).cpu() == lm_top).float().mean().item()
                logp = torch.log_softmax(logits, -1).cpu().gather(1, lm_top[:, None]).mean().item()
                scores.append((agree, logp))
        best = max(range(len(betas)), key=lambda i: scores[i])
        config = {"model": model_identity(model), "target_layer": last,
                  "beta_chosen": "given" if beta is not None else "on the fitting examples",
                  "fit_faithfulness": scores[best][0], "betas": {str(b): s[0] for b, s in zip(betas, scores)},
                  "seed": seed, "seconds": round(time.perf_counter() - start, 1)}
        out[layer] = LinearRelation(relation.name, relation.key, layer, weight, bias, betas[best], template,
                                    chosen, config)
    if store is not None:
        _save_lres(store, out)
    return out


_LRE_STATE = "lre"


def _save_lres(store: RunDir, lres: dict[int, LinearRelation]) -> None:
    """Keep fitted LREs in a run directory (tensors and, as JSON, everything else of each)."""
    tensors, meta = {}, {}
    for layer, lre in lres.items():
        tensors[f"{layer}.weight"], tensors[f"{layer}.bias"] = lre.weight, lre.bias
        meta[str(layer)] = {"relation": lre.relation, "key": lre.key, "beta": lre.beta, "template": lre.template,
                            "examples": [[x.subject, x.object, list(x.aliases)] for x in lre.examples],
                            "config": lre.config}
    store.save_state(_LRE_STATE, tensors, meta)


def _load_lres(store: RunDir, relation: Relation, layers: Sequence[int]) -> dict[int, LinearRelation] | None:
    """The LREs a previous fit kept in ``store`` (``None`` if it has not finished)."""
    saved = store.load_state(_LRE_STATE)
    if saved is None or any(str(layer) not in saved[1] for layer in layers):
        return None
    tensors, meta = saved
    out = {}
    for layer in layers:
        m = meta[str(layer)]
        examples = [RelationSample(s, o, tuple(a)) for s, o, a in m["examples"]]
        out[layer] = LinearRelation(m["relation"], m["key"], layer, tensors[f"{layer}.weight"],
                                    tensors[f"{layer}.bias"], float(m["beta"]), m["template"], examples,
                                    m["config"])
    return out



def _scope_pair(lre: LinearRelation, ids: list[int], position: int, top_k: int, mapping: Affine):
    """The LRE as a patchscope (T = S, l* = L-1, i* = i, read at i) and the model's own run (its last state
    written over itself: the unpatched distribution), on the same prompt."""
    prompt = tuple(ids)
    return (Patchscope(Source(prompt, lre.layer, position), Target(prompt, -1, position, mapping=mapping),
                       NextToken(top_k=top_k, position=position)),
            Patchscope(Source(prompt, -1, -1), Target(prompt, -1, -1), NextToken(top_k=top_k)))


def faithfulness(
    model: LanguageModel,
    lre: LinearRelation,
    samples: Sequence[RelationSample] | None = None,
    *,
    top_k: int = 3,
    options: RunOptions | None = None,
    **legacy: Any,
) -> pd.DataFrame:
    """The paper's faithfulness: on each test subject's in-context prompt, does the LRE's top token equal the
    model's own top token?

    Args:
        model: The model the LRE was fitted on.
        lre: The LRE.
        samples: Test samples (default: none given raises); the LRE's own examples are left out.
        top_k: Tokens kept of each distribution.
        options: How the patches run (:class:`~patchscopes.runs.RunOptions`).

    Returns:
        One row per subject: ``subject, object, lm_token, lre_token, faithful, lm_correct, lre_correct,
        lre_top_tokens`` (``*_correct``: the token is a non-empty prefix of the object or an alias).

    Raises:
        PatchscopesError: No test sample is left.
    """
    options = run_options(options, legacy, "faithfulness")
    lre.check_model(model)
    fitted = {x.subject for x in lre.examples}
    tests = [s for s in (samples or []) if s.subject not in fitted]
    tests = list({s.subject: s for s in tests}.values())
    if not tests:
        raise PatchscopesError(f"no test subject for the LRE of {lre.relation!r} (its fitting examples are left "
                               "out)", hint="give a relation with more samples than --examples")
    mapping = lre.mapping()
    scopes = []
    for s in tests:
        prompt, end = lre.prompt(s.subject)
        ids, position = _subject_position(model, prompt, end)
        scopes.extend(_scope_pair(lre, ids, position, top_k, mapping))
    results = run(scopes, model, **options.run_kwargs())
    rows = []
    for k, s in enumerate(tests):
        lre_r, lm_r = results[2 * k], results[2 * k + 1]
        rows.append({"relation": lre.relation, "layer": lre.layer, "subject": s.subject, "object": s.object,
                     "lm_token": lm_r.top_tokens[0], "lre_token": lre_r.top_tokens[0],
                     "faithful": lre_r.readings.top_token_ids[0] == lm_r.readings.top_token_ids[0],
                     "lm_correct": token_matches(lm_r.top_tokens[0], s.object, s.aliases),
                     "lre_correct": token_matches(lre_r.top_tokens[0], s.object, s.aliases),
                     "lre_top_tokens": list(lre_r.top_tokens)})
    return pd.DataFrame(rows)


def attribute_lens(
    model: LanguageModel, lre: LinearRelation, text: str | Sequence[int], *, top_k: int = 3,
    options: RunOptions | None = None, **legacy: Any,
) -> pd.DataFrame:
    """The attribute lens: f applied to the state at layer l of every position of ``text`` and read through
    the final norm and unembedding (``options``: how the patches run, :class:`~patchscopes.runs.RunOptions`).

    Returns:
        One row per position: ``position, token, top_tokens, top_probs``.
    """
    options = run_options(options, legacy, "attribute_lens")
    lre.check_model(model)
    ids = model.encode(text) if isinstance(text, str) else list(text)
    if not ids:
        raise PatchscopesError("the text has no tokens")
    mapping = lre.mapping()
    prompt = tuple(ids)
    scopes = [Patchscope(Source(prompt, lre.layer, i), Target(prompt, -1, i, mapping=mapping),
                         NextToken(top_k=top_k, position=i)) for i in range(len(ids))]
    results = run(scopes, model, **options.run_kwargs())
    tokens = model.token_strings(ids)
    return pd.DataFrame([{"position": i, "token": tokens[i], "top_tokens": list(r.top_tokens),
                          "top_probs": [round(p, 4) for p in r.top_probs]} for i, r in enumerate(results)])
