"""``cryorecon postprocess``: two half-maps to a masked, sharpened map (like relion_postprocess)."""
from __future__ import annotations

from .output import warnings_as_lines


def _cmd_postprocess(args):
    from ..reconstruct.postprocess import AutoMaskSettings, parse_b_factor, postprocess, read_inputs, write_postprocess

    b_factor = parse_b_factor(args.b_factor)
    inputs = read_inputs(args.half1, args.half2, args.mask, args.pixel_size)
    auto = None
    if args.auto_mask:
        auto = AutoMaskSettings(threshold=args.mask_threshold, lowpass_A=args.mask_lowpass_A,
                                extend_px=args.mask_extend_px, soft_edge_px=args.mask_edge_px)
    with warnings_as_lines("postprocess"):
        result = postprocess(inputs.half1, inputs.half2, inputs.pixel_size_A, mask=inputs.mask, auto_mask=auto,
                             b_factor=b_factor, force_mask=args.force_mask, rng=args.seed, names=inputs.names)
    paths = write_postprocess(result, args.out, half_map_names=inputs.names[:2])
    mask = {"given": f"mask {args.mask}", "auto": "auto-mask", None: "no mask"}[result.mask_source]
    print(f"final resolution {result.resolution_A:.2f} A ({mask}); B-factor used for sharpening "
          f"{result.b_factor_A2:.1f} A^2")
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def add_commands(sub):
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
