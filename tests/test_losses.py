"""fit.losses helpers checked against torch references."""

import numpy as np
import pytest
import torch


@pytest.mark.parametrize("n", [1, 2, 7, 1000, 250_001])
def test_quantiles_equal_torch_quantile(n):
    """The partial-sort percentiles are torch.quantile's (linear rule) bit for bit, on
    continuous values, on values with many ties, and at the ends (q = 0, 1)."""
    from deltamic_core.fit.losses import _quantiles

    rng = np.random.default_rng(n)
    for x in (rng.random(n), np.round(rng.random(n) * 5), rng.standard_normal(n).astype(np.float32)):
        t = torch.as_tensor(x).reshape(-1, 1)
        for qs in ((0.01, 0.995), (0.0, 1.0), (0.3, 0.3000001), (0.5, 0.75)):
            ref = torch.quantile(t.reshape(-1).to(torch.float64), torch.tensor(qs, dtype=torch.float64))
            assert _quantiles(t, qs) == (float(ref[0]), float(ref[1]))
