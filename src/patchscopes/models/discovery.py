"""Finding the layout of a family no :class:`ArchitectureSpec` describes, from the model itself.

- the token embedding and the unembedding are what the model's own ``get_input_embeddings()`` and
  ``get_output_embeddings()`` return;
- the decoder blocks are the ``nn.ModuleList`` whose length is the (text) config's number of layers and
  whose items ran, in order, in one traced forward on a few tokens, each returning a ``(batch, tokens, d)``
  hidden state;
- the final norm is what runs between the end of the last block and the unembedding in that forward: the
  modules called there each on what the one before returned, from the last block's output to the
  unembedding's input (none, one norm, or a norm and a projection);
- output transforms (logit soft-capping, a logit scale or divisor) are read from the config.

The result is an :class:`ArchitectureSpec` of attribute paths, the same as one written by hand, and it is
proved like one when the model loads (:mod:`patchscopes.models.proof`).
"""

from __future__ import annotations

import torch
from torch import nn

from patchscopes.errors import UnknownArchitectureError
from patchscopes.models.architectures import ArchitectureSpec, config_layers, text_config

# Config attributes of output transforms, as (field of ArchitectureSpec, config attribute, spec value).
_OUTPUT_TRANSFORMS = (
    ("logit_softcap", "final_logit_softcapping", "final_logit_softcapping"),
    ("logit_scale", "logit_scale", "logit_scale"),
    ("logit_scale", "logits_scaling", "1/logits_scaling"),
)


def _fail(model: nn.Module, what: str) -> UnknownArchitectureError:
    model_type = getattr(model.config, "model_type", None)
    return UnknownArchitectureError(
        f"could not find the layout of {type(model).__name__} (config.model_type={model_type!r}): {what}",
        hint=(
            "describe it once with patchscopes.register_architecture(ArchitectureSpec(name=..., "
            f"model_types=({model_type!r},), blocks='model.layers', final_norm='model.norm', unembed='lm_head', "
            "embed='model.embed_tokens')), giving the attribute paths of its decoder blocks, final norm, "
            "unembedding and token embedding, or pass spec= to load_model"
        ),
    )


def _path_of(model: nn.Module, module: nn.Module | None) -> str | None:
    for name, candidate in model.named_modules():
        if candidate is module:
            return name
    return None


def _probe_ids(model: nn.Module, tokens: int = 4) -> torch.Tensor:
    vocab = int(model.get_output_embeddings().weight.shape[0])
    ids = torch.arange(3, 3 + tokens) % vocab
    return ids[None]


def _same(a: object, b: object) -> bool:
    """Whether ``a`` and ``b`` are equal tensors (the head may read a slice of the last hidden state)."""
    return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)


def discover_architecture(model: nn.Module) -> ArchitectureSpec:
    """The layout of ``model``, found from its embeddings, its config and one traced forward.

    Args:
        model: A Hugging Face causal LM (``*ForCausalLM``, or a ``*ForConditionalGeneration`` whose language
            part is a decoder, read through its text stack).

    Raises:
        UnknownArchitectureError: A part cannot be found; the message says which, and how to describe the
            family by hand.
    """
    config = text_config(model.config)
    try:
        embed, unembed = model.get_input_embeddings(), model.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        embed = unembed = None
    if not isinstance(embed, nn.Module) or not isinstance(getattr(embed, "weight", None), torch.Tensor):
        raise _fail(model, "get_input_embeddings() returns no token embedding")
    weight = getattr(unembed, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.ndim != 2:
        raise _fail(model, "get_output_embeddings() returns no linear unembedding")
    n_layers = config_layers(config)
    if n_layers is None:
        raise _fail(model, "its config gives no number of layers")
    d = int(weight.shape[1])
    candidates = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) == n_layers]
    if not candidates:
        raise _fail(model, f"no ModuleList of {n_layers} blocks (the config's number of layers)")

    # One traced forward: the order in which modules start and end, what each took and what it returned.
    order: list[tuple[str, str]] = []
    inputs: dict[str, object] = {}
    outputs: dict[str, object] = {}
    handles = []
    for name, module in model.named_modules():
        if module is unembed or not name:
            continue

        def pre(mod, args, n=name):
            order.append(("start", n))
            inputs.setdefault(n, args[0] if args else None)

        def post(mod, args, output, n=name):
            order.append(("end", n))
            outputs.setdefault(n, output)

        handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]

    def at_head(mod, args):
        order.append(("head", ""))
        inputs.setdefault("", args[0] if args else None)

    handles.append(unembed.register_forward_pre_hook(at_head))
    ids = _probe_ids(model).to(weight.device if weight.device.type != "meta" else "cpu")
    try:
        with torch.no_grad():
            model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
    except Exception as err:  # a model that cannot run on token ids alone
        raise _fail(model, f"a forward on {ids.shape[1]} token ids failed ({type(err).__name__}: {err})") from err
    finally:
        for handle in handles:
            handle.remove()
    if "" not in inputs:
        raise _fail(model, "its forward never called the unembedding")

    def hidden_of(name: str) -> object:
        out = outputs.get(name)
        return out[0] if isinstance(out, tuple) and out else out

    def returns_hidden(path: str, blocks: nn.ModuleList) -> bool:
        return all(isinstance(h := hidden_of(f"{path}.{k}"), torch.Tensor) and h.shape == (1, ids.shape[1], d)
                   for k in range(len(blocks)))

    ran = [(name, blocks) for name, blocks in candidates if returns_hidden(name, blocks)]
    if not ran:
        raise _fail(model, f"no ModuleList of {n_layers} blocks whose items each return a (batch, tokens, {d}) "
                           "hidden state in a forward on token ids")
    # Several lists may qualify (a norm per layer beside the blocks): the blocks hold the most parameters.
    blocks_path, blocks = max(ran, key=lambda item: sum(p.numel() for p in item[1].parameters()))
    last = f"{blocks_path}.{len(blocks) - 1}"

    # The final norm: the modules that run between the last block and the head, each on what the one before
    # returned, starting from the last block's output and ending with the head's input.
    unembed_path = _path_of(model, unembed) or ""
    end_of_last = max(i for i, event in enumerate(order) if event == ("end", last))
    head_at = next(i for i, event in enumerate(order) if event[0] == "head" and i > end_of_last)
    current, chain = hidden_of(last), []
    for kind, name in order[end_of_last + 1: head_at]:
        if kind == "start" and _same(inputs.get(name), current) and not unembed_path.startswith(name + "."):
            chain.append(name)
            current = hidden_of(name)
    if not _same(current, inputs[""]):
        raise _fail(model, "what runs between its last block and its unembedding is not a chain of modules "
                           f"(after {'+'.join(chain) or 'the last block'} the hidden state is changed by code "
                           "outside any module)")

    fields: dict[str, str] = {}
    for field, attribute, value in _OUTPUT_TRANSFORMS:
        if getattr(config, attribute, None) not in (None, 0, 1, 1.0):
            fields[field] = value
    embed_path = _path_of(model, embed)
    if embed_path is None or not unembed_path:
        raise _fail(model, "its embeddings are not submodules of the model")
    return ArchitectureSpec(
        name=f"{getattr(model.config, 'model_type', type(model).__name__)} (discovered)",
        model_types=(), blocks=blocks_path, final_norm="+".join(chain), unembed=unembed_path, embed=embed_path,
        **fields,
    )
