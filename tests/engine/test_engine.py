"""The batched engine against the plain reference engine, and the engine's defining properties."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from transformers import GenerationConfig

import patchscopes as ps
from patchscopes import Generate, NextToken, Patchscope, PatchscopesError, Source, Target
from patchscopes.engine.budget import run_with_backoff
from patchscopes.engine.hooks import write_hook
from patchscopes.engine.reference import source_hidden
from patchscopes.resolve import resolve_jobs
from patchscopes.testing import TINY_FAMILIES, tiny_model

# Prompts of different lengths in one batch: left padding and the position shift are exercised.
PROMPTS = ["The Eiffel Tower is in Paris", "Hi", "A longer prompt about rivers, mountains and the sea"]
CUSTOM_TARGET = "Tell me about x and then go on"
PRESET_NAMES = list(ps.PRESETS)  # every preset, new ones included


def generates(preset: str) -> bool:
    return isinstance(ps.PRESETS[preset].readout, Generate)


def preset_scopes(model: ps.LanguageModel, preset: str, layers: str) -> list[Patchscope]:
    if generates(preset):
        return ps.plan_sweep(model, PROMPTS, preset, layers=layers, positions="0,-1", max_new_tokens=6)
    return ps.plan_sweep(model, PROMPTS, preset, layers=layers, positions="0,-1", top_k=5)


def custom_scopes(model: ps.LanguageModel, layers: list[int], target_layers: list[int]) -> list[Patchscope]:
    """A different target prompt patched in its middle, several target layers, both readouts, mixed in one run."""
    n_target = len(model.encode(CUSTOM_TARGET))
    scopes = []
    for prompt in PROMPTS:
        for layer in layers:
            for t_layer in target_layers:
                src = Source(prompt, layer, -1)
                scopes += [
                    Patchscope(src, Target(CUSTOM_TARGET, t_layer, "x"), NextToken(top_k=5)),
                    Patchscope(src, Target(CUSTOM_TARGET, t_layer, "x"), NextToken(top_k=3, position=-3)),
                    Patchscope(Source(prompt, layer, 0), Target(CUSTOM_TARGET, t_layer, 1), NextToken(top_k=5)),
                    Patchscope(src, Target(CUSTOM_TARGET, t_layer, "x"), Generate(max_new_tokens=5)),
                    Patchscope(src, Target(CUSTOM_TARGET, t_layer, n_target - 1), Generate(max_new_tokens=4)),
                ]
    return scopes


# -- batched == reference ------------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_presets_match_reference_on_tiny_models(tiny, preset, assert_same):
    scopes = preset_scopes(tiny, preset, "all")
    batched = ps.run(scopes, tiny)
    assert_same(batched, ps.run(scopes, tiny, engine="reference"))
    if generates(preset):
        assert all(r.generated_text is not None for r in batched)
    else:
        assert all(r.generated_text is None and len(r.readings.top_tokens) == 5 for r in batched)


def test_custom_scope_matches_reference_on_tiny_models(tiny, assert_same):
    scopes = custom_scopes(tiny, layers=[0, 2], target_layers=[0, 1, 2])
    batched = ps.run(scopes, tiny)
    assert_same(batched, ps.run(scopes, tiny, engine="reference"))
    # The target position resolved to the placeholder, not to the last token.
    x = CUSTOM_TARGET.index("x") + 1  # the byte tokenizer: one token per character after <bos>
    assert batched[0].target_position == x


@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_presets_match_reference_on_smollm2(smollm2, preset, assert_same):
    readout = ps.PRESETS[preset].readout  # generations get fewer layers, with relevancy (three runs) one
    layers = ("9" if readout.relevancy else "3,9") if generates(preset) else "0,12,-1"
    scopes = preset_scopes(smollm2, preset, layers)
    assert_same(ps.run(scopes, smollm2), ps.run(scopes, smollm2, engine="reference"))


def test_custom_scope_matches_reference_on_smollm2(smollm2, assert_same):
    scopes = custom_scopes(smollm2, layers=[5], target_layers=[2, 5, 29])
    assert_same(ps.run(scopes, smollm2), ps.run(scopes, smollm2, engine="reference"))


def test_results_come_back_in_input_order(tiny_llama):
    scopes = custom_scopes(tiny_llama, layers=[1], target_layers=[2, 0])
    reordered = scopes[::-1]
    forward, backward = ps.run(scopes, tiny_llama), ps.run(reordered, tiny_llama)
    assert [r.readings.top_token_ids for r in forward] == [r.readings.top_token_ids for r in backward[::-1]]
    assert [r.target_layer for r in forward] == [s.target.layer for s in scopes]


def test_mixed_readouts_and_duplicates_in_one_group(tiny_llama, assert_same):
    """Rows sharing a target differ in top_k and full_logits; a scope given twice gives the same result twice."""
    readouts = [NextToken(top_k=3, full_logits=True), NextToken(top_k=5),
                NextToken(top_k=tiny_llama.vocab_size, full_logits=True)]
    scopes = [Patchscope(Source("Paris", 1), Target(CUSTOM_TARGET, 1, "x"), r) for r in readouts]
    scopes.append(scopes[0])
    batched, reference = ps.run(scopes, tiny_llama), ps.run(scopes, tiny_llama, engine="reference")
    assert_same(batched, reference)
    assert [len(r.readings.top_probs) for r in batched] == [3, 5, tiny_llama.vocab_size, 3]
    assert [r.logits is None for r in batched] == [False, True, False, False]
    for got, want in zip(batched, reference):
        if want.logits is not None:
            torch.testing.assert_close(got.logits, want.logits, atol=1e-4, rtol=0)
            assert got.logits.shape == (tiny_llama.vocab_size,)
    assert batched[0].readings.top_probs == batched[3].readings.top_probs


def test_no_hooks_left_on_the_model(tiny_llama, monkeypatch):
    # (transformers installs output-capturing hooks of its own the first time hidden states are asked for)
    before = [list(block._forward_hooks) for block in tiny_llama.arch.blocks]
    scopes = custom_scopes(tiny_llama, layers=[1], target_layers=[1])
    ps.run(scopes, tiny_llama)
    ps.run(scopes, tiny_llama, engine="reference", baseline=True)
    assert [list(block._forward_hooks) for block in tiny_llama.arch.blocks] == before
    # A run that fails half-way through removes its hooks too.
    original, calls = tiny_llama.forward, []

    def failing_forward(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("failed half-way")
        return original(*args, **kwargs)

    monkeypatch.setattr(tiny_llama, "forward", failing_forward)
    for engine in ("batched", "reference"):
        calls.clear()
        with pytest.raises(RuntimeError, match="failed half-way"):
            ps.run(scopes, tiny_llama, engine=engine)
        assert [list(block._forward_hooks) for block in tiny_llama.arch.blocks] == before


# -- identity patch and logit lens ---------------------------------------------------------------------------
def _identity_check(model: ps.LanguageModel, engine: str) -> None:
    prompt = PROMPTS[0]
    ids = model.encode(prompt)
    logits, _ = model.forward(torch.tensor([ids]))
    expected = logits[0, -1]
    scopes = [
        Patchscope(Source(prompt, layer, pos), Target(prompt, layer, pos), NextToken(full_logits=True))
        for layer in (0, model.num_layers // 2, model.num_layers - 1)
        for pos in (0, 2, -1)
    ]
    for result in ps.run(scopes, model, engine=engine):
        if engine == "reference":
            assert torch.equal(result.logits, expected)
        else:
            torch.testing.assert_close(result.logits, expected, atol=1e-4, rtol=0)
        assert result.readings.top_token_ids[0] == int(expected.argmax())


@pytest.mark.parametrize("engine", ["batched", "reference"])
def test_identity_patch_reproduces_unpatched_run_tiny(tiny, engine):
    _identity_check(tiny, engine)


@pytest.mark.parametrize("engine", ["batched", "reference"])
def test_identity_patch_reproduces_unpatched_run_smollm2(smollm2, engine):
    _identity_check(smollm2, engine)


def _logit_lens_check(model: ps.LanguageModel, engine: str) -> None:
    k = 5
    frame = ps.sweep(model, PROMPTS, "logit-lens", layers=-1, positions="all", top_k=k, engine=engine)
    for prompt in PROMPTS:
        ids = model.encode(prompt)
        logits, _ = model.forward(torch.tensor([ids]))
        probs = logits[0].float().softmax(-1)
        rows = frame[frame.source_prompt == prompt].sort_values("source_position")
        assert list(rows.source_position) == list(range(len(ids)))  # every position
        assert set(rows.target_layer) == {model.num_layers - 1}
        for pos, row in zip(rows.source_position, rows.itertuples()):
            top = probs[pos].topk(k)
            assert row.top_token_ids[0] == int(logits[0, pos].argmax())
            assert row.top_probs == pytest.approx(top.values.tolist(), abs=1e-4)


@pytest.mark.parametrize("engine", ["batched", "reference"])
def test_logit_lens_at_last_layer_is_the_model_output_tiny(tiny, engine):
    _logit_lens_check(tiny, engine)


@pytest.mark.parametrize("engine", ["batched", "reference"])
def test_logit_lens_at_last_layer_is_the_model_output_smollm2(smollm2, engine):
    _logit_lens_check(smollm2, engine)


# -- generation ----------------------------------------------------------------------------------------------
def _hf_generate(model: ps.LanguageModel, scope: Patchscope, *, once: bool, max_new_tokens: int) -> list[int]:
    """Hugging Face greedy ``generate`` with the patch hook on block l* at the last prompt position."""
    job = resolve_jobs([scope], model)[0]
    h = source_hidden(job.source)
    ids = torch.tensor([job.tokens])
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=model.pad_token_id)
    calls = []

    def hook(module, args, output):  # at prefill, the last prompt token (i*); at every later step, the new token
        calls.append(1)
        width = (output[0] if isinstance(output, tuple) else output).shape[1]
        if once and len(calls) > 1:
            return output
        return write_hook([0], [width - 1], h[None], [False])(module, args, output)

    handle = model.arch.blocks[job.patch.layer].register_forward_hook(hook)
    try:
        with torch.no_grad():
            out = model.hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config)
    finally:
        handle.remove()
    return out[0, ids.shape[1]:].tolist()


def _prefill_check(model: ps.LanguageModel, layer: int) -> None:
    n = 8
    scope = Patchscope(Source(PROMPTS[0], layer, -1), Target("Tell me about x", layer, -1),
                       Generate(max_new_tokens=n))
    patched_once = _hf_generate(model, scope, once=True, max_new_tokens=n)
    patched_always = _hf_generate(model, scope, once=False, max_new_tokens=n)
    assert patched_once != patched_always  # re-patching at every step would change the text
    for engine in ("batched", "reference"):
        ids = ps.run(scope, model, engine=engine)[0].readings.generated_token_ids
        assert ids, f"{engine}: nothing generated"
        # The engines stop at end-of-sequence; up to there they follow the once-patched HF generation.
        assert ids == patched_once[: len(ids)], engine
        assert len(ids) == n or patched_once[len(ids)] in model.eos_token_ids


def test_generation_patches_only_at_prefill_tiny(tiny):
    _prefill_check(tiny, layer=1)


def test_generation_patches_only_at_prefill_smollm2(smollm2):
    _prefill_check(smollm2, layer=4)


def test_batched_generation_patches_once(tiny_llama, monkeypatch):
    """Counted directly: the engine's write hooks write on the prefill call only."""
    import patchscopes.engine.hooks as hooks

    writes: list[int] = []
    original = hooks.write_hook

    def counting_patch_hook(rows, cols, values, adds, *, offset=0):
        inner = original(rows, cols, values, adds, offset=offset)

        def hook(module, args, output):
            before = output[0].clone() if isinstance(output, tuple) else output.clone()
            result = inner(module, args, output)
            after = result[0] if isinstance(result, tuple) else result
            writes.append(int(after.shape[1]) if not torch.equal(before, after) else 0)
            return result

        return hook

    monkeypatch.setattr(hooks, "write_hook", counting_patch_hook)
    calls: list[int] = []
    counter = tiny_llama.arch.blocks[1].register_forward_hook(lambda m, a, out: calls.append(out[0].shape[1]
                                                                 if isinstance(out, tuple) else out.shape[1]))
    try:
        scope = Patchscope(Source(PROMPTS[0], 1, -1), Target("Tell me about x and y", 1, "x"),
                           Generate(max_new_tokens=6))
        result = ps.run(scope, tiny_llama)[0]
    finally:
        counter.remove()
    generated = len(result.readings.generated_token_ids)
    length = len(tiny_llama.encode("Tell me about x and y"))
    assert writes == [length]  # one write, at prefill (a job alone on its prompt runs it whole)
    # Block l* ran for the source, the patched prefill and every decoding step (the last new token is not fed
    # back); the decoding steps were not patched.
    assert calls == [len(tiny_llama.encode(PROMPTS[0])), length] + [1] * (generated - 1)
    assert generated == 6


@pytest.mark.parametrize("engine", ["batched", "reference"])
def test_sampling_is_reproducible_with_a_seed(tiny_llama, engine):
    def sample(seed: int) -> list[str]:
        readout = Generate(max_new_tokens=10, do_sample=True, temperature=1.5, seed=seed)
        scopes = [Patchscope(Source(p, 1, -1), Target("Tell me about x", 1, -1), readout) for p in PROMPTS]
        return [r.generated_text for r in ps.run(scopes, tiny_llama, engine=engine)]

    first = sample(3)
    assert sample(3) == first
    assert sample(4) != first
    greedy = [Patchscope(Source(p, 1, -1), Target("Tell me about x", 1, -1), Generate(max_new_tokens=10))
              for p in PROMPTS]
    assert [r.generated_text for r in ps.run(greedy, tiny_llama, engine=engine)] != first


def test_sampling_does_not_depend_on_batch_size(tiny_llama):
    readout = Generate(max_new_tokens=8, do_sample=True, sample_top_k=20, top_p=0.9, seed=11)
    scopes = [Patchscope(Source(p, 1, -1), Target("Tell me about x", 1, -1), readout) for p in PROMPTS]
    default = ps.run(scopes, tiny_llama)
    single = ps.run(scopes, tiny_llama, budget=ps.BatchBudget(rows=1))
    assert [r.generated_text for r in default] == [r.generated_text for r in single]


@pytest.mark.parametrize("engine", ["batched", "reference"])
def test_stop_strings_cut_the_text(smollm2, engine):
    scopes = ps.plan_sweep(smollm2, ["The Eiffel Tower"], "description", layers="3,6", positions="-1",
                           readout=Generate(max_new_tokens=12))
    full = ps.run(scopes, smollm2, engine=engine)
    for scope, result in zip(scopes, full):
        text = result.generated_text
        assert len(text) > 6
        stop = text[len(text) // 2]
        cut = ps.run(Patchscope(scope.source, scope.target, Generate(max_new_tokens=12, stop=(stop, "never"))),
                     smollm2, engine=engine)[0]
        assert cut.generated_text == text[: text.index(stop)]
        assert len(cut.readings.generated_token_ids) < len(result.readings.generated_token_ids)
        # The kept ids are the tokens up to the one that completes the stop string.
        assert stop in smollm2.decode(cut.readings.generated_token_ids)
        assert stop not in smollm2.decode(cut.readings.generated_token_ids[:-1])


def test_description_preset_stops_at_comma_and_newline(smollm2):
    frame = ps.sweep(smollm2, ["Leonardo da Vinci", "Paris"], "description", layers="2,5,8", positions="-1")
    assert frame.generated_text.map(lambda t: "," not in t and "\n" not in t).all()


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_end_of_sequence_ends_rows_at_different_steps(family, assert_same):
    """Rows leave the batched decoding as they emit end-of-sequence; the ids stop before it, as in HF."""
    model = tiny_model(family)  # a fresh one: its end-of-sequence tokens are changed below
    scopes = [Patchscope(Source(p, layer, -1), Target("Tell me about x", layer, -1), Generate(max_new_tokens=10))
              for p in PROMPTS for layer in range(3)]
    before = ps.run(scopes, model)
    counts = Counter(t for r in before for t in r.readings.generated_token_ids[1:])
    eos = counts.most_common(1)[0][0]  # a token that most rows generate, some late, some early
    model.hf.generation_config.eos_token_id = [model.tokenizer.eos_token_id, eos]
    after = ps.run(scopes, model)
    assert_same(after, ps.run(scopes, model, engine="reference"))
    lengths = [len(r.readings.generated_token_ids) for r in after]
    assert len(set(lengths)) > 1 and min(lengths) < 10
    for old, new in zip(before, after):
        ids = old.readings.generated_token_ids
        cut = ids.index(eos) if eos in ids else len(ids)
        assert new.readings.generated_token_ids == ids[:cut]


@pytest.mark.parametrize("max_new_tokens", [1, 3, 7])
def test_max_new_tokens_is_respected(tiny, max_new_tokens):
    readout = Generate(max_new_tokens=max_new_tokens)
    scopes = [Patchscope(Source(p, 2, -1), Target("Tell me about x", 2, -1), readout) for p in PROMPTS]
    for engine in ("batched", "reference"):
        lengths = [len(r.readings.generated_token_ids) for r in ps.run(scopes, tiny, engine=engine)]
        assert all(n <= max_new_tokens for n in lengths), (engine, lengths)
        assert max_new_tokens in lengths, (engine, lengths)


# -- baseline ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("engine", ["batched", "reference"])
def test_baseline_is_the_unpatched_target(tiny_llama, engine):
    targets = [Target(CUSTOM_TARGET, 1, "x"), Target(CUSTOM_TARGET, 0, 2), Target("Another target", 0, 3)]
    scopes = [Patchscope(Source(p, 1, -1), t, NextToken(top_k=4)) for p in PROMPTS for t in targets]
    scopes += [Patchscope(Source(p, 1, -1), Target(CUSTOM_TARGET, 1, "x"), NextToken(top_k=4, position=-4))
               for p in PROMPTS]
    results = ps.run(scopes, tiny_llama, engine=engine, baseline=True)
    for scope, result in zip(scopes, results):
        ids = tiny_llama.encode(scope.target.prompt)
        logits, _ = tiny_llama.forward(torch.tensor([ids]))
        top = logits[0, scope.readout.position].softmax(-1).topk(4)
        assert result.baseline.top_token_ids == top.indices.tolist()
        assert result.baseline.top_probs == pytest.approx(top.values.tolist(), abs=1e-5)
        assert result.baseline.top_token_ids != result.readings.top_token_ids or \
            result.baseline.top_probs != pytest.approx(result.readings.top_probs, abs=1e-6)
    # The same target gets the same baseline whatever the source.
    assert results[0].baseline.top_probs == results[len(targets)].baseline.top_probs


def test_last_layer_patch_before_the_readout_changes_nothing(tiny_llama):
    """After the last block no layer carries the patch to later positions: the readout equals the baseline."""
    last = tiny_llama.num_layers - 1
    scopes = [Patchscope(Source(p, 1, -1), Target(CUSTOM_TARGET, last, 2), NextToken(top_k=4)) for p in PROMPTS]
    for engine in ("batched", "reference"):
        for result in ps.run(scopes, tiny_llama, engine=engine, baseline=True):
            assert result.readings.top_token_ids == result.baseline.top_token_ids
            assert result.readings.top_probs == pytest.approx(result.baseline.top_probs, abs=1e-6)


def test_generation_baseline_is_unpatched_generate(tiny_llama):
    scope = Patchscope(Source(PROMPTS[0], 1, -1), Target("Tell me about x", 1, -1), Generate(max_new_tokens=6))
    result = ps.run(scope, tiny_llama, baseline=True)[0]
    ids = torch.tensor([tiny_llama.encode("Tell me about x")])
    config = GenerationConfig(max_new_tokens=6, do_sample=False, pad_token_id=tiny_llama.pad_token_id)
    out = tiny_llama.hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config)
    expected = out[0, ids.shape[1]:].tolist()
    assert result.baseline.generated_token_ids == expected[: len(result.baseline.generated_token_ids)]
    assert result.baseline.generated_text == tiny_llama.decode(result.baseline.generated_token_ids)
    assert result.baseline.generated_token_ids != result.readings.generated_token_ids


# -- positions and layers ------------------------------------------------------------------------------------
def test_substring_position_is_last_token_of_last_occurrence(smollm2):
    prompt = "The Tower and the Eiffel Tower"
    tokens = smollm2.token_strings(smollm2.encode(prompt))
    result = ps.run(Patchscope(Source(prompt, 3, "Tower"), Target(prompt, 3, "Eiffel")), smollm2)[0]
    assert result.source_position == len(tokens) - 1 == max(i for i, t in enumerate(tokens) if t == " Tower")
    assert result.source_token == " Tower"
    assert "".join(tokens[: result.target_position + 1]).endswith("Eiffel")  # last token of a split word


def test_substring_position_on_byte_tokens(tiny_llama):
    prompt = "cat and dog and cat food"
    result = ps.run(Patchscope(Source(prompt, 0, "cat"), Target(prompt, 0, "and")), tiny_llama)[0]
    assert result.source_position == prompt.rindex("cat") + len("cat")  # +1 for <bos>, -1 for the last char
    assert result.source_token == "t"
    assert result.target_position == prompt.rindex("and") + len("and")


def test_negative_layers_and_positions(tiny_llama, assert_same):
    n = len(tiny_llama.encode(PROMPTS[0]))
    last = tiny_llama.num_layers - 1
    neg = ps.run(Patchscope(Source(PROMPTS[0], -1, -2), Target(CUSTOM_TARGET, -2, -3)), tiny_llama)
    pos = ps.run(Patchscope(Source(PROMPTS[0], last, n - 2), Target(CUSTOM_TARGET, last - 1,
                                                                      len(tiny_llama.encode(CUSTOM_TARGET)) - 3)),
                 tiny_llama)
    assert_same(neg, pos, atol=0)
    assert (neg[0].source_layer, neg[0].source_position, neg[0].target_layer) == (last, n - 2, last - 1)


# -- batch budgets and out-of-memory back-off ----------------------------------------------------------------
def _mixed_scopes(model: ps.LanguageModel) -> list[Patchscope]:
    return (custom_scopes(model, layers=[0, 2], target_layers=[1, 2])
            + ps.plan_sweep(model, PROMPTS, "logit-lens", layers="0,-1", positions="0,-1"))


@pytest.mark.parametrize("budget", [ps.BatchBudget(rows=1), ps.BatchBudget(rows=3),
                                    ps.BatchBudget(tokens=20), ps.BatchBudget(rows=None, bytes=1)],
                         ids=["rows=1", "rows=3", "tokens=20", "bytes=1"])
def test_tiny_budgets_give_the_same_results(tiny, budget, assert_same):
    scopes = _mixed_scopes(tiny)
    assert_same(ps.run(scopes, tiny, budget=budget), ps.run(scopes, tiny), atol=1e-5)


def test_budget_must_be_positive():
    for kwargs in ({"rows": 0}, {"tokens": -1}, {"bytes": 0}):
        with pytest.raises(PatchscopesError, match="must be at least 1"):
            ps.BatchBudget(**kwargs)


def test_run_with_backoff_halves_on_out_of_memory():
    calls: list[list[int]] = []

    def fn(items):
        calls.append(list(items))
        if len(items) > 2:
            raise torch.OutOfMemoryError("simulated")
        return [i * 10 for i in items]

    assert run_with_backoff(fn, list(range(7))) == [i * 10 for i in range(7)]
    assert calls[:3] == [list(range(7)), [0, 1, 2], [0]]  # 7 -> 3 + 4 -> (1 + 2) + (2 + 2)
    succeeded = [c for c in calls if len(c) <= 2]
    assert sorted(i for c in succeeded for i in c) == list(range(7))  # every item ran exactly once


def test_run_with_backoff_single_row_fails_clearly():
    def fn(items):
        raise torch.OutOfMemoryError("simulated")

    with pytest.raises(PatchscopesError, match="out of memory on a single batch row") as info:
        run_with_backoff(fn, [1, 2, 3])
    assert "hint" in str(info.value)
    assert isinstance(info.value.__cause__, torch.OutOfMemoryError)


def test_run_with_backoff_passes_other_errors():
    def fn(items):
        raise RuntimeError("not a memory problem")

    with pytest.raises(RuntimeError, match="not a memory problem"):
        run_with_backoff(fn, [1, 2])


def test_engine_backs_off_on_out_of_memory(tiny_llama, monkeypatch, assert_same):
    scopes = _mixed_scopes(tiny_llama)
    expected = ps.run(scopes, tiny_llama)
    original = tiny_llama.forward
    sizes: list[int] = []

    def forward(input_ids, **kwargs):
        sizes.append(int(input_ids.shape[0]))
        if input_ids.shape[0] > 2:
            raise torch.OutOfMemoryError("simulated")
        return original(input_ids, **kwargs)

    monkeypatch.setattr(tiny_llama, "forward", forward)
    assert_same(ps.run(scopes, tiny_llama), expected, atol=1e-5)
    assert max(sizes) > 2  # the first tries were too big and were halved


# -- cross-model patching ------------------------------------------------------------------------------------
def _affine(d_in: int, d_out: int) -> ps.Affine:
    gen = torch.Generator().manual_seed(0)
    return ps.Affine(torch.randn(d_out, d_in, generator=gen) * 0.3, torch.randn(d_out, generator=gen) * 0.1,
                     name="small-to-wide")


def test_cross_model_without_mapping_fails_before_running(tiny_llama, wide_llama, monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("a model ran")

    monkeypatch.setattr(tiny_llama, "forward", boom)
    monkeypatch.setattr(wide_llama, "forward", boom)
    scope = Patchscope(Source(PROMPTS[0], 1, -1), Target(CUSTOM_TARGET, 1, "x", model=wide_llama))
    for engine in ("batched", "reference"):
        with pytest.raises(PatchscopesError, match=r"\(1, 32\).*needs \(1, 48\)"):
            ps.run(scope, tiny_llama, engine=engine)
    with pytest.raises(PatchscopesError, match="48"):
        ps.sweep(tiny_llama, PROMPTS, "token-identity", target_model=wide_llama)


def test_cross_model_with_affine_matches_reference(tiny_llama, wide_llama, assert_same):
    mapping = _affine(32, 48)
    scopes = []
    for t_layer in (0, 2, 3):
        scopes += ps.plan_sweep(tiny_llama, PROMPTS, "token-identity", layers="0,2", positions="-1",
                                target_layers=t_layer, target_model=wide_llama, mapping=mapping)
    scopes += ps.plan_sweep(tiny_llama, PROMPTS, "description", layers="1", positions="-1",
                            target_model=wide_llama, mapping=mapping, max_new_tokens=5)
    lens = ps.plan_sweep(tiny_llama, PROMPTS, "logit-lens", layers="0,1", positions="0,-1",
                         target_model=wide_llama, mapping=mapping)
    assert {s.target.layer for s in lens} == {wide_llama.num_layers - 1}
    scopes += lens
    batched = ps.run(scopes, tiny_llama)
    assert_same(batched, ps.run(scopes, tiny_llama, engine="reference"))
    assert {r.target_model for r in batched} == {"tiny-llama-wide"}
    assert {r.source_model for r in batched} == {"tiny-llama"}
    assert {r.mapping for r in batched} == {"small-to-wide"}
    # The mapping matters: a different affine map gives different readings.
    changed = [Patchscope(s.source, Target(s.target.prompt, s.target.layer, s.target.position,
                                           mapping=ps.Affine(torch.zeros(48, 32)), model=wide_llama), s.readout)
               for s in scopes[:3]]
    zero = ps.run(changed, tiny_llama)
    assert [r.readings.top_probs for r in zero] != [r.readings.top_probs for r in batched[:3]]


def test_cross_model_with_wrong_callable_fails(tiny_llama, wide_llama):
    target = dict(prompt=CUSTOM_TARGET, layer=1, position="x", model=wide_llama)
    bad_size = Patchscope(Source(PROMPTS[0], 1), Target(**target, mapping=lambda h: h[:, :16]))
    with pytest.raises(PatchscopesError, match=r"turns a \(1, 32\) batch into \(1, 16\).*needs \(1, 48\)"):
        ps.run(bad_size, tiny_llama)
    broken = Patchscope(Source(PROMPTS[0], 1), Target(**target, mapping=lambda h: h @ torch.ones(5, 48)))
    with pytest.raises(PatchscopesError, match="failed on a vector of size 32"):
        ps.run(broken, tiny_llama)
    wrong_affine = Patchscope(Source(PROMPTS[0], 1), Target(**target, mapping=_affine(48, 48)))
    with pytest.raises(PatchscopesError, match="expects vectors of size 48, got 32"):
        ps.run(wrong_affine, tiny_llama)


def test_callable_mapping_matches_reference(tiny_llama, wide_llama, assert_same):
    weight = _affine(32, 48).weight

    def project(h: torch.Tensor) -> torch.Tensor:
        return torch.tanh(h @ weight.T)

    scopes = [Patchscope(Source(p, 1, -1), Target(CUSTOM_TARGET, t, "x", mapping=project, model=wide_llama))
              for p in PROMPTS for t in (0, 3)]
    batched = ps.run(scopes, tiny_llama)
    assert_same(batched, ps.run(scopes, tiny_llama, engine="reference"))
    assert batched[0].mapping == "project"


def test_unknown_engine(tiny_llama):
    with pytest.raises(PatchscopesError, match="unknown engine"):
        ps.run(Patchscope(Source("hi", 0), Target("hi", 0)), tiny_llama, engine="fast")
