"""End-to-end ab initio benchmark against the truth, beside the true-pose oracle.

Simulates with cryorecon's own simulator from the 70S ribosome map in
``../shared/data/ribosome70S/ribosome70S_L64.mrc`` (3000 particles, 64 px,
5.078125 A/px, CTF 300 kV / Cs 2.7 mm / Q 0.1, defocus 1.5-2.5 um, shifts N(0, 2 px)
clipped at 6 px, white noise at the requested SNRs), then runs ab initio from a random
start with default settings and prints, against the truth:

- FSC 0.143 and 0.5 resolutions after alignment (mirror allowed);
- the median pose error after that alignment;
- wall time and peak memory;
- when the SGD phase handed over to the full-data passes, and why: the iteration and
  image visits at which the batch gradient's SNR switch fired, or that the budget ran
  out first (``--set handover_snr=0`` runs the budget only, for comparison);
- the same for the oracle: the same engine with the true poses.

Absolute times on shared machines are noise; the ratio ab initio / oracle time, and the
FSC ratio, are the figures to compare.

    python benchmarks/bench_abinitio.py [--n 3000] [--snr 0.1 0.02] [--device cpu|gpu]
"""
from __future__ import annotations

import argparse
import logging
import resource
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from cryorecon import validate
from cryorecon.backend import set_device
from cryorecon.forward.fourier import fourier_crop, fourier_pad
from cryorecon.geometry.rotations import angular_distance_deg, random_rotations
from cryorecon.io.mrc import read_map
from cryorecon.reconstruct.preprocess import estimate_snr
from cryorecon.reconstruct.abinitio import Abinitio, default_settings
from cryorecon.simulation.simulate import draw_defocus_A, draw_shifts_px, simulate_images

MAP = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ribosome70S" / "ribosome70S_L64.mrc"


def simulate(n, snr, seed, volume, pixel_size_A, box=None):
    rng = np.random.default_rng(seed)
    rotations = random_rotations(n, rng)
    shifts = draw_shifts_px(n, rng, 2.0, 6.0)
    defocus = draw_defocus_A(n, rng, (1.5, 2.5))
    ctf = {
        "defocus_u_A": defocus,
        "defocus_v_A": defocus.copy(),
        "defocus_angle_deg": np.zeros(n),
        "voltage_kV": np.full(n, 300.0),
        "cs_mm": np.full(n, 2.7),
        "amplitude_contrast": np.full(n, 0.1),
    }
    images, _ = simulate_images(volume, rotations, shifts, ctf, pixel_size_A, snr=snr, rng=rng)
    images = images / images.std()
    return images.astype(np.float32), rotations, shifts, ctf


def peak_memory_gb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def _parse_overrides(pairs):
    """``["lr=0.2", ...]`` -> settings overrides, each typed like the setting's default."""
    from dataclasses import fields

    from cryorecon.reconstruct.abinitio import AbinitioSettings

    types = {f.name: type(getattr(AbinitioSettings(), f.name)) for f in fields(AbinitioSettings)}
    out = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        if key not in types:
            raise SystemExit(f"--set {pair}: unknown setting {key!r}; one of {', '.join(sorted(types))}")
        out[key] = value.lower() in ("1", "true", "yes") if types[key] is bool else types[key](value)
    return out


def measure(images, pixel_size_A, ctf, settings, start, volume, rotations):
    """One ab initio run, scored against the truth: resolutions, pose errors, wall time."""
    L = volume.shape[-1]
    run = Abinitio(images, pixel_size_A, ctf, settings, progress=sys.stderr.isatty(), initial_map=start)
    t0 = time.perf_counter()
    result = run.run()
    seconds = time.perf_counter() - t0
    aligned, info = validate.align_maps(result.maps[0], volume, pixel_size_A=pixel_size_A)
    res = validate.fsc_resolutions_A(validate.fsc(aligned, volume)[1], L, pixel_size_A)
    errors = angular_distance_deg(validate.map_poses(result.rotations, info), rotations)
    return {
        "result": result, "res": res, "seconds": seconds, "mirrored": info["mirrored"],
        "sgd_seconds": result.history.rows[-1][-1] if result.history.rows else 0.0,
        "pose_err": validate.pose_error_deg(result.rotations, rotations, info),
        "within": {t: float(np.mean(errors <= t)) for t in (5, 10, 20)},
    }


def report(name, m, settings, res_o, t_or):
    """Print one run's hand-over and quality lines."""
    h, res, within = m["result"].handover, m["res"], m["within"]
    print(
        f"{name}: hand-over by {h.reason} after SGD iteration {h.iteration}, {h.visits}/{h.budget} image visits "
        f"({h.visits / h.budget:.0%} of the budget), band {h.resolution_A:.1f} A, batch gradient SNR {h.batch_snr:.3g} "
        f"(switch at {settings.handover_snr:g}, patience {settings.handover_patience}); SGD phase {m['sgd_seconds']:.0f} s "
        f"of {m['seconds']:.0f} s",
        flush=True,
    )
    print(
        f"{name}: ab initio FSC0.143 {res[0.143]:.1f} A, FSC0.5 {res[0.5]:.1f} A, "
        f"median pose error {m['pose_err']:.2f} deg, mirrored {m['mirrored']}, {m['seconds']:.0f} s "
        f"({h.iteration} SGD iterations; poses within 5/10/20 deg: "
        f"{within[5]:.2f}/{within[10]:.2f}/{within[20]:.2f}) | oracle FSC0.143 {res_o[0.143]:.1f} A, FSC0.5 {res_o[0.5]:.1f} A, {t_or:.0f} s "
        f"| ratio FSC0.143 ab initio/oracle {res[0.143] / res_o[0.143]:.3f} | peak RSS {peak_memory_gb():.2f} GB",
        flush=True,
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--snr", type=float, nargs="+", default=[0.1, 0.02])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--map", default=str(MAP))
    parser.add_argument("--max-iter", type=int)
    parser.add_argument("--box", type=int, help="resample the map to this box first (Fourier pad/crop; pixel size scaled)")
    parser.add_argument("--start-from-oracle", action="store_true",
                        help="start from the true-pose oracle map (low-passed to the start band) instead of a random one: "
                        "separates fold discovery from refinement")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override an ab initio setting (repeatable)")
    parser.add_argument("--compare-switch", action="store_true",
                        help="also run each SNR with handover_snr=0 (the budget only) right after, and print what the switch saved")
    parser.add_argument("--history", metavar="DIR", help="write each run's history (loss, band, batch, batch gradient SNR) as DIR/history_snrX.csv")
    args = parser.parse_args(argv)
    overrides = _parse_overrides(args.set)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    set_device(args.device)
    volume, pixel_size_A = read_map(args.map)
    if args.box and args.box != volume.shape[-1]:
        resize = fourier_pad if args.box > volume.shape[-1] else fourier_crop
        pixel_size_A *= volume.shape[-1] / args.box
        volume = resize(volume, args.box, ndim=3).astype(np.float32)
    L = volume.shape[-1]
    print(f"map {Path(args.map).name}: {L} px, {pixel_size_A} A/px; {args.n} particles; device {args.device}")
    rows = []
    for snr in args.snr:
        images, rotations, shifts, ctf = simulate(args.n, snr, args.seed + 1, volume, pixel_size_A)
        # the SNR the engine's defaults see is the one estimated from the images
        snr_est = estimate_snr(images)
        settings = default_settings(args.n, L, pixel_size_A, snr=snr_est, seed=args.seed, max_iter=args.max_iter, **overrides)
        print(f"SNR {snr:g}: estimated from the images {snr_est:.3f}; SGD for {settings.epochs:g} passes over the data", flush=True)
        start = Abinitio(images, pixel_size_A, ctf, settings).oracle(rotations, shifts) if args.start_from_oracle else None
        if start is not None:
            print("starting from the oracle map, not a random one", flush=True)
        variants = [("", settings)]
        if args.compare_switch:
            variants.append((" (budget only)", replace(settings, handover_snr=0.0)))
        t0 = time.perf_counter()
        oracle = Abinitio(images, pixel_size_A, ctf, settings).oracle(rotations, shifts)
        t_or = time.perf_counter() - t0
        res_o = validate.fsc_resolutions_A(validate.fsc(oracle, volume)[1], L, pixel_size_A)
        measured = []
        for label, s in variants:
            m = measure(images, pixel_size_A, ctf, s, start, volume, rotations)
            measured.append(m)
            if args.history:
                Path(args.history).mkdir(parents=True, exist_ok=True)
                m["result"].history.write_csv(Path(args.history) / f"history_snr{snr:g}{'_budget' if label else ''}.csv")
            report(f"SNR {snr:g}{label}", m, s, res_o, t_or)
            rows.append((snr, m["res"], m["pose_err"], m["seconds"], res_o, t_or, m["mirrored"], m["result"].handover))
        if args.compare_switch:
            on, off = (x["result"].handover for x in measured)
            print(f"SNR {snr:g}: the switch saved {off.iteration - on.iteration} SGD iterations and {off.visits - on.visits} "
                  f"image visits ({1 - on.visits / off.visits:.0%} of the SGD phase's); wall time with/without "
                  f"{measured[0]['seconds'] / measured[1]['seconds']:.3f}, SGD phase with/without "
                  f"{measured[0]['sgd_seconds'] / measured[1]['sgd_seconds']:.3f}; FSC0.143 with/without "
                  f"{measured[0]['res'][0.143] / measured[1]['res'][0.143]:.3f}", flush=True)
    return rows


if __name__ == "__main__":
    main()
