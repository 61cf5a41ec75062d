"""The LRE (Hernandez et al. 2024): the fit against a direct implementation of the original procedure, the
saved file, faithfulness, the attribute lens, the ``fit-lre`` command and ``eval attributes --methods lre``."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from typer.testing import CliRunner

from patchscopes.cli import app
from patchscopes.data.relations import Relation, RelationSample
from patchscopes.errors import PatchscopesError
from patchscopes.experiments.attributes import evaluate_attributes
from patchscopes.lenses.lre import (
    LinearRelation,
    attribute_lens,
    faithfulness,
    fit_lre,
    icl_prompt,
    lre_template,
    token_matches,
)
from patchscopes.testing import tiny_model

runner = CliRunner()
ENV = {"COLUMNS": "200", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
COLORS = ["red", "blue", "green"]


def toy_relation(n: int = 7) -> Relation:
    return Relation("toy color", "toy_color", [RelationSample(f"th{i}", COLORS[i % 3]) for i in range(n)],
                    prompt_templates=["The color of {} is"])


def _direct_jacobian_and_residual(model, ids, layer, position):
    """The original's procedure, written directly: z(h) by a plain full forward in which h replaces block
    ``layer``'s output at ``position``; J by torch.autograd.functional.jacobian; b = z − J h."""
    blocks = model.arch.blocks
    store = {}

    def read_h(module, args, output):
        store["h"] = output[0, position].detach().clone()

    handle = blocks[layer].register_forward_hook(read_h)
    with torch.no_grad():
        model.hf(input_ids=torch.tensor([ids]))
    handle.remove()

    def z_of(h):
        def put(module, args, output):
            out = output.clone()
            out[0, position] = h
            return out

        def read(module, args, output):
            store["z"] = output[0, -1]

        handles = [blocks[layer].register_forward_hook(put), blocks[-1].register_forward_hook(read)]
        try:
            model.hf(input_ids=torch.tensor([ids]))
        finally:
            for x in handles:
                x.remove()
        return store["z"]

    h = store["h"]
    jac = torch.autograd.functional.jacobian(z_of, h)
    z = z_of(h).detach()
    return jac, z - jac @ h, h


def test_fit_equals_the_original_procedure(tiny_llama):
    lm = tiny_llama
    rel = toy_relation()
    examples = rel.samples[:3]
    lres = fit_lre(lm, rel, [0, 1], examples=examples, beta=1.0)
    for layer in (0, 1):
        jacs, biases = [], []
        for x in examples:
            prompt, end = icl_prompt("The color of {} is", x.subject, examples)
            ids = lm.encode(prompt)
            position = lm.token_at_char(prompt, ids, end - 1)
            assert lm.token_strings([ids[position]])[0] == x.subject[-1]
            jac, bias, _ = _direct_jacobian_and_residual(lm, ids, layer, position)
            jacs.append(jac)
            biases.append(bias)
        lre = lres[layer]
        assert torch.allclose(lre.weight, torch.stack(jacs).mean(0), atol=1e-4)
        assert torch.allclose(lre.bias, torch.stack(biases).mean(0), atol=1e-3)
        assert lre.beta == 1.0 and lre.layer == layer and lre.template == "The color of {} is"


def test_icl_prompt_and_template():
    examples = [RelationSample("a", "red"), RelationSample("b", "blue"), RelationSample("c", "green")]
    prompt, end = icl_prompt("The color of {} is", "b", examples)
    assert prompt == "The color of a is red\nThe color of c is green\nThe color of b is"
    assert prompt[:end].endswith("of b")
    rel = Relation("r", "r", examples, target_prompt="The color of x")
    assert lre_template(rel) == "The color of {}"
    assert token_matches(" Par", "Paris") and not token_matches(" ", "Paris") and token_matches("us", "x", ["USA"])


def test_beta_is_chosen_on_the_examples_and_the_file_round_trips(tiny_llama, tmp_path):
    lre = fit_lre(tiny_llama, toy_relation(), 1, examples=3)[1]
    assert lre.beta in (1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 7.0, 10.0)
    assert 0.0 <= lre.config["fit_faithfulness"] <= 1.0
    path = lre.save(tmp_path / "lre.safetensors")
    back = LinearRelation.load(path, tiny_llama)
    assert torch.equal(back.weight, lre.weight) and torch.equal(back.bias, lre.bias)
    assert (back.layer, back.beta, back.relation, back.examples) == (lre.layer, lre.beta, lre.relation, lre.examples)
    with pytest.raises(PatchscopesError, match="another model"):
        LinearRelation.load(path, tiny_model("llama", seed=1))


def test_too_few_examples_are_refused(tiny_llama):
    with pytest.raises(PatchscopesError, match="fewer than the 8 examples"):
        fit_lre(tiny_llama, toy_relation(5), 0, examples=8)
    with pytest.raises(PatchscopesError, match="at least 2"):
        fit_lre(tiny_llama, toy_relation(5), 0, examples=1)


def test_faithfulness_compares_the_lre_with_the_model(tiny_llama):
    lm = tiny_llama
    rel = toy_relation()
    lre = fit_lre(lm, rel, 1, examples=3, beta=2.0)[1]
    frame = faithfulness(lm, lre, rel.samples)
    fitted = {x.subject for x in lre.examples}
    assert len(frame) == 4 and not set(frame["subject"]) & fitted
    mapping = lre.mapping()
    for row in frame.itertuples():
        prompt, end = lre.prompt(row.subject)
        ids = lm.encode(prompt)
        position = lm.token_at_char(prompt, ids, end - 1)
        with torch.no_grad():
            out = lm.hf(input_ids=torch.tensor([ids]), output_hidden_states=True)
            h = out.hidden_states[lre.layer + 1][0, position]
            lre_top = int(lm.head(mapping(h[None]))[0].argmax())
            lm_top = int(out.logits[0, -1].argmax())
        assert row.faithful == (lre_top == lm_top)
        assert row.lre_token == lm.token_strings([lre_top])[0] and row.lm_token == lm.token_strings([lm_top])[0]
    with pytest.raises(PatchscopesError, match="no test subject"):
        faithfulness(lm, lre, lre.examples)


def test_attribute_lens_reads_every_position(tiny_llama):
    lre = fit_lre(tiny_llama, toy_relation(), 0, examples=3, beta=1.0)[0]
    frame = attribute_lens(tiny_llama, lre, "th1 and th2")
    assert list(frame["position"]) == list(range(len(tiny_llama.encode("th1 and th2"))))
    assert all(len(t) == 3 for t in frame["top_tokens"])


def test_eval_attributes_with_the_lre_method(tiny_llama):
    rel = toy_relation(9)
    results = evaluate_attributes(tiny_llama, [rel], source_layers="0,2", target_layers="0", max_samples=6,
                                  fact_filter=False, max_new_tokens=2, methods=["lre"], lre_examples=3)
    assert results.patchscope.empty and results.probe.empty
    fitted = set(results.faithfulness["subject"])
    assert not results.lre.empty and set(results.lre["source_layer"]) == {0, 2}
    assert set(results.faithfulness["layer"]) == {0, 2} and len(fitted) == 6  # 9 subjects, 3 fitted
    summary = results.summary().iloc[0]
    assert 0 <= summary["lre_mean"] <= 1 and 0 <= summary["lre_faithfulness"] <= 1
    methods = {r["method"] for r in results.records()}
    assert {"lre", "lre-faithfulness"} <= methods


def _relation_file(folder, n):
    data = {"name": "toy color", "prompt_templates": ["The color of {} is"],
            "samples": [{"subject": f"th{i}", "object": COLORS[i % 3]} for i in range(n)]}
    path = folder / "toy_color.json"
    path.write_text(json.dumps(data))
    return path


def test_fit_lre_command_writes_the_file_and_reports_faithfulness(tiny_dir, tmp_path):
    out = tmp_path / "lre.safetensors"
    result = runner.invoke(app, ["fit-lre", "--model", tiny_dir, "--relation", str(_relation_file(tmp_path, 6)),
                                 "--layer", "1", "--examples", "3", "--out", str(out),
                                 "--json", str(tmp_path / "f.json")], env=ENV)
    assert result.exit_code == 0, result.output
    assert "faithful" in result.output and out.is_file()
    assert len(json.loads((tmp_path / "f.json").read_text())) == 3


@pytest.mark.parametrize("args, fragment", [
    (["--examples", "8"], "fewer than the 8 examples"),
    (["--out", "lre.pt"], "must end in .safetensors"),
    (["--layer", "7"], "out of range"),
])
def test_fit_lre_bad_input_exits_2(tiny_dir, tmp_path, args, fragment):
    base = ["fit-lre", "--model", tiny_dir, "--relation", str(_relation_file(tmp_path, 5)), "--examples", "3",
            "--out", str(tmp_path / "x.safetensors")]
    result = runner.invoke(app, [*base, *args], env=ENV)
    assert result.exit_code == 2, result.output
    assert fragment in result.output and "Traceback" not in result.output


def test_eval_attributes_refuses_an_unknown_method(tiny_dir, tmp_path):
    result = runner.invoke(app, ["eval", "attributes", "--model", tiny_dir, "--relations",
                                 str(_relation_file(tmp_path, 5)), "--methods", "patchscope,lens"], env=ENV)
    assert result.exit_code == 2 and "unknown --methods lens" in result.output


def test_fit_lre_resumes_from_its_run_dir_and_refuses_other_settings(tiny_dir, tmp_path):
    run_dir = tmp_path / "run"
    args = ["fit-lre", "--model", tiny_dir, "--relation", str(_relation_file(tmp_path, 6)), "--layer", "1",
            "--examples", "3", "--run-dir", str(run_dir)]
    first = runner.invoke(app, [*args, "--out", str(tmp_path / "a.safetensors"), "--json", str(tmp_path / "a.json")],
                          env=ENV)
    assert first.exit_code == 0, first.output
    state = run_dir / "states" / "lre.safetensors"
    files = [state, *sorted((run_dir / "shards").glob("*.jsonl"))]
    assert len(files) > 1  # the fitted LRE and the faithfulness patches
    stamps = [p.stat().st_mtime_ns for p in files]
    second = runner.invoke(app, [*args, "--out", str(tmp_path / "b.safetensors"), "--json", str(tmp_path / "b.json")],
                           env=ENV)
    assert second.exit_code == 0, second.output
    assert [p.stat().st_mtime_ns for p in files] == stamps  # read back, not computed again
    a, b = (LinearRelation.load(tmp_path / f"{x}.safetensors") for x in "ab")
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
    assert (a.beta, a.examples, a.config) == (b.beta, b.examples, b.config)  # the fit's time too
    assert json.loads((tmp_path / "a.json").read_text()) == json.loads((tmp_path / "b.json").read_text())
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["command"] == "fit-lre" and manifest["settings"]["lre_examples"] == 3
    refused = runner.invoke(app, [*args[:-4], "--examples", "4", "--run-dir", str(run_dir),
                                  "--out", str(tmp_path / "c.safetensors")], env=ENV)
    assert refused.exit_code == 2 and "other settings" in refused.output and "lre_examples" in refused.output
