"""progress.progress_bar: a tqdm bar on a terminal, a counting no-op elsewhere."""
import io
import sys

import pytest

from cryorecon.progress import ProgressBar, progress_bar


class _Terminal(io.StringIO):
    def isatty(self):
        return True


class _Pipe(io.StringIO):
    def isatty(self):
        return False


def test_no_bar_when_disabled_counts_and_draws_nothing(monkeypatch):
    term = _Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    monkeypatch.delitem(sys.modules, "tqdm", raising=False)
    with progress_bar(10, desc="ab initio", initial=3, enabled=False) as bar:
        assert isinstance(bar, ProgressBar) and not bar.shown
        bar.update(4)
        bar.set_postfix(loss="1.0")
        bar.set_total(20)
    assert (bar.n, bar.total) == (7, 20)
    assert term.getvalue() == ""
    assert "tqdm" not in sys.modules  # a disabled bar does not even import tqdm
    bar.close()  # closing twice is harmless


def test_no_bar_when_stderr_is_not_a_terminal(monkeypatch):
    pipe = _Pipe()
    monkeypatch.setattr(sys, "stderr", pipe)
    bar = progress_bar(5, desc="preprocess")
    assert not bar.shown
    bar.update(5)
    bar.close()
    assert pipe.getvalue() == "" and bar.n == 5


def test_bar_on_a_terminal_shows_progress_postfix_and_a_changed_total(monkeypatch):
    pytest.importorskip("tqdm")
    term = _Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    bar = progress_bar(100, desc="refine", unit="img", initial=10)
    assert bar.shown
    bar.update(30)
    bar.set_postfix(res="8.0A")
    bar.set_total(250)
    bar.close()
    text = term.getvalue()
    assert "refine" in text and "40/250" in text and "res=8.0A" in text and "img" in text
    assert (bar.n, bar.total, bar.shown) == (40, 250, False)


def test_unknown_total(monkeypatch):
    monkeypatch.setattr(sys, "stderr", _Pipe())
    bar = progress_bar(None, desc="scan")
    bar.update(3)
    assert bar.total is None and bar.n == 3
