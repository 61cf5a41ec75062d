"""The future lens (Pal et al. 2023): data, linear maps and learned prompts against direct computations, the
saved lens and its checkpoint, the evaluation, and the ``fit-future-lens`` / ``eval future`` commands."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

import patchscopes as ps
from patchscopes.cli import app
from patchscopes.engine.gradients import embed_tokens, soft_prompt_logits
from patchscopes.errors import PatchscopesError
from patchscopes.experiments.future_lens import evaluate_future, future_figure
from patchscopes.lenses.future import (
    FIXED_PROMPT,
    FutureLens,
    PromptSettings,
    fit_future_lens,
    fit_linear,
    future_states,
    prompt_loss,
    sample_future_positions,
    train_prompt,
)
from patchscopes.runs import RunOptions
from patchscopes.testing import tiny_model

runner = CliRunner()
ENV = {"COLUMNS": "200", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
DOCS = [f"doc {i}: the quick brown fox jumps over the lazy dog and runs {i} miles" for i in range(30)]


def test_samples_are_greedy_continuations_and_states_are_the_models(tiny_llama):
    lm = tiny_llama
    data = sample_future_positions(lm, DOCS, samples=6, max_offset=2, seed=0)
    assert len(data) == 6 and all(len(c) == 3 for c in data.continuations)
    sources, finals = future_states(lm, data, [0, 1], 2, batch_size=4)
    for s in range(len(data)):
        ids = torch.tensor([list(data.prefixes[s] + data.continuations[s])])
        with torch.no_grad():
            out = lm.hf(ids, output_hidden_states=True)
        i = len(data.prefixes[s]) - 1
        for n in range(3):  # the continuation is the model's own argmax at i + n
            assert int(out.logits[0, i + n].argmax()) == data.continuations[s][n]
        for k, layer in enumerate([0, 1]):
            assert torch.allclose(sources[s, k], out.hidden_states[layer + 1][0, i], atol=1e-4)
        # The last layer's state before the final norm: its head gives the model's logits.
        assert torch.allclose(lm.head(finals[s]), out.logits[0, i: i + 3], atol=1e-3)


def test_linear_maps_are_least_squares():
    torch.manual_seed(0)
    x = torch.randn(200, 2, 5)
    true_w, true_b = torch.randn(4, 5), torch.randn(4)
    y = torch.stack([x[:, 1] @ true_w.T + true_b, x[:, 0] @ true_w.T], dim=1)  # offsets 0 and 1
    maps = fit_linear(x, y, [3, 7], [0, 1])
    assert torch.allclose(maps[(7, 0)].weight, true_w, atol=1e-4) and torch.allclose(maps[(7, 0)].bias, true_b,
                                                                                       atol=1e-4)
    assert torch.allclose(maps[(3, 1)].weight, true_w, atol=1e-4) and maps[(3, 1)].bias.abs().max() < 1e-4


def test_soft_prompt_of_the_fixed_prompts_embeddings_equals_the_fixed_patchscope(tiny_llama):
    lm = tiny_llama
    data = sample_future_positions(lm, DOCS, samples=3, max_offset=2, seed=1)
    sources, _ = future_states(lm, data, [1], 2)
    prompt_ids = lm.encode(FIXED_PROMPT)
    prompt = embed_tokens(lm, torch.tensor(prompt_ids)).detach()
    conts = torch.tensor([list(c[:2]) for c in data.continuations])
    with torch.no_grad():
        logits = soft_prompt_logits(lm, prompt, conts, 1, sources[:, 0])
    for s in range(3):
        for n in range(3):
            scope = ps.Patchscope(ps.Source(data.prefixes[s], 1, -1),
                                  ps.Target(tuple(prompt_ids) + data.continuations[s][:n], 1, len(prompt_ids) - 1),
                                  ps.NextToken(top_k=1, full_logits=True))
            result = ps.run(scope, lm, engine="reference")[0]
            assert torch.allclose(logits[s, n], result.logits, atol=1e-3)


def test_the_learned_prompt_lowers_its_loss_and_beats_the_fixed_prompt(tiny_llama):
    lm = tiny_llama
    data = sample_future_positions(lm, DOCS, samples=24, max_offset=1, seed=0)
    sources, finals = future_states(lm, data, [1], 1)
    conts = torch.tensor([list(c) for c in data.continuations])
    k = len(lm.encode(FIXED_PROMPT))
    fixed = embed_tokens(lm, torch.tensor(lm.encode(FIXED_PROMPT))).detach().float()
    settings = PromptSettings(prompt_length=k, steps=30, batch_size=24, lr=3e-2)
    learned, losses = train_prompt(lm, 1, sources[:, 0], finals, conts, settings)
    with torch.no_grad():
        target = torch.log_softmax(lm.head(finals).float(), -1)
        before = prompt_loss(lm, fixed, 1, sources[:, 0], conts[:, :-1], target).item()
        after = prompt_loss(lm, learned, 1, sources[:, 0], conts[:, :-1], target).item()
        hits = {}
        for name, p in (("fixed", fixed), ("learned", learned)):
            top = soft_prompt_logits(lm, p, conts[:, :-1], 1, sources[:, 0]).argmax(-1)
            hits[name] = (top == conts).float().mean().item()
    assert losses[-1] < losses[0] and after < before
    assert hits["learned"] >= hits["fixed"]


def test_lens_round_trip_checkpoint_resume_and_identity(tiny_llama, tmp_path):
    settings = PromptSettings(prompt_length=3, steps=4, batch_size=4)
    straight = fit_future_lens(tiny_llama, DOCS, layers=[0, 2], offsets=[0, 1], samples=12, prompt=settings)
    ckpt = tmp_path / "ckpt.safetensors"
    fit_future_lens(tiny_llama, DOCS, layers=[0, 2], offsets=[0, 1], samples=12, checkpoint=ckpt,
                    checkpoint_every=1, prompt=PromptSettings(prompt_length=3, steps=2, batch_size=4))
    resumed = fit_future_lens(tiny_llama, DOCS, layers=[0, 2], offsets=[0, 1], samples=12, checkpoint=ckpt,
                              prompt=settings)
    for layer in (0, 2):
        assert torch.allclose(straight.prompts[layer], resumed.prompts[layer], atol=1e-6)
    assert straight.config["training"]["losses"] == resumed.config["training"]["losses"]
    with pytest.raises(PatchscopesError, match="other settings"):
        fit_future_lens(tiny_llama, DOCS, layers=[0, 2], offsets=[0, 1], samples=12, checkpoint=ckpt,
                        prompt=PromptSettings(prompt_length=4, steps=4, batch_size=4))
    straight.save(tmp_path / "lens")
    back = FutureLens.load(tmp_path / "lens", tiny_llama)
    assert back.layers == [0, 2] and back.offsets == [0, 1] and set(back.linear) == set(straight.linear)
    assert torch.equal(back.prompts[2], straight.prompts[2].float())
    assert torch.equal(back.linear[(2, 1)].weight, straight.linear[(2, 1)].weight)
    with pytest.raises(PatchscopesError, match="another model"):
        FutureLens.load(tmp_path / "lens", tiny_model("llama", seed=3))


def test_evaluation_records_engines_agree_and_fit_documents_are_left_out(tiny_llama):
    lens = fit_future_lens(tiny_llama, DOCS[:10], layers=[1], offsets=[0, 1], samples=10,
                           prompt=PromptSettings(prompt_length=3, steps=2, batch_size=4))
    results = evaluate_future(tiny_llama, DOCS[5:], lens=lens, samples=8, seed=2)
    summary = results.summary()
    assert set(summary["method"]) == {"linear", "fixed", "learned"} and set(summary["offset"]) == {0, 1}
    assert {"method", "layer", "offset", "precision_at_1", "n"} <= set(results.records()[0])
    assert results.attrs["documents"] <= 20  # documents 5..9 were fitted on
    reference = evaluate_future(tiny_llama, DOCS[5:], lens=lens, samples=8, seed=2, methods=["fixed"],
                                options=RunOptions(engine="reference"))
    fixed = summary[summary["method"] == "fixed"].reset_index(drop=True)
    assert list(fixed["precision_at_1"]) == list(reference.summary()["precision_at_1"])
    assert len(future_figure(results).data) == 3 * 2
    with pytest.raises(PatchscopesError, match="no linear map"):
        evaluate_future(tiny_llama, DOCS, lens=lens, offsets=[0, 1, 2], samples=4)
    with pytest.raises(PatchscopesError, match="need a fitted lens"):
        evaluate_future(tiny_llama, DOCS, methods=["linear"], samples=4)
    with pytest.raises(PatchscopesError, match="beyond the text"):
        evaluate_future(tiny_llama, DOCS, offsets=[0, 70], methods=["fixed"], samples=4)


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("future-text") / "text.txt"
    path.write_text("\n\n".join(DOCS * 2 + [d.upper() for d in DOCS]))
    return path


def test_fit_and_eval_commands(tiny_dir, text_file, tmp_path):
    out = tmp_path / "lens"
    fit = runner.invoke(app, ["fit-future-lens", "--model", tiny_dir, "--text", str(text_file), "--layers", "1,2",
                              "--offsets", "0:2", "--samples", "12", "--steps", "2", "--prompt-length", "3",
                              "--out", str(out)], env=ENV)
    assert fit.exit_code == 0, fit.output
    assert (out / "future.safetensors").is_file() and (out / "checkpoint.safetensors").is_file()
    result = runner.invoke(app, ["eval", "future", "--model", tiny_dir, "--text", str(text_file), "--lens", str(out),
                                 "--offsets", "0:2", "--samples", "6", "--json", str(tmp_path / "f.json"),
                                 "--plot", str(tmp_path / "f.html")], env=ENV)
    assert result.exit_code == 0, result.output
    assert "learned prompt" in result.output and "N=1" in result.output
    records = json.loads((tmp_path / "f.json").read_text())
    assert {(r["method"], r["layer"], r["offset"]) for r in records} == {
        (m, x, o) for m in ("linear", "fixed", "learned") for x in (1, 2) for o in (0, 1)}
    assert (tmp_path / "f.html").is_file()


@pytest.mark.parametrize("args, fragment", [
    (["--offsets", "0,70"], "out of range"),
    (["--lens", "{other}"], "another model"),
    (["--methods", "linear"], "need a fitted lens"),
    (["--methods", "oracle"], "unknown method"),
])
def test_eval_future_bad_input_exits_2(tiny_dir, text_file, tmp_path, args, fragment):
    other = tmp_path / "other"
    if "{other}" in args:
        lm = tiny_model("llama", seed=5)
        fit_future_lens(lm, DOCS, layers=[1], offsets=[0], samples=4, train_prompts=False).save(other)
    args = [a.format(other=other) for a in args]
    result = runner.invoke(app, ["eval", "future", "--model", tiny_dir, "--text", str(text_file), "--samples", "4",
                                 *args], env=ENV)
    assert result.exit_code == 2, result.output
    assert fragment in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("engine", ["batched", "reference"])
def test_learned_method_through_the_engine_equals_the_training_forward(tiny_llama, engine):
    lens = fit_future_lens(tiny_llama, DOCS[:10], layers=[1], offsets=[0, 1, 2], samples=8,
                           prompt=PromptSettings(prompt_length=3, steps=3, batch_size=4))
    results = evaluate_future(tiny_llama, DOCS[10:], lens=lens, samples=6, methods=["learned"], top_k=1,
                              options=RunOptions(engine=engine))
    data = sample_future_positions(tiny_llama, DOCS[10:], samples=6, max_offset=2, seed=1)
    sources, _ = future_states(tiny_llama, data, [1], 2)
    conts = torch.tensor([list(c) for c in data.continuations])
    with torch.no_grad():
        top = soft_prompt_logits(tiny_llama, lens.prompts[1], conts[:, :2], 1, sources[:, 0]).argmax(-1)
    hits = results.hits.sort_values(["offset", "sample"])
    assert hits["top1"].tolist() == (top == conts).T.reshape(-1).tolist()


def test_fit_and_eval_commands_resume_from_their_run_dirs(tiny_dir, text_file, tmp_path):
    fit_dir, eval_dir = tmp_path / "fit-run", tmp_path / "eval-run"
    fit = ["fit-future-lens", "--model", tiny_dir, "--text", str(text_file), "--layers", "1,2", "--offsets", "0:2",
           "--samples", "12", "--steps", "2", "--prompt-length", "3", "--run-dir", str(fit_dir)]
    assert runner.invoke(app, [*fit, "--out", str(tmp_path / "a")], env=ENV).exit_code == 0
    state = fit_dir / "states" / "future-lens.safetensors"
    assert state.is_file() and (fit_dir / "future-lens-checkpoint.safetensors").is_file()
    assert not (tmp_path / "a" / "checkpoint.safetensors").exists()  # the checkpoint lives in the run dir
    stamp = state.stat().st_mtime_ns
    again = runner.invoke(app, [*fit, "--out", str(tmp_path / "b")], env=ENV)
    assert again.exit_code == 0, again.output
    assert state.stat().st_mtime_ns == stamp  # read back, not fitted again
    assert (tmp_path / "a" / "future.json").read_bytes() == (tmp_path / "b" / "future.json").read_bytes()
    a, b = (load_file(tmp_path / x / "future.safetensors") for x in "ab")
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)
    refused = runner.invoke(app, [*fit[:-2], "--steps", "3", "--run-dir", str(fit_dir), "--out",
                                  str(tmp_path / "c")], env=ENV)
    assert refused.exit_code == 2 and "other settings" in refused.output and "steps" in refused.output

    ev = ["eval", "future", "--model", tiny_dir, "--text", str(text_file), "--lens", str(tmp_path / "a"),
          "--offsets", "0:2", "--samples", "6", "--run-dir", str(eval_dir)]
    first = runner.invoke(app, [*ev, "--json", str(tmp_path / "e1.json")], env=ENV)
    assert first.exit_code == 0, first.output
    shards = sorted((eval_dir / "shards").glob("*.jsonl"))
    assert len(shards) >= 3  # the fixed method and the learned prompt of each layer
    stamps = [p.stat().st_mtime_ns for p in shards]
    second = runner.invoke(app, [*ev, "--json", str(tmp_path / "e2.json")], env=ENV)
    assert second.exit_code == 0, second.output
    assert sorted((eval_dir / "shards").glob("*.jsonl")) == shards
    assert [p.stat().st_mtime_ns for p in shards] == stamps

    def records(name):  # the same records but for the run's time
        return [{k: v for k, v in r.items() if k != "seconds"} for r in json.loads((tmp_path / name).read_text())]

    assert records("e1.json") == records("e2.json")
    other = runner.invoke(app, [*ev[:-4], "--samples", "5", "--run-dir", str(eval_dir)], env=ENV)
    assert other.exit_code == 2 and "other settings" in other.output and "samples" in other.output
