"""io.figures.save_png: PNG written atomically, figure closed, nothing global touched."""
import subprocess
import sys

import numpy as np
import pytest


def _figure():
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3, 2))
    fig.subplots().imshow(np.arange(64.0).reshape(8, 8))
    return fig


def test_writes_a_png_of_the_asked_resolution(tmp_path):
    import matplotlib.image as mpimg

    from cryorecon.io.figures import save_png

    out = save_png(_figure(), tmp_path / "a.png", dpi=50)
    assert out == tmp_path / "a.png"
    img = mpimg.imread(out)
    assert img.shape[:2] == (100, 150)  # 2 x 3 inches at 50 dpi
    assert img[..., :3].std() > 0.05
    tight = save_png(_figure(), tmp_path / "b.png", dpi=50, bbox_inches="tight")
    assert mpimg.imread(tight).shape[1] < 150  # cropped to what is drawn
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.png"]  # no temporaries left


def test_closes_a_pyplot_figure_and_keeps_the_backend(tmp_path):
    import matplotlib
    import matplotlib.pyplot as plt

    from cryorecon.io.figures import save_png

    backend = matplotlib.get_backend()
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    assert plt.fignum_exists(fig.number)
    save_png(fig, tmp_path / "p.png")
    assert not plt.fignum_exists(fig.number)
    assert matplotlib.get_backend() == backend


def test_a_failed_save_leaves_the_old_file(tmp_path):
    from cryorecon.io.figures import save_png

    target = tmp_path / "keep.png"
    target.write_bytes(b"old")
    fig = _figure()
    with pytest.raises(ValueError):
        save_png(fig, target, dpi=-1)  # matplotlib refuses a negative size
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.png"]


def test_importing_it_pulls_in_nothing_cryo_em():
    # the demos save their figures through it, and must stay free of the cryo-EM stack
    code = ("import sys, cryorecon.io.figures, cryorecon.demos._common; "
            "heavy = ('mrcfile', 'starfile', 'pandas', 'cryorecon.io.mrc', 'cryorecon.io.star', "
            "'cryorecon.io.particles', 'cryorecon.forward', 'cryorecon.reconstruct'); "
            "print([m for m in heavy if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_io_package_names_still_resolve():
    import cryorecon.io as io

    from cryorecon.io.figures import save_png
    from cryorecon.io.particles import ParticleStack

    assert io.save_png is save_png and io.ParticleStack is ParticleStack
    assert set(io.__all__) <= set(dir(io))
    with pytest.raises(AttributeError):
        io.no_such_name
