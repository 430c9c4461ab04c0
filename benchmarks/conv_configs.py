"""The benchmark's table of layers and the performance targets (issue 10).

A config is one convolution layer: x (n, c_I, d_1..d_N), W (c_O, c_I // groups, k_1..k_N),
plus stride / padding / dilation / groups. ``kind`` is only a label for the table; the
targets are decided from the shapes (``targets``), exactly as the issue words them.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Config:
    """One benchmarked layer; spatial sizes and kernel sizes are per spatial dim."""

    name: str
    kind: str            # "small", "large", "nd", "strided", "grouped", "dilated"
    n: int
    c_in: int
    c_out: int
    spatial: tuple
    kernel: tuple
    stride: int = 1
    padding: int = 0
    dilation: int = 1
    groups: int = 1

    @property
    def ndim(self) -> int:
        return len(self.spatial)

    @property
    def x_shape(self) -> tuple:
        return (self.n, self.c_in) + tuple(self.spatial)

    @property
    def W_shape(self) -> tuple:
        return (self.c_out, self.c_in // self.groups) + tuple(self.kernel)

    def params(self) -> dict:
        """Keyword arguments shared by convcore and the anchors."""
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation, groups=self.groups)


def _cube(d, N):
    return (d,) * N


def _layer(name, kind, n, c_in, c_out, d, k, N, **kw):
    return Config(name, kind, n, c_in, c_out, _cube(d, N), _cube(k, N), **kw)


FULL = [
    # Small kernels: where PyTorch's tuned direct convolution is the bar.
    _layer("2d-3x3-c32", "small", 8, 32, 32, 64, 3, 2, padding=1),
    _layer("2d-3x3-c16", "small", 8, 16, 16, 96, 3, 2, padding=1),
    _layer("3d-3x3x3-c16", "small", 8, 16, 16, 24, 3, 3, padding=1),
    _layer("3d-3x3x3-c32", "small", 8, 32, 32, 16, 3, 3, padding=1),
    _layer("1d-k3-c32", "small", 8, 32, 32, 2048, 3, 1, padding=1),
    # Large kernels: the FFT method's home ground.
    _layer("1d-k65", "large", 8, 16, 16, 4096, 65, 1),
    _layer("1d-k129", "large", 8, 16, 16, 4096, 129, 1),
    _layer("1d-k257", "large", 8, 16, 16, 4096, 257, 1),
    _layer("1d-k513", "large", 8, 16, 16, 4096, 513, 1),
    _layer("2d-k9", "large", 4, 16, 16, 64, 9, 2, padding=4),
    _layer("2d-k11", "large", 4, 16, 16, 64, 11, 2, padding=5),
    _layer("2d-k15", "large", 4, 16, 16, 64, 15, 2, padding=7),
    _layer("2d-k21", "large", 4, 16, 16, 64, 21, 2, padding=10),
    _layer("2d-k31", "large", 4, 16, 16, 64, 31, 2, padding=15),
    _layer("3d-k7", "large", 2, 8, 8, 32, 7, 3),
    _layer("3d-k11", "large", 2, 8, 8, 32, 11, 3),
    _layer("3d-k15", "large", 2, 8, 8, 32, 15, 3),
    # More than three spatial dims: only JAX (and the loop) to compare with.
    _layer("4d-k3", "nd", 2, 8, 8, 12, 3, 4, padding=1),
    _layer("4d-k7", "nd", 2, 4, 4, 16, 7, 4),
    _layer("5d-k3", "nd", 1, 4, 4, 8, 3, 5, padding=1),
    _layer("5d-k5", "nd", 1, 2, 2, 10, 5, 5),
    # Strided, grouped and dilated layers.
    _layer("2d-3x3-s2", "strided", 8, 16, 32, 64, 3, 2, stride=2, padding=1),
    _layer("2d-k11-s4", "strided", 8, 3, 32, 128, 11, 2, stride=4, padding=2),
    _layer("3d-k7-s2", "strided", 2, 8, 16, 32, 7, 3, stride=2, padding=3),
    _layer("2d-3x3-g4", "grouped", 4, 64, 64, 32, 3, 2, padding=1, groups=4),
    _layer("2d-k15-dw", "grouped", 8, 32, 32, 64, 15, 2, padding=7, groups=32),
    _layer("3d-k7-g2", "grouped", 2, 16, 16, 24, 7, 3, groups=2),
    _layer("2d-3x3-d2", "dilated", 8, 32, 32, 64, 3, 2, padding=2, dilation=2),
    # Issue 10's rows: wider small layers, mid-size kernels, 4-D against the Conv3d recipe.
    _layer("2d-3x3-c64", "small", 4, 64, 64, 32, 3, 2, padding=1),
    _layer("2d-k7", "mid", 4, 16, 16, 64, 7, 2, padding=3),
    _layer("2d-k13-c8", "large", 4, 8, 8, 64, 13, 2, padding=6),
    _layer("3d-k5", "mid", 2, 8, 8, 24, 5, 3, padding=2),
    _layer("3d-k9", "large", 2, 8, 8, 32, 9, 3),
    _layer("4d-k5", "nd", 2, 4, 4, 12, 5, 4, padding=2),
]

QUICK = [
    _layer("2d-3x3-c16", "small", 4, 16, 16, 32, 3, 2, padding=1),
    _layer("3d-3x3x3-c8", "small", 2, 8, 8, 12, 3, 3, padding=1),
    _layer("1d-k129", "large", 4, 8, 8, 1024, 129, 1),
    _layer("2d-k11", "large", 2, 8, 8, 32, 11, 2, padding=5),
    _layer("3d-k7", "large", 1, 4, 4, 16, 7, 3),
    _layer("4d-k5", "nd", 1, 2, 2, 10, 5, 4),
    _layer("4d-k3", "nd", 1, 4, 4, 8, 3, 4, padding=1),
    _layer("2d-3x3-s2-g2", "grouped", 4, 16, 16, 32, 3, 2, stride=2, padding=1, groups=2),
]

# Issue 10's kernel-size classes per N: (smallest "large" k, range of "mid" k).
LARGE_FROM = {1: 129, 2: 13, 3: 9}
MID = {2: range(7, 12), 3: range(5, 8)}
LARGE_TARGET = {1: 5.0, 2: 2.5, 3: 5.0}


def parse_layer(text: str) -> Config:
    """A layer outside the table, from ``"x=N,C,D1,..,DN W=O,C/g,K1,..,KN [stride=S] [padding=P]
    [dilation=D] [groups=G] [kind=K]"`` (stride, padding and dilation one int for every dim)."""
    fields = dict(item.split("=", 1) for item in text.split())
    unknown = set(fields) - {"x", "W", "stride", "padding", "dilation", "groups", "kind"}
    if unknown or "x" not in fields or "W" not in fields:
        raise ValueError(f"--layer {text!r}: needs x=... and W=..., knows stride padding dilation groups kind")
    x = tuple(int(v) for v in fields["x"].split(","))
    W = tuple(int(v) for v in fields["W"].split(","))
    if len(x) != len(W) or len(x) < 3:
        raise ValueError(f"--layer {text!r}: x and W need the same number (>= 3) of sizes")
    groups = int(fields.get("groups", 1))
    cfg = Config("custom", fields.get("kind", "custom"), x[0], x[1], W[0], x[2:], W[2:],
                 stride=int(fields.get("stride", 1)), padding=int(fields.get("padding", 0)),
                 dilation=int(fields.get("dilation", 1)), groups=groups)
    if W[1] * groups != x[1]:
        raise ValueError(f"--layer {text!r}: W's second size times groups must be x's channels")
    k = "x".join(str(v) for v in cfg.kernel) if len(set(cfg.kernel)) > 1 else f"k{cfg.kernel[0]}"
    return replace(cfg, name=f"{cfg.ndim}d-{k}-c{x[1]}")


def select(quick: bool, pattern: str | None) -> list:
    """The configs to run; ``pattern`` is a glob or substring on the config name."""
    configs = QUICK if quick else FULL
    if not pattern:
        return list(configs)
    glob = pattern if any(ch in pattern for ch in "*?[") else f"*{pattern}*"
    return [c for c in configs if fnmatch.fnmatch(c.name, glob)]


def targets(cfg: Config) -> list:
    """The targets that apply to ``cfg``: (label, column, minimum ratio column_time / convcore_time).

    ``best`` is the fastest engine column (so ratio >= 1/1.2 means auto is within 1.2x of it);
    ``fft6T`` is the FFT engine's own six transform sets (ratio >= 1/1.5: overheads <= 1.5x).
    """
    out = [("auto <= 1.2x best engine", "best", 1 / 1.2), ("fft <= 1.5x its transforms", "fft6T", 1 / 1.5)]
    k, N = min(cfg.kernel), cfg.ndim
    strided = cfg.stride > 1
    if N <= 3 and all(v == 3 for v in cfg.kernel):
        out.append(("small k: >=0.5x torch", "torch", 0.5))
    elif strided and N <= 3:
        out.append(("strided large k: >=1x torch", "torch", 1.0))
    elif N in LARGE_FROM and k >= LARGE_FROM[N]:
        out.append((f"{N}-D large k: >={LARGE_TARGET[N]:g}x torch", "torch", LARGE_TARGET[N]))
    elif N in MID and k in MID[N]:
        out.append(("mid k: >=1x torch", "torch", 1.0))
    if N >= 4:
        out.append(("4-D/5-D: >=3x jax", "jax", 3.0))
    if N == 4:
        out.append(("4-D k3: >=1x torch4d" if k == 3 else "4-D k>=5: >=3x torch4d", "torch4d",
                    1.0 if k == 3 else 3.0))
    out.append(("all: >=10x loop", "loop", 10.0))
    return out


TARGET_TEXT = """Targets (issue 10, same threads for every side; ratio = column time / convcore "auto" time):
  auto within 1.2x of the best engine for the call; FFT engine <= 1.5x its own six transform sets
  small kernels (3, 3x3, 3x3x3): >= 0.5x PyTorch;  mid (2-D k 7-11, 3-D k 5-7): >= 1x
  large: 3-D k >= 9 and 1-D k >= 129 >= 5x PyTorch, 2-D k >= 13 >= 2.5x;  strided large kernels >= 1x
  N = 4, 5: >= 3x JAX;  N = 4 vs the Conv3d recipe: >= 1x at 3^4, >= 3x at k >= 5
  every config: >= 10x the per-pair fftconvolve loop"""
