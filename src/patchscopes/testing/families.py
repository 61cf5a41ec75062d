"""Every causal-LM class of the installed transformers, built tiny and random from its own config.

:func:`causal_lm_families` lists the ``(model_type, class name)`` pairs transformers registers for
``AutoModelForCausalLM``; :func:`tiny_family_config` takes a family's default config and shrinks it (two
decoder layers, width 64, four heads, four experts, the byte tokenizer's vocabulary), recursing into
sub-configs (the text and vision parts of multimodal models); :func:`tiny_family_model` builds the model and
wraps it with the byte tokenizer of :mod:`patchscopes.testing`. The coverage matrix
(:mod:`patchscopes.testing.coverage`) runs the engines on each of them.
"""

from __future__ import annotations

import torch

# Config attributes set to a small value wherever a config (or one of its sub-configs) has them.
_SMALL = {
    # depth
    "num_hidden_layers": 2, "n_layer": 2, "num_layers": 2, "n_layers": 2, "num_decoder_layers": 2,
    "decoder_layers": 2, "encoder_layers": 2, "num_encoder_layers": 2, "depth": 2,
    # width
    "hidden_size": 64, "n_embd": 64, "d_model": 64, "dim": 64, "embed_dim": 64, "n_embed": 64,
    "word_embed_proj_dim": 64, "projection_dim": 64, "hidden_dim": 64, "vision_output_dim": 64,
    "intermediate_size": 128, "ffn_dim": 128, "n_inner": 128, "ffn_hidden_size": 128, "d_ff": 128,
    "decoder_ffn_dim": 128, "encoder_ffn_dim": 128, "intermediate_size_mlp": 128, "hidden_size_per_layer_input": 16,
    "moe_intermediate_size": 32, "shared_expert_intermediate_size": 64, "expert_intermediate_size": 32,
    "num_attention_heads": 4, "n_head": 4, "num_heads": 4, "n_heads": 4, "decoder_attention_heads": 4,
    "encoder_attention_heads": 4, "num_key_value_heads": 2, "n_kv_heads": 2, "head_dim": 16,
    "kv_channels": 16, "attention_head_dim": 16, "kv_lora_rank": 16, "q_lora_rank": 24,
    "qk_rope_head_dim": 8, "qk_nope_head_dim": 8, "v_head_dim": 16, "qk_head_dim": 16,
    "rotary_dim": 8, "rotary_emb_base": 10000,
    # experts
    "num_experts": 4, "num_local_experts": 4, "n_routed_experts": 4, "moe_num_experts": 4,
    "num_experts_per_tok": 2, "moe_topk": 2, "top_k": 2, "n_group": 1, "topk_group": 1,
    "n_shared_experts": 1, "num_shared_experts": 1, "moe_k": 2, "first_k_dense_replace": 1,
    # state-space and recurrent parts
    "state_size": 8, "ssm_state_size": 8, "mamba_d_state": 8, "mamba_n_heads": 4, "mamba_d_head": 32,
    "mamba_expand": 2, "mamba_d_conv": 4, "mamba_n_groups": 1, "n_groups": 1, "time_step_rank": 8,
    "lru_width": 64, "linear_num_key_heads": 2, "linear_num_value_heads": 4, "linear_key_head_dim": 16,
    "linear_value_head_dim": 16,
    # vision and audio towers of multimodal models
    "image_size": 32, "patch_size": 8, "num_channels": 3,
    # positions
    "max_position_embeddings": 512, "n_positions": 512, "n_ctx": 512, "max_seq_len": 512,
    "sliding_window": 16, "attention_window_size": 16,
}
MAX_PARAMETERS = 20_000_000
# Token ids every config of the matrix shares with the byte tokenizer.
_TOKEN_IDS = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, "decoder_start_token_id": 1}


def causal_lm_families() -> list[tuple[str, str]]:
    """``(model_type, class name)`` of every ``AutoModelForCausalLM`` entry of the installed transformers."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.items())


def _layer_types(types: list, n: int) -> list:
    """``n`` entries of a per-layer type list, every distinct type first (a hybrid keeps both kinds)."""
    distinct: list = []
    for value in types:
        if value not in distinct:
            distinct.append(value)
    picked = distinct[:n]
    return picked + [types[0]] * (n - len(picked))


def _get(config, name: str, default=None):
    """``getattr`` that treats an attribute a config refuses to give globally (Gemma 4's per-layer ones) as
    absent."""
    try:
        return getattr(config, name, default)
    except Exception:  # transformers' AmbiguousGlobalPerLayerAttributeError and kin
        return default


def _shrink(config, vocab_size: int) -> None:
    for name, value in _SMALL.items():
        current = _get(config, name, None)
        if isinstance(current, int) and not isinstance(current, bool) and current > value:
            setattr(config, name, value)
    if isinstance(_get(config, "vocab_size", None), int):
        config.vocab_size = vocab_size
        if isinstance(_get(config, "vocab_size_per_layer_input"), int):  # Gemma 3n and 4: per-layer embeddings
            config.vocab_size_per_layer_input = vocab_size
        for name, value in _TOKEN_IDS.items():
            if hasattr(config, name):
                setattr(config, name, value)
    layers = next((_get(config, n) for n in ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
                   if isinstance(_get(config, n, None), int)), None)
    for name in ("layer_types", "layers_block_type", "block_types", "hybrid_override_pattern"):
        types = _get(config, name, None)
        if isinstance(types, (list, tuple)) and layers is not None and len(types) > layers:
            setattr(config, name, _layer_types(list(types), layers))
        elif isinstance(types, str) and layers is not None and len(types) > layers:
            setattr(config, name, "".join(_layer_types(list(types), layers)))
    if _get(config, "is_decoder", None) is False:  # the *ForCausalLM of an encoder family: make it causal
        config.is_decoder = True
    rope = _get(config, "qk_rope_head_dim", None)
    if isinstance(rope, int) and isinstance(_get(config, "head_dim", None), int):
        config.head_dim = rope  # multi-head latent attention: the rotary part sets the head size
        if isinstance(_get(config, "num_key_value_heads", None), int):
            config.num_key_value_heads = config.num_attention_heads  # and keys have a head per query head
    heads, kv = _get(config, "num_attention_heads", None), _get(config, "num_key_value_heads", None)
    if isinstance(heads, int) and isinstance(kv, int) and heads % kv:
        config.num_key_value_heads = heads
    for name in ("text_config", "vision_config", "audio_config", "decoder", "encoder", "vq_config",
                 "perceiver_config", "depth_decoder_config"):
        sub = _get(config, name, None)
        if sub is not None and hasattr(sub, "to_dict"):
            _shrink(sub, vocab_size)


def tiny_family_config(model_type: str, vocab_size: int):
    """The default config of ``model_type``, shrunk to two layers of width 64 and ``vocab_size`` tokens."""
    from transformers import AutoConfig

    config = AutoConfig.for_model(model_type)
    _shrink(config, vocab_size)
    if hasattr(config, "tie_word_embeddings") and getattr(config, "tie_word_embeddings", None) is None:
        config.tie_word_embeddings = False
    return config


def tiny_family_model(model_type: str, *, seed: int = 0):
    """The causal LM of ``model_type`` built tiny and random, with the byte tokenizer, as a Hugging Face model.

    Returns:
        ``(hf_model, tokenizer)``; the model is in float32 on the CPU, in evaluation mode.

    Raises:
        ValueError: The shrunk config still has more than :data:`MAX_PARAMETERS` parameters.
    """
    from transformers import AutoModelForCausalLM

    from patchscopes.testing import byte_tokenizer, sharpen

    tokenizer = byte_tokenizer()
    config = tiny_family_config(model_type, len(tokenizer))
    with torch.device("meta"):  # count first: a part the shrinking missed would make a huge model
        size = sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())
    if size > MAX_PARAMETERS:
        raise ValueError(f"the shrunk config still has {size / 1e6:.0f}M parameters (over {MAX_PARAMETERS / 1e6:.0f}M)")
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return sharpen(model).eval(), tokenizer
