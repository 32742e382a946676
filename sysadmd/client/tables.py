"""Plain-text tables for people (``--json`` gives machines the raw data instead)."""

from __future__ import annotations

from typing import Iterable, List, Sequence


def render(headers: Sequence[str], rows: Iterable[Sequence[object]], *, max_width: int = 60) -> List[str]:
    """Left-aligned columns separated by two spaces; long cells are cut with ``…``."""
    cells = [[_cell(v, max_width) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, value in enumerate(row):
            widths[i] = max(widths[i], len(value))
    lines = ["  ".join(h.upper().ljust(w) for h, w in zip(headers, widths)).rstrip()]
    for row in cells:
        lines.append("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())
    return lines


def _cell(value: object, max_width: int) -> str:
    text = "" if value is None else str(value)
    text = text.replace("\n", " ")
    if len(text) > max_width:
        text = text[: max_width - 1] + "…"
    return text
