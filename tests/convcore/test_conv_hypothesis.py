"""convcore against JAX on hypothesis-generated configurations, N = 1..5.

Every draw mixes stride, each padding form (int, per-dim ints, (lo, hi) pairs,
"valid", "same", "full"), dilation, groups, bias, dtype and algorithm; sizes stay
small because JAX compiles once per shape. Odd cases found here belong in the
table of test_conv_vs_jax.py.
"""
from __future__ import annotations

import numpy as np
from conv_checks import check_case
from conv_oracles import jax_reference
from conv_strategies import conv_cases
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

HYPOTHESIS = settings(max_examples=30, deadline=None, derandomize=True,
                      suppress_health_check=[HealthCheck.too_slow])


@HYPOTHESIS
@given(case=conv_cases(), dtype=st.sampled_from([np.float64, np.float32]),
       algorithm=st.sampled_from(["fft", "direct", "auto"]), layer=st.booleans())
def test_random_configs_match_jax(backend, case, dtype, algorithm, layer):
    check_case(backend, case, jax_reference(case), dtype, algorithm, layer=layer)
