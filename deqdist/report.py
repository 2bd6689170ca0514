"""Text reports: the fixed-width table that `deqdist bench` and `deqdist compile` print."""
from __future__ import annotations


def table(headers: list[str], rows: list[list]) -> str:
    """A plain fixed-width text table (also valid Markdown)."""
    cells = [[str(c) for c in r] for r in [headers] + rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"
    return "\n".join([line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in cells[1:]])
