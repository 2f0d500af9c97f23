"""Matplotlib without a screen, and PNGs written atomically (a temporary name, then renamed)."""

from __future__ import annotations

from pathlib import Path

from gradproj.core.atomic import atomic_path


def pyplot():
    """matplotlib.pyplot on the Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, path: Path) -> str:
    """Write ``fig`` to ``path`` (PNG) via a temporary file, close it; returns the file name."""
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110, bbox_inches="tight")
    finally:
        pyplot().close(fig)
    return path.name
