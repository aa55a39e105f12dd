"""The knob curve of bench/electron/RESULTS.md as a figure: docs/electron/knob.png.

    .venv/bin/python bench/electron/plot_knob.py      # run_eval.py calls it after writing its table

Reads the "Knob curve" table that run_eval.py wrote (the measured numbers, nothing recomputed) and
plots mean entry error of the kept isolated events against efficiency, with the issue's target
(0.6x the best centroid's own best cut) at 80 % efficiency.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE.parents[1] / "docs" / "electron" / "knob.png"


def read_table(text: str) -> tuple[list[str], list[list[float]]]:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Knob curve"))
    rows = []
    for line in lines[start + 2:]:  # the table: from the line after the blank one, to the next blank line
        if not line.startswith("|"):
            break
        rows.append(line)
    header = [c.strip() for c in rows[0].strip("|").split("|")]
    body = [[float(c) for c in r.strip("|").split("|")] for r in rows[2:]]
    return header, body


def main() -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    header, body = read_table((HERE / "RESULTS.md").read_text())
    eff = [r[0] for r in body]
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for j, name in enumerate(header[1:], start=1):
        ax.plot(eff, [r[j] for r in body], marker="o", ms=3, label=name)
    best = header.index(next(h for h in header if h.endswith("cut on size") and "@" not in h))
    at80 = next(r for r in body if abs(r[0] - 0.8) < 1e-9)
    ax.axhline(0.6 * at80[best], color="grey", ls=":", lw=1)
    ax.annotate("target at 80 %: 0.6x best centroid", (0.5, 0.6 * at80[best]), fontsize=8, va="bottom")
    ax.axvline(0.8, color="grey", lw=0.5)
    ax.set_xlabel("efficiency (kept / isolated electrons)")
    ax.set_ylabel("mean entry-point error of kept events (um)")
    ax.set_title("Electron: error vs efficiency (the knob), held-out events")
    ax.legend(fontsize=7)
    fig.tight_layout()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUT)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
