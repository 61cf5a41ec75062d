"""Sweeps: a preset or patchscope over source layers × positions × target layers, as a DataFrame.

:func:`plan_sweep` returns the list of independent jobs (plain :class:`~patchscopes.scope.Patchscope`
values); :func:`sweep` runs them through :func:`~patchscopes.runner.run` and tabulates the results.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

import pandas as pd

from patchscopes.engine import BatchBudget
from patchscopes.errors import PatchscopesError
from patchscopes.models import LanguageModel
from patchscopes.presets import Preset, get_preset
from patchscopes.results import results_to_frame
from patchscopes.runner import Engine, run
from patchscopes.runs import Executor, RunDir
from patchscopes.scope import Patchscope, Readout, Source
from patchscopes.specs import Spec, parse_spec

if TYPE_CHECKING:  # typing.Unpack is Python 3.11+
    from typing_extensions import Unpack


def plan_sweep(
    model: LanguageModel,
    prompts: str | Sequence[str],
    preset: str | Preset = "token-identity",
    *,
    layers: Spec = "all",
    positions: Spec | Sequence[str] = "all",
    target_layers: Spec | None = None,
    target_prompt: str | None = None,
    target_model: LanguageModel | None = None,
    mapping=None,
    readout: Readout | None = None,
    top_k: int | None = None,
    max_new_tokens: int | None = None,
    scope: str | Preset | None = None,
) -> list[Patchscope]:
    """The patches of a sweep, one per (prompt, source layer, source position, target layer).

    Args:
        model: The source model M.
        prompts: One or more source prompts S.
        preset: A preset name (``token-identity``, ``logit-lens``, ``description``, ``selfie``) or a
            :class:`Preset`.
        layers: Source layers l (a SPEC: ``"all"``, ``"0,3,5"``, ``"2:10"``, an int or a list).
        positions: Source positions i: a SPEC over each prompt's tokens, or a list of substrings.
        target_layers: Target layers l*; by default the preset's (l* = l for token identity).
        target_prompt: Replaces the preset's target prompt (it must keep the preset's placeholder).
        target_model: M*, if not the source model.
        mapping: f, if not the identity.
        readout: Replaces the preset's readout.
        top_k: Number of top tokens kept.
        max_new_tokens: Generate this many tokens (turns a next-token preset into generation).
        scope: 0.2's name of ``preset`` (deprecated: a scope is a :class:`~patchscopes.scope.Patchscope`).
    """
    preset = _preset_argument(preset, scope)
    if isinstance(prompts, str):
        prompts = [prompts]
    if not prompts:
        raise PatchscopesError("no source prompts given")
    preset = get_preset(preset).with_options(
        target_prompt=target_prompt, readout=readout, top_k=top_k, max_new_tokens=max_new_tokens
    )
    tmodel = target_model or model
    source_layers = parse_spec(layers, model.num_layers, what="layer")
    if target_layers is None:
        presets = [preset]
    else:
        presets = [preset.with_options(target_layer=t)
                   for t in parse_spec(target_layers, tmodel.num_layers, what="target layer")]
    scopes = []
    for prompt in prompts:
        if not isinstance(prompt, str) or not prompt.strip():
            raise PatchscopesError("a source prompt is empty", hint="give non-empty prompts")
        n_tokens = len(model.encode(prompt))
        model.check_length(n_tokens, "source prompt")
        if isinstance(positions, (list, tuple)) and positions and all(isinstance(p, str) for p in positions):
            source_positions: list[int | str] = list(positions)
        else:
            source_positions = list(parse_spec(positions, n_tokens, what="position"))
        for layer in source_layers:
            for position in source_positions:
                for p in presets:
                    scopes.append(p.build(Source(prompt, layer, position), source_model=model,
                                          target_model=tmodel, mapping=mapping))
    return scopes


def _preset_argument(preset: str | Preset, scope: str | Preset | None) -> str | Preset:
    """``preset``, or 0.2's ``scope=`` spelling of it with a deprecation warning."""
    if scope is None:
        return preset
    warnings.warn("sweep(scope=...) and plan_sweep(scope=...) are deprecated: pass preset=... (a scope is a "
                  "Patchscope; the preset names which one)", DeprecationWarning, stacklevel=3)
    return scope


class SweepOptions(TypedDict, total=False):
    """The keyword arguments of :func:`plan_sweep` that :func:`sweep` passes on (see there)."""

    layers: Spec
    positions: Spec | Sequence[str]
    target_layers: Spec | None
    target_prompt: str | None
    target_model: LanguageModel | None
    mapping: Any
    readout: Readout | None
    top_k: int | None
    max_new_tokens: int | None


def sweep(
    model: LanguageModel,
    prompts: str | Sequence[str],
    preset: str | Preset = "token-identity",
    *,
    baseline: bool = False,
    engine: Engine = "batched",
    budget: BatchBudget | None = None,
    progress: bool = False,
    executor: Executor | None = None,
    run_dir: RunDir | str | Path | None = None,
    shard_size: int | None = None,
    **options: Unpack[SweepOptions],
) -> pd.DataFrame:
    """Run a sweep and return one row per patch.

    Takes the arguments of :func:`plan_sweep` (``layers``, ``positions``, ``target_layers``, ``target_prompt``,
    ``target_model``, ``mapping``, ``readout``, ``top_k``, ``max_new_tokens``: :class:`SweepOptions`) and of
    :func:`~patchscopes.runner.run` (``executor``, ``run_dir`` and ``shard_size`` included: a sweep can run on a
    Ray cluster and resume after a kill). Columns: the source and target coordinates (``source_layer``,
    ``source_position``, ``source_token``, ``target_layer``, ``target_position``...), ``top_token``,
    ``top_tokens``, ``top_token_ids``, ``top_probs``, ``generated_text`` (generation only) and the
    ``baseline_*`` columns when ``baseline=True``. With a preset that names a separator (``description``),
    ``description`` (and ``baseline_description``) hold the generated text without it (``"chemist"`` for
    ``": chemist"``); ``generated_text`` keeps the raw text.

    Example:
        >>> df = sweep(model, "The Eiffel Tower is in Paris", "token-identity", layers="0:30:5")
        >>> df.pivot(index="source_layer", columns="source_position", values="top_token")
    """
    preset = _preset_argument(preset, options.pop("scope", None))  # type: ignore[typeddict-item]
    scopes = plan_sweep(model, prompts, preset, **options)
    results = run(scopes, model, engine=engine, baseline=baseline, budget=budget, progress=progress,
                  executor=executor, run_dir=run_dir, shard_size=shard_size)
    frame = results_to_frame(results)
    preset = get_preset(preset)
    frame.insert(0, "scope", preset.name)  # the preset's name; the column keeps 0.2's name, as files do
    if preset.separator and len(frame):
        for raw, clean in (("generated_text", "description"), ("baseline_generated_text", "baseline_description")):
            if raw in frame.columns and frame[raw].map(lambda v: isinstance(v, str)).any():
                frame.insert(frame.columns.get_loc(raw) + 1, clean,
                             frame[raw].map(lambda v: preset.clean(v) if isinstance(v, str) else v))
    return frame
