"""Tables as text: one row per line between pipes, the header row first and a rule under it,
so a table reads the same whichever format it came from and the chunker can split it by rows
with its header repeated (chunking._split_table)."""

from __future__ import annotations


def pipe_table(rows: list[list[str]]) -> str:
    """The first row is the header. Cells are flattened to one line; a pipe in a cell is escaped."""
    rows = [[" ".join(c.split()).replace("|", "\\|") for c in row] for row in rows if any(c.strip() for c in row)]
    if not rows:
        return ""
    width = max(len(r) for r in rows)
    rows = [r + [""] * (width - len(r)) for r in rows]
    lines = ["| " + " | ".join(r) + " |" for r in rows]
    lines.insert(1, "|" + "---|" * width)
    return "\n".join(lines)


def is_pipe_rule(line: str) -> bool:
    """The rule under a pipe table's header: | --- | :---: |"""
    cells = line.strip().strip("|").split("|")
    return bool(cells) and all(c.strip().strip(":").strip("-") == "" and "-" in c for c in cells)
