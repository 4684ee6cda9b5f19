"""The ``cryorecon`` command line: one subcommand per stage, each with ``--help``.

Anything the user can fix arrives here as :class:`~cryorecon.errors.InputError` and is
printed as one line, without a traceback (exit status 2).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from . import __version__
from .errors import InputError


def _cmd_demo(args):
    from . import demos

    if args.name == "list":
        for name, text in demos.describe().items():
            print(f"{name:14s} {text}")
        return 0
    metrics = demos.run_demo(args.name, out_dir=args.out or f"demo_{args.name}", quick=args.quick, seed=args.seed)
    for key, value in metrics.items():
        print(f"{key}: {value}")
    return 0


def _cmd_abinitio(args):
    """The abinitio pipeline (preprocess -> ab initio) in ``--out``, built from the flags."""
    from .pipeline import Pipeline

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
    from .pipeline import Pipeline, default_run_dir

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


def _cmd_symmetry(args):
    from .geometry.symmetry import symmetry_group

    for R in symmetry_group(args.name).operators:
        print(" ".join(f"{v:.9f}" for v in R.ravel()))
    return 0


def _add_symmetry_command(sub):
    """Subcommand ``symmetry`` (like ``relion_refine --sym NAME --print_symmetry_ops``)."""
    p = sub.add_parser(
        "symmetry",
        help="print a point group's rotation matrices (RELION's conventions)",
        description="Print the rotation matrices of the point group NAME, one per line as 9 numbers "
        "(row-major), the identity first, with RELION's axes and in RELION's order (like relion_refine "
        "--sym NAME --print_symmetry_ops). A map with this symmetry has V(R x) = V(x) for each R.",
    )
    p.add_argument("name", help="C<n>, D<n> (n = 1..99), D<n>_cryosparc (cryoSPARC's D_n: 2-fold on y, "
                   "not x), T, O, I1, I2, I3, I4, or I (= I2); case-insensitive")
    p.set_defaults(func=_cmd_symmetry)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cryorecon",
        description="Ab initio cryo-EM reconstruction by mini-batch SGD with marginalised poses.",
    )
    parser.add_argument("--version", action="version", version=f"cryorecon {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

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

    p = sub.add_parser("demo", help="run an ML demo of cryorecon.optim (`demo list` names them)")
    p.add_argument("name", help="demo name, or `list`")
    p.add_argument("--quick", action="store_true", help="small sizes, for tests")
    p.add_argument("--out", help="folder for the PNGs (default demo_NAME)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_demo)
    _add_symmetry_command(sub)
    _add_validation_commands(sub)
    _add_postprocess_command(sub)
    return parser


def _warnings_as_lines(command):
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


def _cmd_simulate(args):
    from .simulation.simulate import simulate_dataset

    with _warnings_as_lines("simulate"):
        summary = simulate_dataset(
            args.map, args.out, n=args.n, snr=args.snr, from_star=args.from_star, seed=args.seed,
            pixel_size_A=args.pixel_size, defocus_range_um=args.defocus_range_um,
            shift_sigma_px=args.shift_sigma_px, max_shift_px=args.max_shift_px, ctf=not args.no_ctf,
        )
    noise = "no noise" if summary["noise_sigma"] == 0 else f"SNR {summary['snr']:g} (noise sigma {summary['noise_sigma']:.4g})"
    print(f"wrote {summary['n']} particles of {summary['box']} px at {summary['pixel_size_A']:g} A/px, "
          f"{'with' if summary['ctf'] else 'without'} CTF, {noise}: {summary['stack']}, {summary['star']}")
    return 0


def _map_and_pixel_size(path, pixel_size_A):
    from .io.mrc import read_map

    vol, header_px = read_map(path)
    if vol.ndim != 3 or len(set(vol.shape)) != 1:
        raise InputError(f"{path}: need a cubic 3D map, got shape {vol.shape}")
    return vol, (pixel_size_A if pixel_size_A is not None else header_px)


def _cmd_fsc(args):
    from .forward.masks import soft_sphere
    from .validate import compare_maps

    a, px_a = _map_and_pixel_size(args.map1, args.pixel_size)
    b, px_b = _map_and_pixel_size(args.map2, args.pixel_size)
    if not px_a:
        raise InputError(f"{args.map1}: no voxel size in the header: pass --pixel-size")
    if args.mask_radius_A is not None and not args.mask_radius_A > 0:
        raise InputError(f"--mask-radius-A {args.mask_radius_A:g}: give a positive radius in A")
    # the mask's radius is given in A; the soft edge is the masks' default 3 px
    mask = None if args.mask_radius_A is None else soft_sphere(a.shape[0], args.mask_radius_A / px_a)
    result = compare_maps(a, b, px_a, reference_pixel_size_A=px_b or px_a, mask=mask, align=False,
                          reference_label=str(args.map2))
    for t, res in result.resolution_A.items():
        print(f"FSC {t:g}: {res:.2f} A")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        result.write_fsc(out / "fsc.csv", out / "fsc.png", label="fsc")
        print(f"wrote {out / 'fsc.csv'}, {out / 'fsc.png'}")
    return 0


def _cmd_align(args):
    import json

    from .forward.masks import soft_sphere
    from .geometry.rotations import matrix_to_euler
    from .io.atomic import atomic_open
    from .io.mrc import write_map
    from .validate import compare_maps

    moving, px = _map_and_pixel_size(args.moving, args.pixel_size)
    ref, px_ref = _map_and_pixel_size(args.reference, args.pixel_size)
    px = px or px_ref
    L = moving.shape[0]
    # The FSC against the reference is taken inside the alignment's own soft sphere.
    result = compare_maps(moving, ref, px or None, reference_pixel_size_A=px_ref or px or None,
                          mask=soft_sphere(L, L / 2 - 3.0, 3.0), try_mirror=not args.no_mirror,
                          reference_label=str(args.reference))
    info = result.alignment
    write_map(args.out, result.aligned_map, px)
    rot, tilt, psi = (float(v[0]) for v in matrix_to_euler(info["rotation"]))
    record = {
        "moving": str(args.moving), "reference": str(args.reference),
        "mirrored": info["mirrored"], "rotation": info["rotation"].tolist(),
        "matrix": info["matrix"].tolist(), "euler_deg": [rot, tilt, psi],
        "shift_px": [float(s) for s in info["shift_px"]], "correlation": info["correlation"],
    }
    if px:
        record["fsc_0.5_A"] = result.resolution_A[0.5]
    info_path = Path(args.out).with_suffix(".json")
    with atomic_open(info_path, "w") as fh:
        json.dump(record, fh, indent=1)
    print(f"mirrored: {'yes' if info['mirrored'] else 'no'}; rotation (rot, tilt, psi) = "
          f"({rot:.1f}, {tilt:.1f}, {psi:.1f}) deg; shift (x, y, z) = "
          f"({', '.join(f'{s:.2f}' for s in info['shift_px'])}) px; correlation {info['correlation']:.4f}")
    if px:
        print(f"FSC 0.5 against the reference: {record['fsc_0.5_A']:.2f} A")
    print(f"wrote {args.out}, {info_path}")
    return 0


def _cmd_info(args):
    path = Path(args.file)
    if path.suffix.lower() == ".star":
        from .io.star import has_ctf_columns, read_particle_table

        table = read_particle_table(path)
        df = table.particles
        px = df["rlnImagePixelSize"].iloc[0] if "rlnImagePixelSize" in df.columns else "unknown"
        box = int(df["rlnImageSize"].iloc[0]) if "rlnImageSize" in df.columns else "unknown"
        ctf = has_ctf_columns(df)
        poses = all(c in df.columns for c in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"))
        print(f"{path}: RELION {table.version} STAR, {len(df)} particles, "
              f"{df['rlnOpticsGroup'].nunique()} optics group(s)")
        print(f"pixel size: {px} A; box: {box} px; CTF: {'yes' if ctf else 'no'}; "
              f"poses: {'yes' if poses else 'no'}; origins: {table.origin_units}")
        print("columns: " + " ".join(df.columns))
        return 0
    from .io.mrc import read_header_info, read_map

    head = read_header_info(path)
    print(f"{path}: shape {head['shape']} (z/n, y, x), {head['dtype']}, "
          f"voxel {head['voxel_size_A']:g} A (0 = unknown), origin {head['origin_A']} A")
    if not args.header_only:
        import numpy as np

        data, _ = read_map(path)
        arr = np.asarray(data, dtype=np.float64)
        print(f"min {arr.min():.4g}, max {arr.max():.4g}, mean {arr.mean():.4g}, std {arr.std():.4g}")
    return 0


def _add_validation_commands(sub):
    """Subcommands ``simulate``, ``fsc``, ``align`` and ``info``."""
    p = sub.add_parser(
        "simulate",
        help="simulate particles from a map: CTF, shifts, white noise",
        description="Project MAP along uniform random poses (or those of --from-star), apply "
        "the CTF and origin shifts, add white noise, and write DIR/particles.mrcs and a RELION "
        "3.1 DIR/particles.star holding the true poses. SNR = mean squared CTF-modulated clean "
        "image inside the disc r < L/2, divided by the noise variance.",
    )
    p.add_argument("map", help="input MRC map")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--n", type=int, default=None, help="number of particles (default 1000; with --from-star: all)")
    p.add_argument("--snr", type=float, default=float("inf"),
                   help="signal power (mean squared CTF-modulated clean image in the disc r < L/2) "
                   "over noise variance; inf (default) = no noise")
    p.add_argument("--from-star", help="take poses, origins and CTF from this STAR file (its images are not read)")
    p.add_argument("--seed", type=int, default=0, help="seed of every random draw")
    p.add_argument("--pixel-size", type=float, help="pixel size in A (overrides the STAR file and the map header)")
    p.add_argument("--defocus-range-um", type=float, nargs=2, default=(1.5, 2.5), metavar=("MIN", "MAX"),
                   help="range of drawn defoci in um (default 1.5 2.5)")
    p.add_argument("--max-shift-px", type=float, default=6.0, help="clip drawn origin offsets at +-this (px)")
    p.add_argument("--shift-sigma-px", type=float, default=2.0, help="std of drawn origin offsets (px)")
    p.add_argument("--no-ctf", action="store_true", help="no CTF on drawn particles")
    p.set_defaults(func=_cmd_simulate_default_n)

    p = sub.add_parser("fsc", help="Fourier shell correlation of two maps; resolution at 0.143 and 0.5")
    p.add_argument("map1")
    p.add_argument("map2")
    p.add_argument("--pixel-size", type=float, help="pixel size in A (default: map1's header)")
    p.add_argument("--mask-radius-A", type=float, help="soft spherical mask of this radius (A)")
    p.add_argument("--out", help="folder for fsc.csv and fsc.png")
    p.set_defaults(func=_cmd_fsc)

    p = sub.add_parser("align", help="rotate, mirror and shift a map onto a reference")
    p.add_argument("moving", help="map to move (e.g. an ab initio result)")
    p.add_argument("reference", help="reference map in the same box")
    p.add_argument("--out", required=True, help="aligned map (.mrc); the alignment goes to the same name .json")
    p.add_argument("--no-mirror", action="store_true", help="keep the hand (do not try the mirror image)")
    p.add_argument("--pixel-size", type=float, help="pixel size in A (default: the headers)")
    p.set_defaults(func=_cmd_align)

    p = sub.add_parser("info", help="describe an MRC map/stack or a particle STAR file")
    p.add_argument("file", help=".mrc, .mrcs, .map or .star")
    p.add_argument("--header-only", action="store_true", help="do not read the data for statistics")
    p.set_defaults(func=_cmd_info)


def _cmd_simulate_default_n(args):
    if args.n is None and args.from_star is None:
        args.n = 1000
    return _cmd_simulate(args)


def _cmd_postprocess(args):
    from .reconstruct.postprocess import AutoMaskSettings, parse_b_factor, postprocess, read_inputs, write_postprocess

    b_factor = parse_b_factor(args.b_factor)
    inputs = read_inputs(args.half1, args.half2, args.mask, args.pixel_size)
    auto = None
    if args.auto_mask:
        auto = AutoMaskSettings(threshold=args.mask_threshold, lowpass_A=args.mask_lowpass_A,
                                extend_px=args.mask_extend_px, soft_edge_px=args.mask_edge_px)
    with _warnings_as_lines("postprocess"):
        result = postprocess(inputs.half1, inputs.half2, inputs.pixel_size_A, mask=inputs.mask, auto_mask=auto,
                             b_factor=b_factor, force_mask=args.force_mask, rng=args.seed, names=inputs.names)
    paths = write_postprocess(result, args.out, half_map_names=inputs.names[:2])
    mask = {"given": f"mask {args.mask}", "auto": "auto-mask", None: "no mask"}[result.mask_source]
    print(f"final resolution {result.resolution_A:.2f} A ({mask}); B-factor used for sharpening "
          f"{result.b_factor_A2:.1f} A^2")
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def _add_postprocess_command(sub):
    """Subcommand ``postprocess`` (like relion_postprocess)."""
    p = sub.add_parser(
        "postprocess",
        help="post-process two half-maps: mask, corrected FSC, B-factor sharpening (like relion_postprocess)",
        description="Mask the half-maps (--mask M, or --auto-mask from their average; neither: unmasked), "
        "correct the masked FSC by phase randomisation beyond where the unmasked FSC drops below 0.8, report "
        "the resolution at 0.143, and sharpen the average by a B-factor from a Guinier fit (10 A to the "
        "resolution) with FSC weighting. Writes DIR/postprocess.mrc, postprocess_masked.mrc, mask.mrc, "
        "fsc.csv, fsc.png, guinier.png and a RELION-style postprocess.star.",
    )
    p.add_argument("half1", help="first half-map (MRC)")
    p.add_argument("half2", help="second half-map, same box and pixel size")
    p.add_argument("--out", required=True, help="output folder")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--mask", help="solvent mask (MRC, values in [0, 1], the maps' grid)")
    which.add_argument("--auto-mask", action="store_true", help="make a soft mask from the average of the half-maps")
    p.add_argument("--b-factor", default="auto",
                   help="auto (Guinier fit, default) or a B-factor in A^2 as RELION reports it: negative sharpens, 0 none")
    p.add_argument("--pixel-size", type=float, help="pixel size in A (default: the headers)")
    p.add_argument("--mask-threshold", type=float,
                   help="auto-mask: density threshold (default 0.2 x the low-passed map's maximum)")
    p.add_argument("--mask-lowpass-A", type=float, default=15.0, help="auto-mask: low-pass first (A, default 15)")
    p.add_argument("--mask-extend-px", type=float, default=3.0, help="auto-mask: grow by this many px (default 3)")
    p.add_argument("--mask-edge-px", type=float, default=6.0, help="auto-mask: soft edge width in px (default 6)")
    p.add_argument("--force-mask", action="store_true",
                   help="keep the mask's corrected FSC even where the unmasked FSC reaches further")
    p.add_argument("--seed", type=int, default=0, help="seed of the phase randomisation")
    p.set_defaults(func=_cmd_postprocess)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except InputError as err:
        print(f"cryorecon {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = "rerun the same command to continue" if args.command == "run" else "rerun with --resume to continue"
        print(f"cryorecon {args.command}: interrupted; {hint}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
