"""How the command line speaks: warnings as one line each, like its errors."""
from __future__ import annotations

import sys


def warnings_as_lines(command):
    """Context in which warnings print as one ``cryorecon CMD: warning: ...`` line each."""
    import warnings

    ctx = warnings.catch_warnings()

    def show(message, category, filename, lineno, file=None, line=None):
        print(f"cryorecon {command}: warning: {message}", file=sys.stderr)

    class _Scope:
        def __enter__(self):
            ctx.__enter__()
            warnings.simplefilter("always")
            warnings.showwarning = show

        def __exit__(self, *exc):
            return ctx.__exit__(*exc)

    return _Scope()
