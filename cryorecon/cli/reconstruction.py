"""``cryorecon abinitio`` and ``cryorecon run``: reconstructions, through the pipeline runner."""
from __future__ import annotations

import time
from pathlib import Path


def _cmd_abinitio(args):
    """The abinitio pipeline (preprocess -> ab initio) in ``--out``, built from the flags."""
    from ..pipeline import Pipeline

    config = {
        "pipeline": {"name": "abinitio", "seed": args.seed, "device": args.device, "stages": ["preprocess", "abinitio"]},
        "preprocess": {
            "particles": str(Path(args.particles).resolve()),
            "pixel_size_override_A": args.pixel_size,
            "working_box": args.working_box if args.working_box is not None else "auto",
            "particle_diameter_A": args.particle_diameter_A,
            "ctf": not args.no_ctf,
        },
        "abinitio": {
            "n_classes": args.classes, "max_iter": args.max_iter, "target_res_A": args.target_res_A,
            "batch_size": args.batch_size,
        },
    }
    config = {k: {kk: vv for kk, vv in v.items() if vv is not None} for k, v in config.items()}
    pipe = Pipeline.from_config(config, Path.cwd(), args.out)
    # Without --resume the run starts afresh; with it, finished stages are reused and an
    # interrupted ab initio continues from its checkpoint.
    results = pipe.run(force=() if args.resume else ("all",))
    ab = results["abinitio"]
    print(f"wrote {Path(args.out) / 'map.mrc'} ({ab['box']} px, {ab['pixel_size_A']:.3f} A/px), particles.star, history.csv")
    return 0


def _cmd_run(args):
    from ..pipeline import Pipeline, default_run_dir

    run_dir = Path(args.out) if args.out else default_run_dir(args.pipeline)
    pipe = Pipeline.from_toml(args.pipeline, run_dir=run_dir, overrides=args.set or ())
    t0 = time.perf_counter()
    results = pipe.run(force=args.force or ())
    record = pipe.read_record()
    for stage in pipe.stages:
        rec = record["stages"].get(stage.name, {})
        state = "reused" if rec.get("skipped") else f"{rec.get('seconds', 0):.1f} s"
        print(f"  {stage.name:11s} {state}")
    cmp_ = results.get("compare")
    if cmp_:
        print(f"FSC against the reference: {cmp_['fsc_0.5_A']:.1f} A at 0.5, {cmp_['fsc_0.143_A']:.1f} A at 0.143")
    print(f"done in {time.perf_counter() - t0:.1f} s: {run_dir} (report.md, run.json, run.log)")
    return 0


def add_commands(sub):
    """Subcommands ``abinitio`` (a two-stage pipeline from flags) and ``run`` (a pipeline TOML)."""
    p = sub.add_parser("abinitio", help="ab initio map from particles with unknown poses (SGD)")
    p.add_argument("particles", help="RELION STAR file of the particles (3.0, 3.1 or 5)")
    p.add_argument("--out", required=True, help="output folder (map.mrc, particles.star, history.csv)")
    p.add_argument("--classes", type=int, default=1, help="number of classes K (default 1)")
    p.add_argument("--device", choices=["auto", "cpu", "gpu"], default=None, help="default: $CRYORECON_DEVICE or auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true",
                   help="reuse finished stages in DIR and continue ab initio from DIR/checkpoint.npz")
    p.add_argument("--max-iter", type=int, help="SGD iterations (default from the particle count)")
    p.add_argument("--target-res-A", type=float, help="final band limit in A (default: Nyquist of the working box + 10%%)")
    p.add_argument("--batch-size", type=int, help="initial mini-batch size (default from the particle count)")
    p.add_argument("--working-box", type=int, help="downsample particles to this box (default min(box, 64) on CPU, 128 on GPU)")
    p.add_argument("--particle-diameter-A", type=float, help="particle diameter for background normalisation (default 80%% of the box)")
    p.add_argument("--pixel-size", type=float, help="pixel size in A, where the STAR file has none or a wrong one")
    p.add_argument("--no-ctf", action="store_true", help="the particles have no CTF (STAR without CTF columns)")
    p.set_defaults(func=_cmd_abinitio)

    p = sub.add_parser(
        "run",
        help="run a pipeline TOML file (pipelines/*.toml) into a run folder",
        description="Run the stages of PIPELINE.toml in a run folder. Finished stages whose inputs and "
        "parameters are unchanged are reused (run.json records them); an interrupted ab initio stage "
        "continues from its checkpoint; --force STAGE reruns one stage.",
    )
    p.add_argument("pipeline", help="pipeline TOML file, e.g. pipelines/sample.toml")
    p.add_argument("--out", help="run folder (default runs/NAME, NAME from [pipeline] name)")
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                   help="override a config value (TOML syntax), e.g. --set abinitio.max_iter=50; repeatable")
    p.add_argument("--force", action="append", metavar="STAGE", help="rerun this stage (or `all`); repeatable")
    p.set_defaults(func=_cmd_run)
