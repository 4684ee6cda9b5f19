"""Progress bars on long work: a tqdm bar on a terminal, nothing anywhere else.

One helper serves every long loop (preprocessing, ab initio, refinement): logs, pipes and
test runs get no bar and pay nothing for it, and the caller's code is the same either
way. The total may change while the bar runs (refinement learns how many passes it
needs as it goes).
"""
from __future__ import annotations

import sys

__all__ = ["ProgressBar", "progress_bar"]


class ProgressBar:
    """Counts work done, and draws it with tqdm when a bar is shown.

    Build one with :func:`progress_bar`. ``n`` and ``total`` are kept whether or not a
    bar is drawn, so a caller (or a test) can read them back.

    Attributes
    ----------
    n : int
        Work done so far (``initial`` plus every ``update``).
    total : int or None
        Work expected; ``None`` when unknown.
    shown : bool
        Whether a tqdm bar is drawn.
    """

    def __init__(self, total, *, desc, unit="img", initial=0, show=False):
        self.n = int(initial)
        self.total = None if total is None else int(total)
        self._bar = None
        if show:
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, initial=self.n, desc=desc, unit=unit)

    @property
    def shown(self) -> bool:
        return self._bar is not None

    def update(self, n=1):
        """Count ``n`` more units of work done."""
        self.n += int(n)
        if self._bar is not None:
            self._bar.update(n)

    def set_total(self, total):
        """Change the expected total (``None``: unknown) and redraw."""
        self.total = None if total is None else int(total)
        if self._bar is not None:
            self._bar.total = self.total
            self._bar.refresh()

    def set_postfix(self, **kw):
        """Show ``key=value`` pairs after the bar (e.g. the loss)."""
        if self._bar is not None:
            self._bar.set_postfix(**kw)

    def close(self):
        """Finish the bar (its line stays on the terminal); safe to call twice."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def progress_bar(total, *, desc, unit="img", initial=0, enabled=True) -> ProgressBar:
    """A progress bar that is drawn only when ``enabled`` and stderr is a terminal.

    Parameters
    ----------
    total : int or None
        Work expected (change it later with :meth:`ProgressBar.set_total`).
    desc : str
        Label in front of the bar, e.g. ``"ab initio"``.
    unit : str
        Name of one unit of work.
    initial : int
        Work already done (a resumed run starts part-way).
    enabled : bool
        False: never draw (e.g. ``--quiet``); tqdm is then not even imported.

    Returns
    -------
    ProgressBar
        With ``update(n)``, ``set_postfix(**kw)``, ``set_total(total)``, ``close()``;
        also a context manager that closes it.

    Examples
    --------
    >>> with progress_bar(100, desc="preprocess", enabled=False) as bar:
    ...     bar.update(40)
    ...     bar.set_total(120)
    >>> bar.n, bar.total, bar.shown
    (40, 120, False)
    """
    show = bool(enabled) and sys.stderr is not None and sys.stderr.isatty()
    return ProgressBar(total, desc=desc, unit=unit, initial=initial, show=show)
