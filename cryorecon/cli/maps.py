"""``cryorecon simulate``, ``fsc``, ``align`` and ``info``: maps and stacks in, figures and maps out."""
from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from .output import warnings_as_lines


def _cmd_simulate(args):
    from ..simulation.simulate import simulate_dataset

    with warnings_as_lines("simulate"):
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
    from ..io.mrc import read_map

    vol, header_px = read_map(path)
    if vol.ndim != 3 or len(set(vol.shape)) != 1:
        raise InputError(f"{path}: need a cubic 3D map, got shape {vol.shape}")
    return vol, (pixel_size_A if pixel_size_A is not None else header_px)


def _cmd_fsc(args):
    from ..forward.masks import soft_sphere
    from ..validate import compare_maps

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

    from ..forward.masks import soft_sphere
    from ..geometry.rotations import matrix_to_euler
    from ..io.atomic import atomic_open
    from ..io.mrc import write_map
    from ..validate import compare_maps

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
        from ..io.star import has_ctf_columns, read_particle_table

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
    from ..io.mrc import read_header_info, read_map

    head = read_header_info(path)
    print(f"{path}: shape {head['shape']} (z/n, y, x), {head['dtype']}, "
          f"voxel {head['voxel_size_A']:g} A (0 = unknown), origin {head['origin_A']} A")
    if not args.header_only:
        import numpy as np

        data, _ = read_map(path)
        arr = np.asarray(data, dtype=np.float64)
        print(f"min {arr.min():.4g}, max {arr.max():.4g}, mean {arr.mean():.4g}, std {arr.std():.4g}")
    return 0


def add_commands(sub):
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
