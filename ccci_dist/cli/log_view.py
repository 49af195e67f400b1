"""Print rendered agent-log pieces (core/logview.py) with rich styles."""

from __future__ import annotations

from rich.console import Console
from rich.text import Text

from ccci_dist.core.logview import Piece, printable

STYLE = {"header": "bold cyan", "text": "", "tool": "yellow", "output": "dim", "result": "bold",
         "end": "bold magenta", "other": "dim italic"}


def print_pieces(console: Console, pieces: list[Piece]) -> None:
    for kind, text in pieces:
        indent = "    " if kind == "output" else ""
        body = "\n".join(indent + line for line in text.splitlines()) if indent else text
        style = STYLE.get(kind, "")
        if kind in ("result", "end"):
            style += " red" if any(w in text for w in ("error", "auth", "crash", "fail")) else " green"
        console.print(Text(printable(body), style=style.strip()), soft_wrap=False)
