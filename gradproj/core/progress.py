"""Progress bars for long stages (tqdm), off in tests and library calls that ask for quiet."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def progress_bar(total: int, desc: str, enabled: bool = True,
                 unit: str = "pair") -> Iterator[Callable[[int], None] | None]:
    """Yields ``update(n)`` for a bar of ``total`` steps, or None when ``enabled`` is False."""
    if not enabled:
        yield None
        return
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, unit=unit, leave=False)
    try:
        yield bar.update
    finally:
        bar.close()
