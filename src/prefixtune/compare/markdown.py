"""Generated sections in hand-maintained markdown pages (docs written by benchmarks and reports)."""

from __future__ import annotations

from pathlib import Path


def replace_section(path: str | Path, key: str, section: str, title: str) -> None:
    """Replace the ``<!-- BEGIN key -->`` ... ``<!-- END key -->`` block of ``path`` (or append it).

    Everything else in the file is kept, so several generators and hand-written text share one
    page. A new file starts with ``title``.
    """
    path = Path(path)
    begin, end = f"<!-- BEGIN {key} (generated; do not edit by hand) -->", f"<!-- END {key} -->"
    block = f"{begin}\n{section.strip()}\n{end}"
    text = path.read_text() if path.exists() else f"{title}\n"
    if begin in text and end in text:
        a, b = text.index(begin), text.index(end) + len(end)
        text = text[:a] + block + text[b:]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
