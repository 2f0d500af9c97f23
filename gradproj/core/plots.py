"""Matplotlib without a screen, and PNGs written atomically (a temporary name, then renamed)."""

from __future__ import annotations

from pathlib import Path


def pyplot():
    """matplotlib.pyplot on the Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, path: Path) -> str:
    """Write ``fig`` to ``path`` (PNG) via a temporary file, close it; returns the file name."""
    path = Path(path)
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    pyplot().close(fig)
    tmp.replace(path)
    return path.name
