"""Fixtures of the command-line tests."""

from __future__ import annotations

import pytest

from patchscopes.testing import tiny_model


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A tiny random Llama (3 layers) saved as a Hugging Face folder, to pass as --model."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    lm = tiny_model("llama")
    lm.hf.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    return str(folder)
