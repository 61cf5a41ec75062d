"""One row per bad input of the hardening review (issue 23): specs, numbers, prompts and files given to the
command line. Each ends in exit status 2 with exactly one ``error:`` line and a ``hint:`` line, no traceback, no
usage block, and no output file left behind.

The model is the tiny random Llama (3 layers, 259 tokens, ``tiny_dir``); a row whose check comes before the model
loads names a model that does not exist (``NOWHERE``), so that it fails if the check moves after the load.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
from typer.testing import CliRunner

from patchscopes.cli import app

runner = CliRunner()
ENV = {"COLUMNS": "200", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
PROMPT = "Hi you"  # 7 positions on the tiny model: <bos> and one byte token each
NOWHERE = "/nonexistent/model"  # the check must come before the model loads
NOT_UTF8 = b"Caf\xe9 au lait".decode("utf-8", "surrogateescape")  # what argv holds for a Latin-1 prompt

# (id, the model to pass, the arguments after `inspect PROMPT` (or the whole command for other commands), fragments)
INSPECT = [
    ("huge-layer-range", "tiny", ["-l", "0:10000000000000"], ["'0:10000000000000' goes past the last layer",
                                                               "3 layers, 0..2"]),
    ("huge-position-range", "tiny", ["-p", "0:10000000000000"], ["position range", "7 positions"]),
    ("overflowing-layer-range", "tiny", ["-l", "0:99999999999999999999"], ["goes past the last layer"]),
    ("overflowing-target-layer", "tiny", ["--target-layer", "99999999999999999999"],
     ["target layer 99999999999999999999 is out of range"]),
    ("overflowing-target-range", "tiny", ["--target-layer", "0:99999999999999999999"], ["target layer range"]),
    ("space-inside-a-number", NOWHERE, ["-l", "1 2"], ["invalid layer spec '1 2'", "space inside a number"]),
    ("underscore-inside-a-number", NOWHERE, ["-l", "1_0"], ["invalid layer spec '1_0'", "'_'"]),
    ("fullwidth-digits", NOWHERE, ["-l", "０:２"], ["not ASCII", "'0:2'"]),
    ("arabic-indic-digit", NOWHERE, ["-p", "٣"], ["invalid position spec '٣'", "not ASCII", "'3'"]),
    ("dash-for-colon", NOWHERE, ["-l", "0-5"], ["invalid layer spec '0-5'"]),  # a typo, reported before the load
    ("top-k-past-the-vocabulary", "tiny", ["--top-k", "100000"], ["top_k 100000 is more than the vocabulary",
                                                                  "259 tokens"]),
    ("top-k-zero", NOWHERE, ["-k", "0"], ["--top-k: must be at least 1, got 0"]),
    ("top-k-not-a-number", NOWHERE, ["-k", "abc"], ["--top-k"]),
    ("max-new-tokens-zero", NOWHERE, ["--max-new-tokens", "0"], ["--max-new-tokens: must be at least 1"]),
    ("batch-rows-zero", NOWHERE, ["--batch-rows", "0"], ["--batch-rows: must be at least 1"]),
    ("layer-range-past-the-model", "tiny", ["-l", "0:40"], ["the layer range '0:40' goes past the last layer",
                                                            "3 layers, 0..2"]),
    ("range-backwards", "tiny", ["-l", "2:1"], ["the layer range '2:1' selects nothing"]),
    ("range-starting-past-the-model", "tiny", ["-l", "10:2"], ["'10:2' starts at layer 10, past the last one"]),
    ("negative-range-backwards", "tiny", ["-p", "-1:-5"], ["the position range '-1:-5' selects nothing"]),
    ("negative-range-before-the-start", "tiny", ["-l", "-1:-5"], ["has its end -5 before the first layer"]),
    ("empty-spec", "tiny", ["-l", ""], ["the layer spec '' selects nothing"]),
    ("word-not-in-the-prompt", NOWHERE, ["-p", "Eiffel"], ["'Eiffel' is neither a position SPEC nor a word"]),
    ("words-mixed-with-numbers", NOWHERE, ["-p", "you,-1"], ["mixes numbers and words"]),
]
PROMPTS = [
    ("prompt-not-utf8", ["inspect", NOT_UTF8, "-m", NOWHERE], ["has a byte that is not UTF-8 (0xE9, at character 3)"]),
    ("prompt-lone-surrogate", ["inspect", "a\ud800b", "-m", NOWHERE], ["lone surrogate '\\ud800'"]),
    ("target-prompt-not-utf8", ["inspect", PROMPT, "-t", NOT_UTF8, "-m", NOWHERE], ["the target prompt"]),
    ("trace-prompt-not-utf8", ["trace", NOT_UTF8, "--subject", "Caf", "-m", NOWHERE], ["not UTF-8"]),
    ("trace-noise-scale-negative", ["trace", PROMPT, "--subject", "Hi", "--noise-scale", "-1", "-m", NOWHERE],
     ["--noise-scale: must be above 0.0, got -1.0"]),
    ("trace-noise-scale-zero", ["trace", PROMPT, "--subject", "Hi", "--noise-scale", "0", "-m", NOWHERE],
     ["--noise-scale: must be above 0.0"]),
    ("trace-noise-scale-nan", ["trace", PROMPT, "--subject", "Hi", "--noise-scale", "nan", "-m", NOWHERE],
     ["--noise-scale: must be a finite number, got nan"]),
    ("trace-noise-scale-inf", ["trace", PROMPT, "--subject", "Hi", "--noise-scale", "inf", "-m", NOWHERE],
     ["--noise-scale: must be a finite number, got inf"]),
    ("trace-token-range-underscore", ["trace", PROMPT, "--subject", "Hi", "--token-range", "1_0", "-m", NOWHERE],
     ["invalid token-range spec '1_0'"]),
    ("trace-token-range-fullwidth", ["trace", PROMPT, "--subject", "Hi", "--token-range", "０", "-m", NOWHERE],
     ["not ASCII"]),
    ("fit-lre-beta-inf", ["fit-lre", "--relation", "r.json", "-l", "0", "--out", "x", "--beta", "inf", "-m",
                          NOWHERE], ["--beta: must be a finite number, got inf"]),
    ("eval-attributes-lre-beta-negative", ["eval", "attributes", "--lre-beta", "-2", "-m", NOWHERE],
     ["--lre-beta: must be above 0.0, got -2.0"]),
    # Every command's layer SPEC is checked as the command line is read, before its model loads.
    ("eval-next-token-layer-typo", ["eval", "next-token", "--text", "x.txt", "-l", "0-5", "-m", NOWHERE],
     ["--layers: invalid layer spec '0-5'"]),
    ("fit-future-lens-layer-spaces", ["fit-future-lens", "--text", "x.txt", "-l", "1 2", "-m", NOWHERE],
     ["--layers: invalid layer spec '1 2'"]),
    ("eval-entities-layer-digits", ["eval", "entities", "-e", "e.json", "-l", "٣", "-m", NOWHERE], ["not ASCII"]),
    ("eval-attributes-layer-typo", ["eval", "attributes", "--source-layers", "0-5", "-m", NOWHERE],
     ["--source-layers: invalid layer spec '0-5'"]),
    ("fit-map-target-layer-typo", ["fit-map", "-a", NOWHERE, "-b", NOWHERE, "--text", "t.txt", "-l", "0",
                                   "--target-layers", "1_0"], ["--target-layers: invalid target layer spec '1_0'"]),
]


def check_one_clean_error(result, fragments, leftovers) -> None:
    """Exit 2; one ``error:`` line, first, with the fragments; a ``hint:`` line; no traceback, no usage block;
    no output file."""
    out = result.output
    assert result.exit_code == 2, out
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in out and "Usage:" not in out, out
    lines = out.strip().splitlines()
    assert [line for line in lines if line.startswith("error: ")] == lines[:1], out
    assert any(line.startswith("hint: ") for line in lines[1:]), out
    for fragment in fragments or ():
        assert fragment in out, f"{fragment!r} not in {out!r}"
    assert not [path for path in leftovers if path.exists()]


@pytest.mark.parametrize(("model", "args", "fragments"), [row[1:] for row in INSPECT], ids=[row[0] for row in INSPECT])
def test_a_bad_inspect_input_is_one_message_with_a_hint(tiny_dir, tmp_path, model, args, fragments):
    out = tmp_path / "out.json"
    argv = ["inspect", PROMPT, "--model", tiny_dir if model == "tiny" else model, *args, "--json", str(out)]
    check_one_clean_error(runner.invoke(app, argv, env=ENV), fragments, [out])


@pytest.mark.parametrize(("argv", "fragments"), [row[1:] for row in PROMPTS], ids=[row[0] for row in PROMPTS])
def test_a_bad_prompt_or_number_is_one_message_with_a_hint(tmp_path, argv, fragments):
    out = tmp_path / "out.json"
    if argv[0] not in ("fit-future-lens", "fit-map", "fit-lre"):  # the commands that write no --json
        argv = [*argv, "--json", str(out)]
    check_one_clean_error(runner.invoke(app, argv, env=ENV), fragments, [out])


def test_a_text_file_that_is_not_utf8_is_named_with_its_byte_offset(tiny_dir, tmp_path):
    text = tmp_path / "latin1.txt"
    text.write_bytes("Première ligne.\n\nDeuxième ligne.\n".encode("latin-1"))
    out = tmp_path / "out.json"
    result = runner.invoke(app, ["eval", "next-token", "--text", str(text), "-m", tiny_dir, "--json", str(out)],
                           env=ENV)
    check_one_clean_error(result, [f"the text file {text} is not UTF-8 text: byte 5 (0xE8, line 1)"], [out])


def test_every_row_of_the_review_is_here():
    """The review's rows in this part (specs, numbers, prompts): each is a row above."""
    ids = {row[0] for row in INSPECT + PROMPTS}
    for wanted in ("huge-layer-range", "huge-position-range", "overflowing-target-layer", "space-inside-a-number",
                   "underscore-inside-a-number", "fullwidth-digits", "arabic-indic-digit", "top-k-past-the-vocabulary",
                   "top-k-zero", "prompt-not-utf8", "layer-range-past-the-model", "range-starting-past-the-model",
                   "negative-range-backwards", "empty-spec", "trace-noise-scale-negative", "trace-noise-scale-nan",
                   "trace-noise-scale-inf"):
        assert wanted in ids
