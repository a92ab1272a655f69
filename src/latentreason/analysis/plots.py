"""Figures for latent analyses and accuracy sweeps, written straight to PNG files.

Figures are built with matplotlib's object-oriented API on an Agg canvas created
inside each function. That never opens a window (safe on headless machines) and,
unlike ``matplotlib.use("Agg")`` or pyplot, does not change the global backend or
pyplot state of a caller who is also plotting interactively.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["plot_gains", "plot_heatmap", "plot_lines", "plot_logit_lens"]

# Above this many cells per side, per-cell numbers become unreadable clutter.
_MAX_ANNOTATED_SIDE = 12


def _new_figure(figsize: tuple[float, float]) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def _text_colour(value: float, vmin: float, vmax: float) -> str:
    # White text on the dark end of viridis, black on the light end.
    if not np.isfinite(value) or vmax <= vmin:
        return "black"
    return "white" if (value - vmin) / (vmax - vmin) < 0.5 else "black"


def plot_heatmap(
    matrix: Any,
    path: str | Path,
    title: str,
    xlabel: str,
    ylabel: str,
    tick_labels: Sequence[str] | None = None,
) -> Path:
    """Save a heatmap of a 2-D matrix (e.g. a cross-capture or CKA matrix) as PNG.

    Cells are annotated with their values when the matrix is at most 12x12.

    Args:
        matrix: 2-D array-like; ``None`` entries are drawn as blank.
        path: output file; parent directories are created.
        title, xlabel, ylabel: figure text.
        tick_labels: labels for both axes (square matrices, e.g. slot names);
            default is the integer index.

    Returns:
        The path written.
    """
    m = np.array(matrix, dtype=float)  # None -> nan
    if m.ndim != 2:
        raise ValueError(f"matrix must be 2-D, got shape {m.shape}")
    rows, cols = m.shape
    if tick_labels is not None and len(tick_labels) != max(rows, cols):
        raise ValueError(f"got {len(tick_labels)} tick labels for a {rows}x{cols} matrix")

    fig = _new_figure((max(4.0, 0.6 * cols + 2.5), max(3.5, 0.5 * rows + 2.0)))
    ax = fig.add_subplot()
    finite = m[np.isfinite(m)]
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    image = ax.imshow(m, cmap="viridis", vmin=vmin, vmax=vmax, aspect="auto")
    fig.colorbar(image, ax=ax)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_xticks(range(cols))
    ax.set_yticks(range(rows))
    if tick_labels is not None:
        ax.set_xticklabels(list(tick_labels)[:cols])
        ax.set_yticklabels(list(tick_labels)[:rows])
    if max(rows, cols) <= _MAX_ANNOTATED_SIDE:
        for i in range(rows):
            for j in range(cols):
                if np.isfinite(m[i, j]):
                    ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center",
                            fontsize=8, color=_text_colour(m[i, j], vmin, vmax))
    return _save(fig, path)


def _records(rows: Any) -> list[Mapping[str, Any]]:
    # Accept a pandas-like DataFrame without depending on pandas.
    if hasattr(rows, "to_dict"):
        return list(rows.to_dict("records"))
    return list(rows)


def plot_lines(
    rows: Iterable[Mapping[str, Any]],
    x: str,
    y: str,
    group: str,
    path: str | Path,
    title: str,
    yerr: str | None = None,
    logx: bool = False,
    nulls: Mapping[str, str] | None = None,
) -> Path:
    """Save a line plot with one line per group, e.g. accuracy vs N_L per method.

    Typical uses: accuracy vs number of latent slots, vs branching factor, vs FLOPs
    (``logx=True``). Points within a group are sorted by ``x``; rows whose ``y`` is
    missing/None are skipped.

    Args:
        rows: records (dicts, or a DataFrame-like with ``to_dict("records")``).
        x, y: column names for the axes (also used as axis labels).
        group: column whose distinct values become separate lines (legend order =
            first appearance).
        path: output file; parent directories are created.
        title: figure title.
        yerr: optional column of symmetric error-bar half-widths (e.g. std or CI).
        logx: log-scale x axis.
        nulls: optional ``{column: linestyle}``: each column is a null value of ``y`` (a number, or a
            dict with its ``mean``) drawn per group in the group's colour with that line style (e.g.
            ``{"null_gauss": "--"}``), so a value can be read against its null.

    Returns:
        The path written.
    """
    records = _records(rows)
    groups: dict[Any, list[tuple[float, float, float]]] = {}
    null_points: dict[tuple[Any, str], list[tuple[float, float]]] = {}
    for k, rec in enumerate(records):
        for col in (x, y, group) + ((yerr,) if yerr else ()):
            if col not in rec:
                raise ValueError(f"row {k} has no column {col!r}; columns: {sorted(rec)}")
        if rec[y] is None:
            continue
        err = float(rec[yerr]) if yerr and rec[yerr] is not None else 0.0
        groups.setdefault(rec[group], []).append((float(rec[x]), float(rec[y]), err))
        for column in nulls or {}:
            value = rec.get(column)
            value = value.get("mean") if isinstance(value, Mapping) else value
            if value is not None:
                null_points.setdefault((rec[group], column), []).append((float(rec[x]), float(value)))

    fig = _new_figure((6.0, 4.0))
    ax = fig.add_subplot()
    for index, (name, points) in enumerate(groups.items()):
        points.sort(key=lambda p: p[0])
        xs, ys, errs = (np.array(v) for v in zip(*points))
        colour = f"C{index % 10}"
        ax.errorbar(xs, ys, yerr=errs if yerr else None, marker="o", capsize=3, label=str(name), color=colour)
        for column, style in (nulls or {}).items():
            if (name, column) in null_points:
                nx, ny = zip(*sorted(null_points[(name, column)]))
                ax.plot(nx, ny, linestyle=style, color=colour, alpha=0.8, label=f"{name} {column}")
    if logx:
        ax.set_xscale("log")
    ax.set_title(title)
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.grid(True, alpha=0.3)
    if groups:
        ax.legend(title=group, fontsize=8)
    return _save(fig, path)


def plot_gains(labels: Sequence[str], gains: Sequence[float], half_widths: Sequence[float | None], path: str | Path,
               title: str, xlabel: str = "accuracy gain over the starting run (mean, 95% CI over seeds)") -> Path:
    """Horizontal bars of paired gains with their CIs and a line at 0, one bar per configuration:
    bars whose interval clears 0 are real changes, the rest are noise."""
    fig = _new_figure((6.5, 0.8 + 0.28 * max(len(labels), 1)))
    ax = fig.add_subplot()
    ys = np.arange(len(labels))
    errors = [0.0 if h is None else h for h in half_widths]
    colours = ["C2" if g - e > 0 else "C3" if g + e < 0 else "C7" for g, e in zip(gains, errors)]
    ax.barh(ys, gains, xerr=errors, color=colours, capsize=2)
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.set_yticks(ys, labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.grid(True, axis="x", alpha=0.3)
    return _save(fig, path)


def _token_label(token: str, max_chars: int = 12) -> str:
    # repr() makes leading spaces and newlines visible, which matters for BPE tokens.
    text = repr(token)
    return text if len(text) <= max_chars else text[: max_chars - 1] + "…"


def plot_logit_lens(
    table: Sequence[Sequence[tuple[str, float]]],
    path: str | Path,
    title: str,
) -> Path:
    """Save a grid of logit-lens results: one row per latent slot, one column per rank.

    Each cell shows the decoded token and its probability and is coloured by the
    probability, so confident slots stand out. ``table`` is the output of
    :func:`latentreason.analysis.logit_lens.logit_lens`; rows may differ in length.

    Returns:
        The path written.
    """
    n_slots = len(table)
    top_k = max((len(row) for row in table), default=0)
    if n_slots == 0 or top_k == 0:
        raise ValueError("logit-lens table is empty")
    probs = np.full((n_slots, top_k), np.nan)
    for i, row in enumerate(table):
        for j, (_, p) in enumerate(row):
            probs[i, j] = p

    fig = _new_figure((max(4.0, 1.3 * top_k + 2.0), max(2.5, 0.55 * n_slots + 1.5)))
    ax = fig.add_subplot()
    image = ax.imshow(probs, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    fig.colorbar(image, ax=ax, label="probability")
    for i, row in enumerate(table):
        for j, (token, p) in enumerate(row):
            ax.text(j, i, f"{_token_label(token)}\n{p:.2f}", ha="center", va="center",
                    fontsize=7, color=_text_colour(p, 0.0, 1.0))
    ax.set_xticks(range(top_k))
    ax.set_xticklabels([f"top {j + 1}" for j in range(top_k)])
    ax.set_yticks(range(n_slots))
    ax.set_yticklabels([f"slot {i}" for i in range(n_slots)])
    ax.set_title(title)
    return _save(fig, path)
