"""Testing: tiny, randomly initialised models of every covered family, for tests and examples; every causal-LM
family of transformers built tiny (:mod:`~patchscopes.testing.families`) and the coverage matrix of how each runs
(:mod:`~patchscopes.testing.coverage`).

Imports: the models (and, for the coverage matrix, the root framework's ``run`` and sweeps).

They need no download: the tokenizer is a byte-level one built in memory, and the weights are drawn from
a fixed seed. They are honest stand-ins for checking that the engine handles each architecture's layout,
attention masks, rotary or learned positions and caches, not for interpreting anything.
"""

from __future__ import annotations

import torch

from patchscopes.models import LanguageModel

TINY_FAMILIES = ("gpt2", "gptj", "gpt_neox", "llama", "mistral", "qwen2", "gemma2", "gemma3_text")

_SPECIALS = ["<pad>", "<bos>", "<eos>"]


def byte_tokenizer():
    """A byte-level tokenizer (256 byte tokens + pad, bos, eos) that prepends ``<bos>``, with offsets."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(_SPECIALS)}
    for ch in sorted(alphabet):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False), pre_tokenizers.Split("", "isolated")]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>", unk_token="<pad>"
    )


def tiny_config(family: str, vocab_size: int):
    """A small config of ``family`` (3 layers, width 32)."""
    import transformers as tf

    common = dict(vocab_size=vocab_size, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if family == "gpt2":
        return tf.GPT2Config(n_layer=3, n_embd=32, n_head=4, n_positions=512, **common)
    if family == "gptj":
        return tf.GPTJConfig(n_layer=3, n_embd=32, n_head=4, rotary_dim=4, n_positions=512, **common)
    if family == "gpt_neox":
        return tf.GPTNeoXConfig(hidden_size=32, num_attention_heads=4, num_hidden_layers=3, intermediate_size=64,
                                max_position_embeddings=512, **common)
    llama_like = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=512, **common)
    if family == "llama":
        return tf.LlamaConfig(**llama_like)
    if family == "mistral":
        return tf.MistralConfig(sliding_window=16, **llama_like)
    if family == "qwen2":
        return tf.Qwen2Config(**llama_like)
    if family == "gemma2":
        return tf.Gemma2Config(head_dim=8, sliding_window=16, final_logit_softcapping=30.0,
                               attn_logit_softcapping=50.0, query_pre_attn_scalar=8, **llama_like)
    if family == "gemma3_text":
        return tf.Gemma3TextConfig(head_dim=8, sliding_window=16, query_pre_attn_scalar=8,
                                   final_logit_softcapping=30.0, **llama_like)
    raise ValueError(f"no tiny config for {family!r}; choose from {', '.join(TINY_FAMILIES)}")


def tiny_model(family: str, *, seed: int = 0) -> LanguageModel:
    """A tiny random model of ``family`` with the byte tokenizer, in float32 on the CPU."""
    from transformers import AutoModelForCausalLM

    tokenizer = byte_tokenizer()
    config = tiny_config(family, len(tokenizer))
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return LanguageModel(sharpen(model), tokenizer, name=f"tiny-{family}")


def sharpen(model: torch.nn.Module) -> torch.nn.Module:
    """Redraw every matrix of ``model`` from N(0, 0.2²): larger random weights than the default init, so
    next-token distributions are far from uniform and comparisons bite. Returns the model."""
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim == 2:
                param.normal_(0.0, 0.2)
    return model
