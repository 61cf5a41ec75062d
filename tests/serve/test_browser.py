"""The explorer in a real browser: Playwright drives Chromium through the page as a person would, on SmolLM2.

Playwright cannot download its own browser here: the tests use the system's Chromium (Debian's ``chromium``
package, which ``.ci/run`` installs), found through ``$PATCHSCOPES_CHROMIUM`` or on the ``PATH``; without one
they skip, saying so. ``PATCHSCOPES_SCREENSHOT=docs/explorer.png`` (``make screenshot``) saves the README's
picture of the explorer, taken on the way.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

pytest.importorskip("fastapi", reason="the explorer needs the serve extra: pip install 'patchscopes[serve]'")
pytest.importorskip("playwright.sync_api", reason="the browser tests need playwright (the dev extra)")

import torch
from playwright.sync_api import sync_playwright
from typer.testing import CliRunner

import patchscopes as ps
import patchscopes.cli.options as cli_options
from patchscopes.cli import app as cli_app
from patchscopes.serve import ModelPool, create_app

PROMPT = "The Eiffel Tower is located in the city of"
LAYERS = "0:30:3"
CELL = ("3", "2")  # layer 3, position 2 ("iffel")
MAX_SCREENSHOT_BYTES = 300_000


def chromium_path() -> str | None:
    """The system's Chromium: ``$PATCHSCOPES_CHROMIUM``, else the first of the usual names on the PATH."""
    given = os.environ.get("PATCHSCOPES_CHROMIUM")
    if given:
        return given if Path(given).is_file() else None
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def browser():
    path = chromium_path()
    if path is None:
        pytest.skip("no Chromium found (PATCHSCOPES_CHROMIUM or chromium on the PATH): install it with "
                    "`sudo apt-get install -y chromium` or set PATCHSCOPES_CHROMIUM to its path")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=path)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def explorer(smollm2, live_server):
    """The explorer serving SmolLM2 on a free port: its URL."""
    pool = ModelPool({"smollm2-135m": smollm2})
    try:
        with live_server(create_app(pool)) as url:
            yield url
    finally:
        pool.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 820}, accept_downloads=True)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    yield page
    context.close()
    assert not errors, f"errors in the page's scripts: {errors}"


def inspect_json(smollm2, tmp_path, monkeypatch, *args: str) -> list[dict]:
    """``patchscopes inspect PROMPT ARGS --json``, run by the CLI on the already loaded SmolLM2."""
    monkeypatch.setattr(cli_options, "load_model", lambda name, **kwargs: smollm2)
    out = tmp_path / "inspect.json"
    result = CliRunner().invoke(cli_app, ["inspect", PROMPT, "--model", "smollm2-135m", *args, "--json", str(out)],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text())


def grid_cells(page) -> dict[tuple[str, str], tuple[str, float]]:
    """Every filled cell of the grid: (row, position) → (top token, probability)."""
    cells = page.eval_on_selector_all(
        "#grid tbody td", "tds => tds.map(td => [td.dataset.row, td.dataset.position, td.dataset.topToken ?? null, "
        "td.dataset.prob ?? null])")
    return {(row, pos): (token, float(prob)) for row, pos, token, prob in cells if token is not None}


def wait_for_grid(page) -> None:
    page.wait_for_selector("#grid[data-state=done]", timeout=90_000)


def test_explore_a_prompt_in_the_browser(page, explorer, smollm2, tmp_path, monkeypatch):
    # A person types a prompt and a layer range, and runs it.
    page.goto(explorer)
    page.fill("#prompt", PROMPT)
    page.fill("#layers", LAYERS)
    page.click("#run")
    wait_for_grid(page)
    assert page.locator("#grid td.pending").count() == 0

    # Every cell shows what `inspect --json` says for the same query.
    expected = inspect_json(smollm2, tmp_path, monkeypatch, "--layers", LAYERS)
    cells = grid_cells(page)
    assert len(cells) == len(expected) == 10 * 10
    for rec in expected:
        token, prob = cells[(str(rec["source_layer"]), str(rec["source_position"]))]
        assert token == rec["top_token"], rec
        assert prob == pytest.approx(rec["top_prob"], abs=1e-4)
    status = page.inner_text("#status")
    assert "100 patches" in status

    # The last row: the model's own next token after each position.
    own = page.eval_on_selector_all("#grid tfoot td", "tds => tds.map(td => td.dataset.topToken)")
    with torch.no_grad():
        logits = smollm2.hf(torch.tensor([smollm2.encode(PROMPT)])).logits[0]
    assert own == smollm2.token_strings(logits.argmax(-1).tolist())

    # Hovering a cell lists its top-k with probabilities.
    cell = page.locator(f'#grid tbody td[data-row="{CELL[0]}"][data-position="{CELL[1]}"]')
    cell.hover()
    assert page.locator("#tooltip").is_visible()
    assert page.locator("#tooltip .topk li").count() == 10

    # Clicking it opens the panel, which describes that hidden state with the description preset.
    cell.click()
    page.wait_for_selector("#describe-output[data-state=done]", timeout=60_000)
    described = ps.sweep(smollm2, PROMPT, "description", layers=int(CELL[0]), positions=int(CELL[1]))
    assert page.inner_text("#describe-output .text") == described["generated_text"].iloc[0].strip()
    offered = page.eval_on_selector_all("#describe-scope option", "os => os.map(o => o.value)")
    assert offered == [name for name, p in ps.PRESETS.items() if isinstance(p.readout, ps.Generate)]

    # The URL holds the query and the open cell.
    query = parse_qs(urlparse(page.url).query)
    assert query["prompt"] == [PROMPT] and query["layers"] == [LAYERS] and query["cell"] == ["|".join(CELL)]

    page.mouse.move(5, 5)  # the tooltip off the picture
    page.wait_for_selector("#tooltip", state="hidden")
    shot = Path(os.environ.get("PATCHSCOPES_SCREENSHOT") or tmp_path / "explorer.png")
    page.screenshot(path=str(shot))
    assert 0 < shot.stat().st_size < MAX_SCREENSHOT_BYTES

    # Downloads: the grid's records as JSON (the same as inspect --json) and CSV.
    with page.expect_download() as download:
        page.click("#download-json")
    records = json.loads(Path(download.value.path()).read_text())
    assert [(r["source_layer"], r["source_position"], r["top_token"]) for r in records] == [
        (r["source_layer"], r["source_position"], r["top_token"]) for r in expected]
    assert [set(r) for r in records] == [set(r) for r in expected]
    with page.expect_download() as download:
        page.click("#download-csv")
    csv_path = tmp_path / "grid.csv"
    download.value.save_as(csv_path)
    table = ps.load_results(csv_path)
    assert table["top_token"].tolist() == [r["top_token"] for r in expected]
    assert table["top_token_ids"].tolist() == [r["top_token_ids"] for r in expected]

    # Someone opens the shared URL: the query runs again, and the same cell is open and described.
    shared = page.url
    other = page.context.new_page()
    other.goto(shared)
    wait_for_grid(other)
    assert grid_cells(other) == cells
    other.wait_for_selector("#describe-output[data-state=done]", timeout=60_000)
    assert other.inner_text("#describe-output .text") == described["generated_text"].iloc[0].strip()
    assert other.input_value("#layers") == LAYERS


def test_bad_input_is_explained_on_the_page(page, explorer):
    page.goto(explorer)
    page.fill("#prompt", PROMPT)
    page.fill("#layers", "99")
    page.click("#run")
    page.wait_for_selector("#error:not([hidden])")
    assert "layer 99 is out of range" in page.inner_text("#error")
    assert page.locator("#grid").get_attribute("data-state") == "error"


def test_describe_a_pasted_vector_in_the_browser(page, explorer, smollm2):
    """A person pastes the unembedding row of " Paris", writes it at the embeddings at one scale, and reads the
    model's explanation, the chosen scale marked."""
    token = smollm2.tokenizer(" Paris", add_special_tokens=False)["input_ids"][0]
    row = smollm2.arch.unembed.weight[token].detach().float()
    page.goto(explorer)
    page.fill("#vector-text", " ".join(f"{x:.6f}" for x in row.tolist()))
    page.fill("#vector-layer", "embeddings")
    page.fill("#vector-scales", "2.5")
    page.fill("#vector-tokens", "6")
    page.click("#vector-run")
    page.wait_for_selector("#vector-output[data-state=done]", timeout=90_000)
    chosen = page.inner_text("#vector-output tr.chosen")
    assert "Paris" in chosen and "★" in chosen
    page.fill("#vector-text", "1 2 3")  # the wrong width: the message and its hint, not a crash
    page.click("#vector-run")
    page.wait_for_selector("#vector-output[data-state=error]", timeout=30_000)
    assert "width" in page.inner_text("#vector-output")
