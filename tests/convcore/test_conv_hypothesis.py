"""convcore against JAX on hypothesis-generated configurations, N = 1..5.

Every draw mixes stride, each padding form (int, per-dim ints, (lo, hi) pairs,
"valid", "same", "full"), dilation, groups, bias and algorithm, and is checked in
float64 and float32; sizes stay small because JAX compiles once per shape.
Examples are random per run, with the seed printed on failure (see
conv_strategies). Odd cases found here belong in the table of test_conv_vs_jax.py.
"""
from __future__ import annotations

import numpy as np
from conv_checks import check_case
from conv_oracles import cached_reference
from conv_strategies import conv_cases, note_seed, reproducible
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

HYPOTHESIS = settings(max_examples=25, deadline=None, print_blob=True,
                      suppress_health_check=[HealthCheck.too_slow])


@reproducible
@HYPOTHESIS
@given(case=conv_cases(), algorithm=st.sampled_from(["fft", "direct", "auto"]), layer=st.booleans())
def test_random_configs_match_jax(backend, case, algorithm, layer):
    note_seed()
    ref = cached_reference(case, jax_only=True)
    for dtype in (np.float64, np.float32):
        check_case(backend, case, ref, dtype, algorithm, layer=layer)
