"""``report.md``: a run's settings, numbers and figures on one Markdown page.

Everything comes from the run folder: ``run.json`` (what each stage did, with which
parameters and how long it took) and the files beside it. Figures are linked by relative
path, so the folder can be moved or shared as it is.
"""
from __future__ import annotations

from pathlib import Path

from ..io.atomic import atomic_open

#: Figures, in the order shown, with their captions.
FIGURES = (
    ("loss.png", "Optimisation: loss per image, band limit and mini-batch size against iteration."),
    ("slices.png", "Central slices of the map along z, y and x."),
    ("projections.png", "Projections of the map at estimated poses (top) beside averages of the particles "
                        "assigned to those views (bottom)."),
    ("fsc.png", "Fourier shell correlation against the reference, after aligning rotation, hand and shift."),
)

_SETTINGS_SHOWN = ("max_iter", "batch_size", "max_batch_size", "adaptive_batch", "start_res_A", "target_res_A",
                   "coarse_step_deg", "n_classes", "learning_rate", "handover_passes", "use_ctf", "seed")


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _table(rows) -> list[str]:
    out = ["| | |", "|---|---|"]
    out += [f"| {k} | {_fmt(v)} |" for k, v in rows]
    return out


def report_lines(run_dir, record: dict, title: str | None = None) -> list[str]:
    """The report as a list of Markdown lines (see :func:`write_report`)."""
    run_dir = Path(run_dir)
    stages = record.get("stages", {})
    name = record.get("config", {}).get("pipeline", {}).get("name", run_dir.name)
    lines = [f"# {title or f'cryorecon run: {name}'}", ""]
    lines += [f"cryorecon {record.get('version', '?')}, seed {record.get('seed', '?')}. "
              "Stages, parameters, input checksums and timings are in `run.json`; the log is `run.log`.", ""]

    lines += ["## Stages", "", "| stage | seconds | reused |", "|---|---|---|"]
    for stage, rec in stages.items():
        lines.append(f"| {stage} | {rec.get('seconds', 0):.1f} | {'yes' if rec.get('skipped') else 'no'} |")
    lines.append("")

    pre = stages.get("preprocess", {}).get("summary")
    if pre:
        lines += ["## Particles", ""]
        lines += _table([
            ("particles", pre.get("n")), ("STAR file", pre.get("star")),
            ("box", f"{pre.get('original_box')} px at {_fmt(pre.get('original_pixel_size_A'))} A/px"),
            ("working box", f"{pre.get('working_box')} px at {_fmt(pre.get('pixel_size_A'))} A/px"),
        ] + [(k, v) for k, v in stages["preprocess"].get("params", {}).items() if k not in ("particles",) and v is not None])
        lines.append("")

    ab = stages.get("abinitio", {}).get("summary")
    if ab:
        s = ab.get("settings", {})
        final = ab.get("final", {})
        lines += ["## Ab initio", ""]
        lines += _table([(k, s[k]) for k in _SETTINGS_SHOWN if k in s] + [
            ("iterations run", ab.get("iterations")), ("resumed from a checkpoint", ab.get("resumed")),
            ("final loss per image", final.get("loss")), ("final band limit (A)", final.get("resolution_A")),
            ("final batch size", final.get("batch_size")), ("SGD seconds", final.get("seconds")),
        ])
        lines += ["", f"Outputs: [`map.mrc`](map.mrc) ({ab.get('box')} px, {_fmt(ab.get('pixel_size_A'))} A/px), "
                  "[`particles.star`](particles.star) (estimated poses, RELION 3.1), [`history.csv`](history.csv).", ""]

    cmp_ = stages.get("compare", {}).get("summary")
    if cmp_:
        lines += ["## Comparison with the reference", ""]
        rows = [("FSC 0.5 (A)", cmp_.get("fsc_0.5_A")), ("FSC 0.143 (A)", cmp_.get("fsc_0.143_A")),
                ("real-space correlation", cmp_.get("correlation")), ("mirrored (hand flipped)", cmp_.get("mirrored"))]
        if "pose_error_median_deg" in cmp_:
            rows += [("median pose error (deg)", cmp_["pose_error_median_deg"]),
                     ("mean pose error (deg)", cmp_["pose_error_mean_deg"]),
                     ("poses within 15 deg", cmp_["pose_within_15deg"])]
        lines += _table(rows)
        lines += ["", "The aligned map is [`map_aligned.mrc`](map_aligned.mrc); the curve is in [`fsc.csv`](fsc.csv).", ""]

    figures = [(f, cap) for f, cap in FIGURES if (run_dir / f).exists()]
    if figures:
        lines += ["## Figures", ""]
        for fname, caption in figures:
            lines += [f"![{fname}]({fname})", "", f"*{caption}*", ""]
    return lines


def write_report(path, run_dir, record: dict, title: str | None = None):
    """Write ``report.md`` (atomically) from a run's ``run.json`` record and its files.

    Parameters
    ----------
    path : str or Path
        The report to write.
    run_dir : str or Path
        The run folder (figures are linked relative to it).
    record : dict
        The content of ``run.json``.
    title : str, optional
        First heading; default names the pipeline.
    """
    text = "\n".join(report_lines(run_dir, record, title)) + "\n"
    with atomic_open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
    return path


__all__ = ["write_report", "report_lines", "FIGURES"]
