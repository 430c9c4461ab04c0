"""The FFT engine's layouts of the channel sums, each against JAX (``conv_general_dilated`` + vjp).

On the host, a call with few channels and rows sums channels over frequency-last spectra, with
the compiled loop (``convcore/frequency_kernel.py``) or NumPy's broadcast products
(``convcore/frequency_last.py``); others keep the batched matmul over channels-last spectra.
The rule (``costs.spectra_frequency_last``) is forced each way here, on the same cases, so that
each layout is checked on the branches it has: groups, the polyphase split of strides, dilation,
overlap-save tiles (rows = batch x tiles, as one view or in chunks under a small memory budget, where
the filter gradient's spectrum is summed over the chunks; the reduced input made as long as the
windows reach, in the padding's one copy or padded after it), padding modes, N = 1 to 5, both
dtypes, through the functions and through a layer. Each case asserts which layout ran.
"""
from __future__ import annotations

import numpy as np
import pytest
from conv_checks import NUMPY, check_case
from conv_oracles import ConvCase, jax_reference

from convcore import costs, fft_conv, frequency_kernel, frequency_last

CASES = [
    ConvCase((2, 3, 9, 8), (5, 3, 4, 3), padding=1, seed=70),
    ConvCase((1, 2, 11), (3, 2, 4), padding="same", seed=71),                                      # 1-D
    ConvCase((2, 4, 7, 6, 5), (4, 2, 3, 2, 3), groups=2, padding=1, seed=72),
    ConvCase((2, 3, 10, 9), (2, 3, 3, 3), stride=2, dilation=(1, 2), padding=[(1, 0), (2, 1)], seed=73),
    ConvCase((1, 2, 5, 5, 5, 6), (2, 2, 3, 2, 3, 3), padding=1, padding_mode="circular", seed=74),  # 4-D
    ConvCase((1, 1, 5, 4, 5, 4, 5), (2, 1, 2, 2, 3, 2, 2), padding="full", seed=75),               # 5-D
    ConvCase((3, 2, 6, 7), (2, 2, 3, 3), padding=1, padding_mode="reflect", seed=76),
    ConvCase((2, 4, 8, 8), (4, 1, 3, 3), groups=4, padding=1, seed=77),                            # depthwise
]
# Overlap-save tiles: long inputs, short kernels (rows = batch x tiles).
TILED = [
    ConvCase((2, 2, 5000), (2, 2, 5), padding=2, seed=78),   # long enough for 1-D tiles (Rates.tile_gain_1d)
    ConvCase((1, 2, 90, 70), (3, 2, 3, 4), padding=1, seed=79),
    ConvCase((1, 2, 90, 70), (2, 2, 3, 4), padding=1, padding_mode="reflect", seed=80),
    # one output along the strided axis: it runs at stride 1, reading 3 of its 11 padded cells
    ConvCase((1, 2, 600, 9), (2, 2, 5, 3), stride=(1, 10), padding=1, seed=81),
]


LAYOUTS = ["compiled", "numpy", "channels_last"]   # frequency-last with each sum, or channels-last


@pytest.fixture
def layouts(monkeypatch):
    """Each FFTConv built: (frequency_last, tiled, chunks of rows), and the compiled sums' calls
    (``layouts.compiled_calls``). An observation of the real engine."""
    seen = _Seen()
    real_init, real_sums = fft_conv.FFTConv.__init__, frequency_kernel.sum_products

    def observed(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        seen.append((self.frequency_last, self.tiled, len(self.chunks())))

    def counted(*args, **kwargs):
        seen.compiled_calls += 1
        return real_sums(*args, **kwargs)

    monkeypatch.setattr(fft_conv.FFTConv, "__init__", observed)
    monkeypatch.setattr(frequency_kernel, "sum_products", counted)
    return seen


class _Seen(list):
    compiled_calls = 0


def _force(monkeypatch, layout: str) -> None:
    """The rule forced to ``layout``; the compiled sums switched off for "numpy"."""
    on = layout != "channels_last"
    monkeypatch.setattr(costs, "FREQUENCY_LAST_MAX_MADDS", 10**9 if on else 0)
    monkeypatch.setattr(costs, "FREQUENCY_LAST_MAX_MADDS_COMPILED", 10**9 if on else 0)
    monkeypatch.setenv("CONVCORE_COMPILED", "0" if layout == "numpy" else "1")


def _assert_ran(layouts, layout: str) -> None:
    assert layouts and all(f == (layout != "channels_last") for f, _, _ in layouts), layouts
    assert (layouts.compiled_calls > 0) == (layout == "compiled"), (layout, layouts.compiled_calls)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layer", [False, True])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_each_layout_matches_jax(monkeypatch, layouts, case, layout, layer, dtype):
    _force(monkeypatch, layout)
    check_case(NUMPY, case, jax_reference(case), dtype, "fft", layer=layer)
    _assert_ran(layouts, layout)


@pytest.mark.parametrize("budget", [None, 30_000], ids=["one_chunk", "chunks"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", TILED, ids=[f"tiled{i}" for i in range(len(TILED))])
def test_each_layout_matches_jax_over_tiles_and_chunks(monkeypatch, layouts, case, layout, budget):
    _force(monkeypatch, layout)
    check_case(NUMPY, case, jax_reference(case), np.float64, "fft", layer=True, memory_budget=budget)
    _assert_ran(layouts, layout)
    assert all(tiled for _, tiled, _ in layouts), layouts
    if budget is not None:
        assert any(chunks > 1 for _, _, chunks in layouts), f"the budget did not split the rows: {layouts}"


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "numpy"])
def test_the_engine_takes_the_rule_of_the_sums_that_run(monkeypatch, layouts, compiled):
    """2 rows x 8 x 8 channels (128 multiply-adds a frequency), nothing forced: frequency-last with the
    compiled sums, channels-last without them; both against JAX."""
    monkeypatch.setenv("CONVCORE_COMPILED", "1" if compiled else "0")
    case = ConvCase((2, 8, 9, 8, 7), (8, 8, 4, 3, 3), padding=1, seed=82)
    check_case(NUMPY, case, jax_reference(case), np.float32, "fft", layer=True)
    _assert_ran(layouts, "compiled" if compiled else "channels_last")


def test_the_rule_counts_rows_and_both_channel_counts():
    assert costs.spectra_frequency_last(2, 4, 4)                       # 32 multiply-adds a frequency
    assert costs.spectra_frequency_last(1, 8, 8)
    assert not costs.spectra_frequency_last(2, 8, 8)                   # 128: one matmul call is cheaper
    assert not costs.spectra_frequency_last(costs.FREQUENCY_LAST_MAX_MADDS + 1, 1, 1)
    # the compiled sums reach further: BLAS wins back only on large per-frequency products
    assert costs.spectra_frequency_last(2, 8, 8, compiled=True)
    assert costs.spectra_frequency_last(4, 64, 64, compiled=True)
    assert not costs.spectra_frequency_last(32, 32, 32, compiled=True)


@pytest.mark.parametrize("spare_bytes", [1, 3 * 2 * 5 * 16 * 3, frequency_last.SPARE_BYTES],
                         ids=["one_frequency_a_block", "blocks_and_a_short_last", "one_block"])
def test_sum_of_products_matches_a_matmul(monkeypatch, spare_bytes):
    """The three products' NumPy path against NumPy's matmul in the channels-last layout, random
    complex data, with the later terms' temporary taking the frequencies in one block or several."""
    monkeypatch.setenv("CONVCORE_COMPILED", "0")
    monkeypatch.setattr(frequency_last, "SPARE_BYTES", spare_bytes)
    rng = np.random.default_rng(3)

    def spectrum(*shape):
        return rng.standard_normal(shape) + 1j * rng.standard_normal(shape)

    rows, g, C, O, F = 3, 2, 4, 5, 7 * 17
    X, G, W = spectrum(rows, g, C, F), spectrum(rows, g, O, F), spectrum(O, g, C, F)
    last = (3, 1, 0, 2)   # (rows, g, c, F) -> (F, g, rows, c)
    y = np.matmul(X.transpose(last), W.conj().transpose(3, 1, 2, 0))        # (F, g, rows, O)
    gx = np.matmul(G.transpose(last), W.transpose(3, 1, 0, 2))             # (F, g, rows, C)
    gW = np.matmul(G.conj().transpose(3, 1, 2, 0), X.transpose(last))       # (F, g, O, C)
    np.testing.assert_allclose(frequency_last.correlate(np, X, W).transpose(last), y, rtol=1e-12)
    np.testing.assert_allclose(frequency_last.input_grad(np, G, W).transpose(last), gx, rtol=1e-12)
    np.testing.assert_allclose(frequency_last.weight_grad(np, G.copy(), X).transpose(3, 0, 1, 2), gW,
                               rtol=1e-12)
