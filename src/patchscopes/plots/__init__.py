"""Figures of results: the interactive layer × position heatmap of a sweep, saved as self-contained HTML, the
experiments' figure helpers, and (:mod:`~patchscopes.plots.notebook`) ``ps.show`` for Jupyter.

Imports: pandas and plotly (and :mod:`patchscopes.errors`) only; the root, the experiments and the CLI draw
with it.

:func:`heatmap` works on the DataFrame that :func:`patchscopes.sweep` returns (or that
:func:`patchscopes.load_results` reads back): one row of cells per source layer (or per source → target
layer pair when several target layers were swept), one column per source position. Each cell shows the
patch's top token (for generation readouts, the generated text, shortened) and is coloured by its
probability; hovering lists the top-k tokens with their probabilities.

    >>> frame = patchscopes.sweep(model, "The Eiffel Tower is in Paris", "token-identity")
    >>> save_figure(heatmap(frame), "eiffel.html")

The helpers :func:`show_token`, :func:`shorten`, :func:`cell_text` and :func:`grid` are shared with the
command line's terminal table, so the terminal and the figure label cells the same way.
"""

from __future__ import annotations

import html
import importlib.util
import math
import textwrap
from collections.abc import Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from patchscopes.errors import PatchscopesError
from patchscopes.storage import write_output

_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".svg", ".pdf")


def show_token(token: str | None) -> str:
    """A token made visible: control characters escaped, leading and trailing spaces shown as ``␣``.

    Args:
        token: The decoded token (or any short text).

    Returns:
        ``"\\n"`` for a newline, ``"␣Paris"`` for ``" Paris"``, ``"∅"`` for the empty string.

    Example:
        >>> show_token(" Paris"), show_token("\\n\\n"), show_token("")
        ('␣Paris', '\\\\n\\\\n', '∅')
    """
    if token is None or (isinstance(token, float) and math.isnan(token)):
        return "∅"
    token = str(token)
    if not token:
        return "∅"
    out = []
    for ch in token:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif not ch.isprintable() and ch != " ":
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
        else:
            out.append(ch)
    text = "".join(out)
    stripped = text.strip(" ")
    if not stripped:
        return "␣" * len(text)
    lead = len(text) - len(text.lstrip(" "))
    trail = len(text) - len(text.rstrip(" "))
    return "␣" * lead + stripped + "␣" * trail


def shorten(text: str, width: int = 16) -> str:
    """``text`` cut to ``width`` characters, ending in ``…`` when cut."""
    if width < 1:
        raise PatchscopesError(f"width must be positive, got {width}")
    return text if len(text) <= width else text[: width - 1] + "…"


def is_generation(record: dict[str, Any] | pd.Series) -> bool:
    """Whether a result row comes from a generation readout (it has a generated text)."""
    return isinstance(record.get("generated_text"), str)


def cell_text(record: dict[str, Any] | pd.Series, width: int | None = 16) -> str:
    """What a cell shows: the visible top token, or the generated text (its ``description`` when the sweep
    cleaned one) shortened to ``width`` (``None``: whole)."""
    if is_generation(record):
        text = record.get("description")
        shown = show_token(text if isinstance(text, str) else record["generated_text"])
    else:
        shown = show_token(record.get("top_token", _first(record.get("top_tokens"))))
    return shown if width is None else shorten(shown, width)


def cell_probability(record: dict[str, Any] | pd.Series) -> float | None:
    """The probability a cell is coloured by.

    For next-token readouts, the top token's probability. For generation, the probability of the first
    generated token (from the first step's top-k; ``None`` when a sampled token fell outside it).
    """
    probs = _as_list(record.get("top_probs"))
    if not probs:
        return None
    if is_generation(record):
        generated = _as_list(record.get("generated_token_ids"))
        ids = _as_list(record.get("top_token_ids"))
        if generated:
            first = int(generated[0])
            for tid, prob in zip(ids, probs):
                if int(tid) == first:
                    return float(prob)
            return None
    return float(probs[0])


@dataclass
class Grid:
    """Result rows arranged as a layer × position grid.

    Attributes:
        row_keys: One key per grid row: the source layer, or ``(source layer, target layer)``.
        row_labels: ``"l"``, or ``"l→l*"`` when several target layers were swept.
        col_keys: One key per grid column: ``(source prompt, source position)``.
        col_labels: ``"i:token"`` (prefixed with ``"#p "`` when several prompts were swept).
        cells: The result row (a dict) of each ``(row key, column key)``.
        multi_target: Whether rows are source → target layer pairs.
    """

    row_keys: list[Hashable] = field(default_factory=list)
    row_labels: list[str] = field(default_factory=list)
    col_keys: list[tuple[str, int]] = field(default_factory=list)
    col_labels: list[str] = field(default_factory=list)
    cells: dict[tuple[Hashable, tuple[str, int]], dict[str, Any]] = field(default_factory=dict)
    multi_target: bool = False

    def get(self, row: Hashable, col: tuple[str, int]) -> dict[str, Any] | None:
        """The result row at a cell, or ``None`` where the sweep has none."""
        return self.cells.get((row, col))


def grid(frame: pd.DataFrame, *, token_width: int = 12) -> Grid:
    """Arrange a sweep's rows as layers (rows) × source positions (columns).

    Args:
        frame: A sweep result with at least ``source_layer``, ``source_position``, ``source_token`` and
            ``target_layer`` columns.
        token_width: The longest source token shown in a column label.

    Raises:
        PatchscopesError: The frame is empty or lacks the coordinate columns.
    """
    needed = ("source_layer", "source_position", "target_layer")
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise PatchscopesError(
            f"the results table lacks the column(s) {', '.join(missing)}",
            hint="pass the DataFrame returned by patchscopes.sweep (or read back with load_results)",
        )
    if frame.empty:
        raise PatchscopesError("the results table is empty: there is nothing to show")
    records = frame.to_dict(orient="records")
    prompts: list[str] = []
    for rec in records:
        prompt = str(rec.get("source_prompt", ""))
        if prompt not in prompts:
            prompts.append(prompt)
    targets_per_layer: dict[int, set[int]] = {}
    for rec in records:
        targets_per_layer.setdefault(int(rec["source_layer"]), set()).add(int(rec["target_layer"]))
    multi = any(len(t) > 1 for t in targets_per_layer.values())

    out = Grid(multi_target=multi)
    col_tokens: dict[tuple[str, int], str] = {}
    for rec in records:
        layer, target = int(rec["source_layer"]), int(rec["target_layer"])
        row: Hashable = (layer, target) if multi else layer
        col = (str(rec.get("source_prompt", "")), int(rec["source_position"]))
        col_tokens.setdefault(col, rec.get("source_token", ""))
        out.cells[(row, col)] = rec
    out.row_keys = sorted({r for r, _ in out.cells})
    out.row_labels = [f"{r[0]}→{r[1]}" if multi else str(r) for r in out.row_keys]
    out.col_keys = sorted(col_tokens, key=lambda c: (prompts.index(c[0]), c[1]))
    for prompt, position in out.col_keys:
        label = f"{position}:{shorten(show_token(col_tokens[(prompt, position)]), token_width)}"
        if len(prompts) > 1:
            label = f"#{prompts.index(prompt)} {label}"
        out.col_labels.append(label)
    return out


def heatmap(
    frame: pd.DataFrame,
    *,
    title: str | None = None,
    cell_width: int = 12,
    colorscale: str = "Blues",
):
    """An interactive heatmap of a sweep: layers × positions, top token in each cell, probability as colour.

    Args:
        frame: The DataFrame returned by :func:`patchscopes.sweep` (or read by :func:`patchscopes.load_results`).
        title: The figure's title; by default the scope, model and source prompt.
        cell_width: The most characters of text written in a cell.
        colorscale: A plotly colour scale name.

    Returns:
        A ``plotly.graph_objects.Figure``, its legend (:func:`readout_legend`) under the title. Rows are
        source layers (``l→l*`` when several target layers
        were swept), layer 0 at the top as in the terminal table; columns are source positions headed by
        their token. Hovering a cell lists the top-k tokens with their probabilities (and, for
        generation, the whole generated text; with ``baseline=True``, the unpatched top token).

    Raises:
        PatchscopesError: The frame is empty or is not a sweep result.
    """
    import plotly.graph_objects as go

    g = grid(frame)
    z: list[list[float | None]] = []
    text: list[list[str]] = []
    hover: list[list[str]] = []
    generation = False
    for row, row_label in zip(g.row_keys, g.row_labels):
        z_row, text_row, hover_row = [], [], []
        for col, col_label in zip(g.col_keys, g.col_labels):
            rec = g.get(row, col)
            if rec is None:
                z_row.append(None)
                text_row.append("")
                hover_row.append("")
                continue
            generation = generation or is_generation(rec)
            z_row.append(cell_probability(rec))
            text_row.append(html.escape(cell_text(rec, cell_width)))
            hover_row.append(_hover(rec, row_label, col_label))
        z.append(z_row)
        text.append(text_row)
        hover.append(hover_row)

    n_rows, n_cols = len(g.row_keys), len(g.col_keys)
    colour_title = "p(first token)" if generation else "p(top token)"
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=[html.escape(label) for label in g.col_labels],
            y=g.row_labels,
            text=text,
            texttemplate="%{text}",
            textfont={"size": 11},
            customdata=hover,
            hovertemplate="%{customdata}<extra></extra>",
            zmin=0.0,
            zmax=1.0,
            colorscale=colorscale,
            colorbar={"title": {"text": colour_title}},
            xgap=1,
            ygap=1,
        )
    )
    fig.update_layout(
        title={"text": html.escape(title if title is not None else _default_title(frame)) + "<br><sup>"
               + "<br>".join(html.escape(line) for line in textwrap.wrap(readout_legend(frame), 110))
               + "</sup>", "y": 0.98, "yanchor": "top"},
        margin={"t": 170},
        xaxis={"title": {"text": "source position: token"}, "type": "category", "side": "top", "tickangle": -45},
        yaxis={"title": {"text": "source layer → target layer" if g.multi_target else "source layer"},
               "type": "category", "autorange": "reversed"},
        width=max(600, 200 + (9 * cell_width + 10) * n_cols),
        height=max(460, 280 + 26 * n_rows),
        template="plotly_white",
    )
    return fig


def save_figure(fig, path: str | Path) -> Path:
    """Write a figure to ``.html`` (self-contained: plotly.js is embedded, no network needed) or an image.

    Args:
        fig: A plotly figure, e.g. from :func:`heatmap`.
        path: ``*.html`` / ``*.htm``, or ``*.png`` / ``*.svg`` / ``*.pdf`` / ``*.jpg`` / ``*.webp`` (images need
            the ``kaleido`` package).

    Returns:
        The path written.

    Raises:
        PatchscopesError: An unknown extension, an image without kaleido installed, or a path that cannot be
            written.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".html", ".htm", *_IMAGE_SUFFIXES):
        raise PatchscopesError(
            f"cannot save a figure as {path.suffix or 'a file without extension'!r} ({path})",
            hint="use a path ending in .html (interactive, self-contained) or .png/.svg/.pdf",
        )
    if suffix in _IMAGE_SUFFIXES and importlib.util.find_spec("kaleido") is None:
        raise PatchscopesError(
            f"saving {suffix} images needs the kaleido package, which is not installed",
            hint="save as .html instead (interactive, works offline), or install it with: pip install kaleido",
        )
    if suffix in (".html", ".htm"):
        return write_output(path, lambda tmp: fig.write_html(tmp, include_plotlyjs=True, full_html=True), "the figure")
    return write_output(path, lambda tmp: fig.write_image(tmp, format=suffix[1:]), "the figure")


def _hover(rec: dict[str, Any], row_label: str, col_label: str) -> str:
    """The hover text of a cell, as plotly's HTML subset."""
    esc = html.escape
    lines = [f"<b>layer {esc(row_label)}</b>, position {esc(col_label)}"]
    if is_generation(rec):
        lines.append(f"generated: <b>{esc(show_token(rec['generated_text']))}</b>")
        lines.append("first-token top-k:")
    else:
        lines.append("top-k:")
    tokens = _as_list(rec.get("top_tokens"))
    probs = _as_list(rec.get("top_probs"))
    for tok, prob in zip(tokens, probs):
        lines.append(f"&nbsp;&nbsp;{esc(show_token(tok))}&nbsp;&nbsp;{float(prob):.3f}")
    base_tokens = _as_list(rec.get("baseline_top_tokens"))
    if base_tokens:
        base_probs = _as_list(rec.get("baseline_top_probs"))
        base = esc(show_token(base_tokens[0]))
        if base_probs:
            base += f" {float(base_probs[0]):.3f}"
        lines.append(f"unpatched: {base}")
    return "<br>".join(lines)


def readout_legend(frame: pd.DataFrame) -> str:
    """What a cell of a sweep's table or heatmap means, in a sentence or two.

    The readout is the *next* token after the target prompt (or, for generation, the text that follows
    it), not the token at the patched position: a decoded state shows what the model expects next.
    """
    scopes = set(frame["scope"].dropna()) if "scope" in frame.columns else set()
    generation = "generated_text" in frame.columns and frame["generated_text"].map(
        lambda v: isinstance(v, str)).any()
    if generation:
        text = ("cell: the generated text, what the patched run says after the target prompt: the model's "
                "reading of the patched state")
        if "description" in frame.columns:
            text += " (the description, without the ':' that starts it)"
        return text
    if scopes == {"logit-lens"}:
        return ("cell: the next token predicted from the state at that position (the word expected after it, "
                "e.g. ␣Paris at ␣of), not the token at the position")
    return ("cell: the top next token of the patched run after the target prompt, not the token at the "
            "position: often the token the model expects after the position (␣Tower at iffel, ␣Paris at ␣of), "
            "sometimes the source token itself; early layers often give the prompt's own pattern (␣->, \\n)")


def _default_title(frame: pd.DataFrame) -> str:
    parts = []
    for col in ("scope", "source_model"):
        if col in frame.columns and frame[col].nunique() == 1:
            parts.append(str(frame[col].iloc[0]))
    if "source_prompt" in frame.columns and frame["source_prompt"].nunique() == 1:
        parts.append(shorten(repr(str(frame["source_prompt"].iloc[0])), 80))
    return " · ".join(parts) or "patchscopes sweep"


def _as_list(value: Any) -> list:
    """A list from a list, tuple or array column value; ``[]`` for missing values."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    if hasattr(value, "tolist"):
        value = value.tolist()
    return list(value)


def _first(value: Any) -> str:
    items = _as_list(value)
    return str(items[0]) if items else ""


def rgba(color: str | None, alpha: float) -> str:
    """A ``#rrggbb`` colour as ``rgba(r,g,b,alpha)`` (grey for anything else), for translucent bands."""
    if not color or not color.startswith("#") or len(color) != 7:
        return f"rgba(128,128,128,{alpha})"
    r, g, b = (int(color[i: i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def add_band_line(fig, x, y, spread, *, color: str | None, name: str, group: str, metric: str, row: int, col: int,
                  show_legend: bool, alpha: float = 0.2) -> None:
    """A line with markers and, where ``spread`` is known, a translucent band y ± spread around it.

    Args:
        fig: A plotly figure with subplots.
        x, y, spread: The points and the half-width of the band (NaN or ``None``: no band).
        color: The line's ``#rrggbb`` colour (the band takes it, translucent).
        name, group: The legend label and legend group.
        metric: The y quantity's name, shown on hover.
        row, col: The subplot.
        show_legend: Whether this trace adds a legend entry.
        alpha: The band's opacity.
    """
    import plotly.graph_objects as go

    xs, ys = list(x), list(y)
    if spread is not None:
        sp = [0.0 if v != v else float(v) for v in spread]  # NaN → no width
        if any(sp):
            upper = [a + b for a, b in zip(ys, sp)]
            lower = [a - b for a, b in zip(ys, sp)]
            fig.add_trace(go.Scatter(
                x=xs + xs[::-1], y=upper + lower[::-1], fill="toself", fillcolor=rgba(color, alpha),
                line=dict(width=0), hoverinfo="skip", showlegend=False, legendgroup=group), row=row, col=col)
    fig.add_trace(go.Scatter(
        x=xs, y=ys, mode="lines+markers", name=name, legendgroup=group, showlegend=show_legend,
        line=dict(color=color, width=2), marker=dict(size=5),
        hovertemplate=f"{name}<br>layer %{{x}}<br>{metric} %{{y:.3f}}<extra></extra>"), row=row, col=col)
