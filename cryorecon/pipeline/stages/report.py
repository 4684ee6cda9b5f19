"""The ``report`` stage: ``report.md`` from ``run.json`` and the files of the run."""
from __future__ import annotations

import json

from ..config import take
from ..record import RECORD_NAME


class ReportStage:
    """``report.md``: the settings, the numbers and the figures of the run."""

    name = "report"
    DEFAULTS = {"title": None}

    def __init__(self, table):
        self.params = take(table, self.DEFAULTS, self.name)

    def check(self, ctx):
        pass

    def inputs(self, ctx):
        names = ["map.mrc", "history.csv", "loss.png", "slices.png", "projections.png", "fsc.csv"]
        return [ctx.path(n) for n in names if ctx.path(n).exists() or n in ("map.mrc", "history.csv")]

    def outputs(self, ctx):
        return [ctx.path("report.md")]

    def run(self, ctx):
        from ...report.markdown import write_report

        record_path = ctx.path(RECORD_NAME)
        record = json.loads(record_path.read_text()) if record_path.exists() else {"stages": {}}
        write_report(ctx.path("report.md"), ctx.run_dir, record, title=self.params["title"])
        return {}
