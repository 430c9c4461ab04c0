"""Built-in datasets (shapes, labels, determinism by seed), the validation split, and the checks
on uploaded .npz arrays."""
import io
import zipfile

import numpy as np
import pytest
from sklearn.datasets import load_digits as sk_digits

from convcore import datasets


def npz_bytes(**arrays):
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def test_digits_matches_sklearn():
    x, y, k = datasets.load({"name": "digits"})
    ref = sk_digits()
    assert x.shape == (1797, 1, 8, 8) and x.dtype == np.float32 and k == 10
    np.testing.assert_array_equal(x[:, 0] * 16, ref.images)
    np.testing.assert_array_equal(y, ref.target)


@pytest.mark.parametrize("spec, shape, n_classes", [
    ({"name": "shapes3d", "n": 40}, (40, 1, 16, 16, 16), 4),
    ({"name": "shapes3d", "n": 12, "size": 10, "noise": 0.0}, (12, 1, 10, 10, 10), 4),
    ({"name": "synthetic", "ndim": 1, "n": 30}, (30, 1, 32), 3),
    ({"name": "synthetic", "ndim": 2, "n": 30}, (30, 1, 16, 16), 3),
    ({"name": "synthetic", "ndim": 3, "n": 30}, (30, 1, 12, 12, 12), 3),
    ({"name": "synthetic", "ndim": 4, "n": 30, "size": 9}, (30, 1, 9, 9, 9, 9), 3),
])
def test_synthetic_shapes_labels_and_seed(spec, shape, n_classes):
    x, y, k = datasets.load({**spec, "seed": 3})
    assert x.shape == shape and x.dtype == np.float32 and k == n_classes
    assert datasets.describe(spec) == (shape[1:], n_classes)
    counts = np.bincount(y, minlength=k)
    assert counts.sum() == shape[0] and counts.max() - counts.min() <= 1  # balanced
    x2, y2, _ = datasets.load({**spec, "seed": 3})
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
    x3, _, _ = datasets.load({**spec, "seed": 4})
    assert not np.array_equal(x, x3)


def test_shapes3d_noise_free_solids_are_what_they_claim():
    """Without noise: spheres and cubes are solid and convex along the centre lines, a torus has a hole."""
    x, y, _ = datasets.load({"name": "shapes3d", "n": 40, "noise": 0.0, "seed": 1})
    vol = x[:, 0]
    filled = vol.reshape(len(vol), -1).sum(1)
    assert (filled > 0).all()
    # A cube fills its bounding box; a sphere about pi/6 of it (more on a coarse grid).
    for i in np.flatnonzero(y <= 1):
        idx = np.argwhere(vol[i] > 0)
        box = np.prod(idx.max(0) - idx.min(0) + 1)
        ratio = filled[i] / box
        assert (ratio > 0.95) if y[i] == 1 else (0.35 < ratio < 0.85)
    for i in np.flatnonzero(y == 3):
        centre = np.argwhere(vol[i] > 0).mean(0).round().astype(int)
        assert vol[i][tuple(centre)] == 0  # the hole of the torus


def test_split_is_stratified_seeded_and_disjoint():
    x = np.arange(100, dtype=np.float32)[:, None]
    y = np.repeat([0, 1, 2, 3], 25)
    xt, yt, xv, yv = datasets.train_val_split(x, y, 0.2, seed=1)
    assert len(xv) == 20 and np.bincount(yv).tolist() == [5, 5, 5, 5]
    assert sorted(np.concatenate([xt, xv])[:, 0].tolist()) == list(range(100))
    np.testing.assert_array_equal(y[xv[:, 0].astype(int)], yv)
    again = datasets.train_val_split(x, y, 0.2, seed=1)
    np.testing.assert_array_equal(again[2], xv)
    assert len(datasets.train_val_split(x, y, 0.0)[2]) == 0
    with pytest.raises(ValueError, match=r"validation_split must be a number in \[0, 1\), got 1.5"):
        datasets.train_val_split(x, y, 1.5)


def test_negative_zero_noise_is_no_noise():
    """-0.0 passes "noise in [0, 10]" (and json.dumps writes it), but NumPy's generators refuse its
    sign: a job the service had checked failed in the worker with "scale < 0"."""
    x, _, _ = datasets.load({"name": "shapes3d", "n": 4, "noise": -0.0, "seed": 1})
    same, _, _ = datasets.load({"name": "shapes3d", "n": 4, "noise": 0.0, "seed": 1})
    np.testing.assert_array_equal(x, same)
    with pytest.raises(datasets.DatasetError, match=r"noise must be a number in \[0, 10\], got True"):
        datasets.info({"name": "shapes3d", "noise": True})


@pytest.mark.parametrize("seed", range(40))
def test_split_holds_out_round_fraction_n_in_proportion_to_the_classes(seed):
    """The service checks a split from the dataset's size alone (``validation_count``): the split must
    hold out exactly that many, or jobs it queues fail in the worker (0.998 of the digits: every
    class's round(0.998 * ~180) held out all of it). Each class gets its proportional share, +-1."""
    rng = np.random.default_rng(seed)
    n_classes = int(rng.integers(1, 12))
    y = rng.integers(0, n_classes, int(rng.integers(2, 400)))
    fraction = float(rng.choice([rng.uniform(0, 1), 0.998, 0.999, 0.002, 0.5, 0.25]))
    x = np.arange(len(y))[:, None]
    held = datasets.validation_count(len(y), fraction)
    if held >= len(y):
        with pytest.raises(ValueError, match="leaves no training samples"):
            datasets.train_val_split(x, y, fraction, seed=seed)
        return
    xt, yt, xv, yv = datasets.train_val_split(x, y, fraction, seed=seed)
    assert len(xv) == held == round(fraction * len(y)) and len(xt) == len(y) - held
    assert sorted(np.concatenate([xt, xv])[:, 0].tolist()) == list(range(len(y)))
    counts, val_counts = np.bincount(y, minlength=n_classes), np.bincount(yv, minlength=n_classes)
    present = counts > 0
    share = held * counts / len(y)
    assert np.all(val_counts[present] >= np.minimum(np.floor(share), counts - 1)[present])   # at least its share
    if held <= len(y) - present.sum():   # room for every class in training: none is wholly held out
        assert np.all(val_counts[present] < counts[present]), (counts, val_counts)


def test_small_classes_keep_a_training_sample():
    """Largest remainders alone gave a one-sample class to validation whenever its remainder was
    largest (a reviewer: five one-sample classes and one of 95 at 0.2: class 0 never trained on)."""
    y = np.array([0, 1, 2, 3, 4] + [5] * 95)
    for seed in range(8):
        _, yt, _, yv = datasets.train_val_split(np.arange(100)[:, None], y, 0.2, seed=seed)
        assert sorted(set(yt.tolist())) == [0, 1, 2, 3, 4, 5] and len(yv) == 20


def test_valid_upload_is_converted():
    x = np.random.default_rng(0).integers(0, 255, (10, 3, 4, 4)).astype(np.uint8)
    y = np.arange(10) % 4
    xx, yy, k = datasets.load_npz_bytes(npz_bytes(x=x, y=y))
    assert xx.dtype == np.float32 and yy.dtype == np.int64 and k == 4
    np.testing.assert_array_equal(xx, x)


@pytest.mark.parametrize("arrays, pattern", [
    (dict(x=np.zeros((4, 1, 3)), z=np.zeros(4)), r"must hold arrays named 'x' and 'y', found \['x', 'z'\]"),
    (dict(x=np.zeros((4, 1, 3)), y=np.zeros(5, int)), r"y must have shape \(n,\) = \(4,\) to match x \(4, 1, 3\), got \(5,\)"),
    (dict(x=np.zeros(4), y=np.zeros(4, int)), r"x must have shape \(n, c, d_1, ..., d_N\) or \(n, features\), got \(4,\)"),
    (dict(x=np.array([[0.0, np.nan]] * 3), y=np.zeros(3, int)), r"x must be finite; x\(0, 1\) = nan"),
    (dict(x=np.zeros((3, 2)), y=np.array([0, 1, -1])), r"labels y must be in \[0, 1000\), got min -1 and max 1"),
    (dict(x=np.zeros((3, 2)), y=np.array([0, 1, 2**64 - 1], np.uint64)),   # read as -1 once cast to int64
     r"labels y must be in \[0, 1000\), got min 0 and max 18446744073709551615"),
    (dict(x=np.zeros((3, 2)), y=np.array([0.5, 1, 0])), r"y must hold integer class labels, got dtype float64"),
    (dict(x=np.array([["a", "b"]] * 3), y=np.zeros(3, int)), r"x must hold real numbers \(float or int\), got dtype <U1"),
    (dict(x=np.zeros((3, 2), complex), y=np.zeros(3, int)), r"x must hold real numbers"),
    (dict(x=np.array([[1, None]] * 3, dtype=object), y=np.zeros(3, int)), r"cannot read x and y without pickle"),
])
def test_upload_errors_name_the_problem(arrays, pattern):
    with pytest.raises(datasets.DatasetError, match=pattern):
        datasets.load_npz_bytes(npz_bytes(**arrays))


def test_upload_size_limit_checked_before_decompressing():
    buf = io.BytesIO()
    np.savez_compressed(buf, x=np.zeros((1000, 1, 100, 100), np.float32), y=np.zeros(1000, np.int64))
    data = buf.getvalue()
    assert len(data) < 200_000  # tiny on the wire, 40 MB inflated
    with pytest.raises(datasets.DatasetError, match=r"is \d+ bytes uncompressed; the limit is 1000000 bytes"):
        datasets.load_npz_bytes(data, max_bytes=1_000_000)


def test_upload_not_a_zip():
    with pytest.raises(datasets.DatasetError, match="not an .npz file"):
        datasets.load_npz_bytes(b"hello")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("x.npy", b"junk")
        z.writestr("y.npy", b"junk")
    with pytest.raises(datasets.DatasetError, match="cannot read x and y"):
        datasets.load_npz_bytes(buf.getvalue())


@pytest.mark.parametrize("spec, pattern", [
    ({"name": "mnist"}, r"dataset must be an object with a 'name' among \['digits', 'field', 'segmentation3d', "
                        r"'shapes3d', 'synthetic'\]"),
    ({"name": "field", "ndim": 5}, r"dataset 'field': ndim must be in 2..4, got 5"),
    ({"name": "segmentation3d", "noise": -1}, r"noise must be a number in \[0, 10\], got -1"),
    ({"name": "synthetic", "ndim": 5}, r"ndim must be an int in 1..4, got 5|ndim must be in 1..4, got 5"),
    ({"name": "shapes3d", "n": 10**7}, r"n must be in \[4, 20000\], got 10000000"),
    ({"name": "digits", "n": 10}, r"dataset 'digits': unknown option\(s\) \['n'\]"),
])
def test_builtin_spec_errors(spec, pattern):
    with pytest.raises(datasets.DatasetError, match=pattern):
        datasets.describe(spec)


def test_segmentation3d_labels_are_the_solids_drawn():
    x, y = datasets.make_segmentation3d(n=6, size=12, noise=0.0, seed=4)
    assert x.shape == (6, 1, 12, 12, 12) and y.shape == (6, 12, 12, 12) and y.dtype == np.int64
    brightness = np.asarray(datasets.segmentation3d.BRIGHTNESS, dtype=np.float32)
    np.testing.assert_array_equal(x[:, 0], brightness[y])             # noise-free: x is the label's brightness
    assert set(np.unique(y)) == {0, 1, 2, 3} and (y > 0).mean() > 0.05
    noisy, y2 = datasets.make_segmentation3d(n=6, size=12, seed=4)
    np.testing.assert_array_equal(y2, y)                               # the same seed draws the same volumes
    assert datasets.info({"name": "segmentation3d", "n": 6, "size": 12}).task == "segment"


@pytest.mark.parametrize("ndim", [2, 3, 4])
def test_field_pairs_follow_the_pde_stencil(ndim):
    """y is u after the explicit steps, computed here independently as 3^N stencil correlations."""
    from scipy.ndimage import correlate

    from convcore.datasets import field

    x, y = datasets.make_field(ndim=ndim, n=3, size=8, seed=1)
    assert x.shape == y.shape == (3, 1) + (8,) * ndim and x.dtype == np.float32
    D, dt = field.DIFFUSION, field.DT
    K = np.zeros((3,) * ndim)
    K[(1,) * ndim] = 1 - 2 * ndim * D * dt
    for j in range(ndim):
        up, down = [1] * ndim, [1] * ndim
        up[j], down[j] = 2, 0
        K[tuple(up)] += dt * (D - field.DRIFT[j] / 2)      # u[i + 1]
        K[tuple(down)] += dt * (D + field.DRIFT[j] / 2)    # u[i - 1]
    for u, want in zip(x[:, 0].astype(np.float64), y[:, 0]):
        for _ in range(field.STEPS):
            u = correlate(u, K, mode="wrap")
        np.testing.assert_allclose(u, want, rtol=1e-4, atol=1e-5)
    assert np.abs(x - y).mean() > 0.1   # the steps change the field: the identity is a poor model


def test_dense_uploads_and_split():
    x = np.zeros((6, 2, 4, 5), np.float32)
    labels = np.arange(6 * 20).reshape(6, 4, 5) % 3
    xs, ys, n_classes = datasets.validate_arrays(x, labels)
    assert ys.dtype == np.int64 and ys.shape == (6, 4, 5) and n_classes == 3
    fields = np.ones((6, 1, 4, 5), np.float64)
    xs, ys, n_classes = datasets.validate_arrays(x, fields)
    assert ys.dtype == np.float32 and n_classes == 0
    assert datasets.info_of_arrays(xs, ys, n_classes).task == "regress"
    with pytest.raises(datasets.DatasetError, match=r"with x's spatial size \(4, 5\) for x \(6, 2, 4, 5\), "
                                                    r"got \(6, 4, 4\)"):
        datasets.validate_arrays(x, np.zeros((6, 4, 4), int))
    with pytest.raises(datasets.DatasetError, match=r"y must be finite; y\(0, 0, 1, 2\) = nan"):
        bad = fields.copy()
        bad[0, 0, 1, 2] = np.nan
        datasets.validate_arrays(x, bad)
    xt, yt, xv, yv = datasets.train_val_split(x, ys, 0.5, seed=0)
    assert len(xv) == 3 and len(xt) == 3
