"""What the explorer's API accepts, the limits it enforces, and the work it runs on a model.

An :class:`InspectQuery` has the fields of ``patchscopes inspect``; :func:`inspect_records` runs it as one
:func:`~patchscopes.sweep` and answers the records ``inspect --json`` writes. :func:`plan_query` checks a
query against the model and the :class:`Limits` before anything runs, and :func:`layer_chunks` cuts its
layers into the pieces the streaming grid runs one after the other (:func:`chunk_records`), so cells
arrive while the rest is still running. A :class:`DescribeQuery` runs a generation preset from one cell.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from pydantic import BaseModel, ConfigDict, Field

from patchscopes.engine import Engine
from patchscopes.errors import PatchscopesError, check_text
from patchscopes.models import LanguageModel
from patchscopes.presets import PRESETS, Preset, get_preset
from patchscopes.results import to_records
from patchscopes.scope import Generate
from patchscopes.specs import parse_spec
from patchscopes.sweep import sweep


class RequestProblem(Exception):
    """A request the explorer refuses, with its HTTP status (4xx), a message and a hint."""

    def __init__(self, status: int, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.hint = hint


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; more is refused with status 413 and a message naming the limit.

    Attributes:
        max_prompt_chars: Characters of the source prompt (and of a custom target prompt).
        max_prompt_tokens: Tokens of the source prompt.
        max_patches: Patches (layers × positions × target layers) of one next-token request.
        max_generations: Patches of one request whose readout generates text.
        max_new_tokens: Tokens generated per patch.
        max_top_k: Top tokens kept per patch.
        max_body_bytes: Bytes of a request's body (more is refused before it is read).
        max_queued: Jobs queued or running on one model; a request that finds its model's queue full is
            refused with status 429.
    """

    max_prompt_chars: int = 2000
    max_prompt_tokens: int = 256
    max_patches: int = 4096
    max_generations: int = 256
    max_new_tokens: int = 64
    max_top_k: int = 50
    max_body_bytes: int = 1 << 20
    max_queued: int = 64

    def to_dict(self) -> dict[str, int]:
        """The limits as a JSON object."""
        return asdict(self)


class InspectQuery(BaseModel):
    """The body of ``POST /api/inspect``: the arguments and options of ``patchscopes inspect``."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(description="The source prompt S.")
    model: str | None = Field(None, description="A name from GET /api/models; the server's default if omitted.")
    scope: str = Field("token-identity", description="A preset from GET /api/presets.")
    target_prompt: str | None = Field(None, description="Replaces the preset's target prompt (keep its placeholder).")
    layers: str = Field("all", description="Source layers: a SPEC ('all', '0,3,5', '2:10', '0:30:5', '-1').")
    positions: str = Field("all", description="Source positions: a SPEC over the prompt's tokens.")
    target_layer: str | None = Field(None, description="Target layers l* (a SPEC); the preset's by default.")
    max_new_tokens: int | None = Field(None, ge=1, description="Generate this many tokens per patch.")
    top_k: int | None = Field(None, ge=1, description="Top tokens kept per patch (10 by default).")
    baseline: bool = Field(False, description="Also run each target unpatched (the baseline_* fields).")
    engine: Engine = Field("batched", description="The engine.")


class DescribeQuery(BaseModel):
    """The body of ``POST /api/describe``: one hidden state (prompt, layer, position) read by a generation preset."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(description="The source prompt S.")
    layer: int = Field(description="The source layer l (negative counts from the end).")
    position: int = Field(description="The source position i (negative counts from the end).")
    model: str | None = Field(None, description="A name from GET /api/models; the server's default if omitted.")
    scope: str = Field("description", description="A generation preset from GET /api/presets.")
    target_prompt: str | None = Field(None, description="Replaces the preset's target prompt (keep its placeholder).")
    max_new_tokens: int | None = Field(None, ge=1, description="Tokens to generate; the preset's by default.")
    top_k: int | None = Field(None, ge=1, description="Top first tokens kept (10 by default).")

    def as_inspect(self) -> InspectQuery:
        """The same patch as an inspect query of one layer and one position."""
        return InspectQuery(
            prompt=self.prompt, model=self.model, scope=self.scope, target_prompt=self.target_prompt,
            layers=str(self.layer), positions=str(self.position), max_new_tokens=self.max_new_tokens,
            top_k=self.top_k,
        )


@dataclass
class Plan:
    """A checked inspect query, resolved against its model.

    Attributes:
        model: The model's name in the pool.
        scope: The preset's name.
        prompt: The source prompt.
        tokens: Every token of the prompt, as text.
        layers: The source layers swept.
        positions: The source positions swept.
        target_layers: The target layers swept, or ``None`` for the preset's (one per source layer).
        generation: Whether the readout generates text.
        patches: The number of patches.
    """

    model: str
    scope: str
    prompt: str
    tokens: list[str]
    layers: list[int]
    positions: list[int]
    target_layers: list[int] | None
    generation: bool
    patches: int

    def to_dict(self) -> dict:
        """The plan as a JSON object (the stream's first event)."""
        return asdict(self)


def is_generation(preset: Preset) -> bool:
    """Whether a preset's readout generates text."""
    return isinstance(preset.readout, Generate)


def preset_info(preset: Preset) -> dict:
    """A preset as the page shows it: name, one-line description, target prompt, placeholder, target layer,
    generation or not."""
    readout = preset.readout
    return {
        "name": preset.name,
        "description": preset.description,
        "target_prompt": preset.target_prompt,
        "placeholder": preset.placeholder,
        "target_layer": preset.target_layer,
        "generation": is_generation(preset),
        "max_new_tokens": readout.max_new_tokens if isinstance(readout, Generate) else None,
    }


def presets_info() -> list[dict]:
    """Every preset of :data:`~patchscopes.presets.PRESETS`, as :func:`preset_info`."""
    return [preset_info(p) for p in PRESETS.values()]


def check_preset(query: InspectQuery, limits: Limits) -> Preset:
    """The query's preset with its options, after the limits that need no model.

    Raises:
        RequestProblem: A limit is exceeded (413).
        PatchscopesError: An unknown scope, or a target prompt without the preset's placeholder.
    """
    if not query.prompt.strip():
        raise PatchscopesError("the prompt is empty", hint='type a source prompt, e.g. "The Eiffel Tower is in Paris"')
    for what, text in (("prompt", query.prompt), ("target prompt", query.target_prompt or "")):
        check_text(text, what)  # a lone surrogate (JSON's "\ud800") is no text: no tokenizer takes it
        if len(text) > limits.max_prompt_chars:
            raise RequestProblem(413, f"the {what} has {len(text)} characters; this server takes at most "
                                 f"{limits.max_prompt_chars}", hint=f"shorten the {what}")
    if query.top_k is not None and query.top_k > limits.max_top_k:
        raise RequestProblem(413, f"top_k {query.top_k} is over this server's limit of {limits.max_top_k}",
                             hint=f"ask for at most {limits.max_top_k} top tokens")
    if query.max_new_tokens is not None and query.max_new_tokens > limits.max_new_tokens:
        raise RequestProblem(413, f"max_new_tokens {query.max_new_tokens} is over this server's limit of "
                             f"{limits.max_new_tokens}", hint=f"generate at most {limits.max_new_tokens} tokens")
    return get_preset(query.scope).with_options(
        target_prompt=query.target_prompt or None, top_k=query.top_k, max_new_tokens=query.max_new_tokens
    )


def plan_query(model: LanguageModel, name: str, query: InspectQuery, limits: Limits) -> Plan:
    """Check ``query`` against ``model`` and ``limits`` and resolve its layers and positions.

    Raises:
        RequestProblem: A limit is exceeded (413).
        PatchscopesError: Bad input: an empty prompt, an unknown scope, a malformed or out-of-range SPEC, a
            target prompt without the preset's placeholder.
    """
    preset = check_preset(query, limits)
    ids = model.encode(query.prompt)
    if len(ids) > limits.max_prompt_tokens:
        raise RequestProblem(413, f"the prompt has {len(ids)} tokens; this server takes at most "
                             f"{limits.max_prompt_tokens}", hint="shorten the prompt")
    layers = parse_spec(query.layers, model.num_layers, what="layer")
    positions = parse_spec(query.positions, len(ids), what="position")
    targets = None if query.target_layer is None else parse_spec(query.target_layer, model.num_layers,
                                                                 what="target layer")
    patches = len(layers) * len(positions) * (len(targets) if targets else 1)
    generation = is_generation(preset)
    most = limits.max_generations if generation else limits.max_patches
    if patches > most:
        kind = "generating patches" if generation else "patches"
        raise RequestProblem(
            413, f"this query asks for {patches} {kind}; this server runs at most {most} per request",
            hint="sweep fewer layers or positions (e.g. layers 0:30:3, positions -5:)",
        )
    return Plan(model=name, scope=preset.name, prompt=query.prompt, tokens=model.token_labels(ids), layers=layers,
                positions=positions, target_layers=targets, generation=generation, patches=patches)


def inspect_records(model: LanguageModel, query: InspectQuery) -> list[dict]:
    """Run ``query`` as one sweep, as ``patchscopes inspect`` does, and return its ``--json`` records."""
    frame = sweep(
        model, query.prompt, query.scope, layers=query.layers, positions=query.positions,
        target_layers=query.target_layer, target_prompt=query.target_prompt or None, top_k=query.top_k,
        max_new_tokens=query.max_new_tokens, baseline=query.baseline, engine=query.engine,
    )
    return to_records(frame)


def layer_chunks(plan: Plan, *, first_patches: int = 16, growth: int = 4) -> list[list[int]]:
    """The plan's layers cut into consecutive chunks that grow: about ``first_patches`` patches, then
    ``growth`` times more each time.

    Each chunk is one sweep, and every sweep pays once for the work its patches share (the source run, the
    target prompt's prefix): the first chunk is small so that cells appear at once, later ones large so that
    the whole grid costs only a few such sweeps more than one. A chunk holds at least one layer.
    """
    per_layer = plan.patches // len(plan.layers)
    chunks, start, size = [], 0, first_patches
    while start < len(plan.layers):
        count = max(1, size // per_layer)
        chunks.append(plan.layers[start: start + count])
        start += count
        size *= growth
    return chunks


def chunk_records(model: LanguageModel, query: InspectQuery, plan: Plan, layers: list[int]) -> list[dict]:
    """The records of the plan's patches on ``layers``, in the order the whole sweep gives them."""
    chunk = query.model_copy(update={"layers": ",".join(map(str, layers)),
                                     "positions": ",".join(map(str, plan.positions))})
    return inspect_records(model, chunk)


def own_next_tokens(model: LanguageModel, plan: Plan, top_k: int | None) -> list[dict]:
    """What the unpatched model itself predicts after each swept position of the prompt.

    The logit lens at the last layer: the final norm and unembedding of the model's own last hidden state,
    i.e. the model's next-token distribution at each position.
    """
    frame = sweep(model, plan.prompt, "logit-lens", layers=[model.num_layers - 1], positions=plan.positions,
                  top_k=top_k)
    return to_records(frame)
