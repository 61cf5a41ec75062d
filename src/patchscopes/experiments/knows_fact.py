"""The knows-the-fact filter: does the model name the object within a few greedy tokens of the verbalized fact?

The paper keeps an attribute-extraction sample only if the model knows the fact; multi-hop correction keeps a
query only if the model solves each hop alone.
"""

from __future__ import annotations

from collections.abc import Sequence

from patchscopes.data.relations import FactCheck, mentions
from patchscopes.engine import greedy_generate
from patchscopes.errors import PatchscopesError
from patchscopes.models import LanguageModel
from patchscopes.runs import RunDir


def generate_texts(model: LanguageModel, prompts: Sequence[str], max_new_tokens: int, *, batch_size: int = 32,
                   progress=None, run_dir: RunDir | None = None) -> list[str]:
    """Greedy continuations of ``prompts`` (:func:`~patchscopes.engine.greedy_generate`); with a run directory,
    read back from it when a previous run finished them, else generated and kept there."""
    def generate() -> list[str]:
        return greedy_generate(model, list(prompts), max_new_tokens, batch_size=batch_size, progress=progress)

    if run_dir is None:
        return generate()
    return run_dir.cached("greedy", [model.name, list(prompts), max_new_tokens, batch_size], generate)


def knows_fact(

    model: LanguageModel,
    prompts: Sequence[str],
    objects: Sequence[str],
    *,
    aliases: Sequence[Sequence[str]] | None = None,
    max_new_tokens: int = 20,
    batch_size: int = 32,
    progress=None,
    run_dir: RunDir | None = None,
) -> list[FactCheck]:
    """Whether the model names each object within ``max_new_tokens`` greedy tokens of its prompt.

    Args:
        model: The model.
        prompts: Verbalized facts without their object (``"The capital city of France"``).
        objects: The expected answers, one per prompt.
        aliases: Other accepted answers per prompt.
        max_new_tokens: Tokens generated per prompt (the paper: 20).
        batch_size: Prompts per forward pass.
        progress: An optional tqdm-like bar advanced per prompt.
        run_dir: A run directory keeping the generated texts (:func:`generate_texts`).

    Returns:
        One :class:`FactCheck` per prompt; ``known`` uses :func:`mentions`.
    """
    if len(prompts) != len(objects):
        raise PatchscopesError(f"{len(prompts)} prompts but {len(objects)} objects")
    alias_lists = list(aliases) if aliases is not None else [()] * len(prompts)
    texts = generate_texts(model, prompts, max_new_tokens, batch_size=batch_size, progress=progress, run_dir=run_dir)
    return [FactCheck(p, o, t, mentions(t, o, a)) for p, o, t, a in zip(prompts, objects, texts, alias_lists)]
