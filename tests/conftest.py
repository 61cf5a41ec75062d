"""Shared fixtures: the real SmolLM2 model, cached tiny random models of every family, result comparisons."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from hypothesis import settings

import patchscopes as ps
from patchscopes.testing import TINY_FAMILIES, byte_tokenizer, sharpen, tiny_config, tiny_model

# CI (CI=true, as .ci/run runs) draws the same hypothesis examples every time, so a red run is the change's and can
# be replayed; a developer's run draws new ones each time (`pytest --hypothesis-seed=N` replays one).
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

# The models here are small: one thread is as fast, and several threads on a shared, busy CPU spin-wait
# for each other (tiny forwards then get a hundred times slower).
torch.set_num_threads(int(os.environ.get("PATCHSCOPES_TEST_THREADS", "1")))

_TINY: dict[str, ps.LanguageModel] = {}


def get_tiny(family: str) -> ps.LanguageModel:
    """The tiny model of ``family``, built once per test session."""
    if family not in _TINY:
        _TINY[family] = tiny_model(family)
    return _TINY[family]


@pytest.fixture(scope="session")
def smollm2() -> ps.LanguageModel:
    """The real embedded model (SmolLM2-135M, 30 layers, d=576), loaded once."""
    return ps.load_model("smollm2-135m")


@pytest.fixture(scope="session", params=TINY_FAMILIES, ids=list(TINY_FAMILIES))
def tiny(request) -> ps.LanguageModel:
    """A tiny random model of each family (3 layers, d=32), one per parameter."""
    return get_tiny(request.param)


@pytest.fixture(scope="session")
def tiny_llama() -> ps.LanguageModel:
    return get_tiny("llama")


@pytest.fixture(scope="session")
def tiny_gpt2() -> ps.LanguageModel:
    return get_tiny("gpt2")


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> str:
    """A tiny random Llama (3 layers) saved as a Hugging Face folder, to pass as --model (or to load_model)."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    lm = tiny_model("llama")
    lm.hf.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def wide_llama() -> ps.LanguageModel:
    """A tiny Llama of width 48 (the other tiny models have width 32), for cross-model patching."""
    from transformers import AutoModelForCausalLM

    tokenizer = byte_tokenizer()
    config = tiny_config("llama", len(tokenizer))
    config.hidden_size = 48
    config.num_hidden_layers = 4
    torch.manual_seed(1)
    model = sharpen(AutoModelForCausalLM.from_config(config, dtype=torch.float32))
    return ps.LanguageModel(model, tokenizer, name="tiny-llama-wide")


def assert_same_results(got, expected, *, atol: float = 1e-4) -> None:
    """Two lists of PatchResults agree: coordinates, top-1 token, top-k probabilities, generated text and ids."""
    assert len(got) == len(expected)
    for k, (a, b) in enumerate(zip(got, expected)):
        where = f"result {k} ({a.source_prompt!r} l={a.source_layer} i={a.source_position} l*={a.target_layer})"
        for attr in ("source_prompt", "source_layer", "source_position", "source_token", "target_prompt",
                     "target_layer", "target_position", "target_model", "mapping"):
            assert getattr(a, attr) == getattr(b, attr), f"{where}: {attr} differs"
        ra, rb = a.readings, b.readings
        assert ra.top_token_ids[0] == rb.top_token_ids[0], f"{where}: top-1 token differs"
        assert len(ra.top_probs) == len(rb.top_probs)
        diff = max(abs(p - q) for p, q in zip(ra.top_probs, rb.top_probs))
        assert diff <= atol, f"{where}: top-k probabilities differ by {diff}"
        assert ra.generated_text == rb.generated_text, f"{where}: generated text differs"
        assert ra.generated_token_ids == rb.generated_token_ids, f"{where}: generated ids differ"


@pytest.fixture(scope="session")
def assert_same():
    """:func:`assert_same_results` as a fixture, for test modules."""
    return assert_same_results


BROWSER_TESTS = "tests/serve/test_browser.py"


def pytest_terminal_summary(terminalreporter) -> None:
    """Name the explorer's browser tests that were skipped, why, and the one command that enables them
    (``make test`` runs them only where Chromium is installed)."""
    skipped = [report for report in terminalreporter.stats.get("skipped", [])
               if report.nodeid.replace("\\", "/").split("::")[0].endswith(BROWSER_TESTS)]
    if not skipped:
        return
    terminalreporter.section("browser tests skipped", sep="=", yellow=True, bold=True)
    for report in skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        terminalreporter.write_line(f"SKIPPED {report.nodeid}: {reason.removeprefix('Skipped: ')}")
    terminalreporter.write_line("enable them with: sudo apt-get install -y chromium  (or set PATCHSCOPES_CHROMIUM "
                                "to a Chromium binary), then run make test again")
