"""Update ``## heading`` sections of a markdown results file (bench/RESULTS.md), leaving the rest alone."""

from __future__ import annotations

import os
import re
from pathlib import Path


def write_sections(path: str | Path, sections: dict[str, str]) -> None:
    """Replace (or append) each section; every body starts with its own ``## heading`` line.

    The file is re-read right before writing and replaced atomically: several commands
    (``streamer evaluate``, the benchmarks in bench/) own different sections of one file.
    """
    path = Path(path)
    text = path.read_text() if path.is_file() else "# Benchmark results\n"
    for heading, body in sections.items():
        body = body.strip() + "\n"
        m = re.search(rf"^{re.escape(heading)}[ \t]*$", text, re.M)
        if m is None:
            text = text.rstrip() + "\n\n" + body
            continue
        nxt = text.find("\n## ", m.end())
        text = text[:m.start()] + body + ("\n" + text[nxt + 1:] if nxt >= 0 else "")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
