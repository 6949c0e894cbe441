"""Schedules against the ᾱ table of docs/design.md §4.1; DDIM against a NumPy transcription of
the released loop."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from videomv_jax.diffusion import ddim
from videomv_jax.diffusion.schedules import alphas_cumprod


@pytest.mark.parametrize("schedule, expected", [
    ("linear_sd", {1: 0.99830, 181: 0.78265, 381: 0.45524, 581: 0.17986, 981: 0.00578}),
    ("cosine", {1: 0.99991, 181: 0.91501, 381: 0.67403, 581: 0.36762, 981: 0.00078, 999: 0.0}),
])
def test_schedule_values_match_the_spec_table(schedule, expected):
    ab = alphas_cumprod(schedule)
    for t, value in expected.items():
        assert abs(ab[t] - value) < 5e-6, (t, ab[t])  # the table has 5 decimals
    assert np.all(np.diff(ab) < 0)


def test_cosine_has_zero_terminal_snr_only_when_asked():
    assert alphas_cumprod("cosine")[-1] == 0.0
    assert alphas_cumprod("cosine", zero_terminal_snr=False)[-1] > 0.0
    with pytest.raises(ValueError, match="unknown schedule"):
        alphas_cumprod("sigmoid")


def test_step_counts_that_do_not_divide_the_schedule_are_refused():
    with pytest.raises(ValueError, match="needs num_steps to divide"):
        ddim.make_schedule("linear_sd", 3)
    assert ddim.make_schedule("linear_sd", 4).timesteps[0] == 751


def test_released_grid():
    s = ddim.make_schedule("linear_sd", 50)
    steps = np.asarray(s.timesteps)
    assert steps[0] == 981 and steps[-1] == 1 and np.all(np.diff(steps) == -20)
    ab = alphas_cumprod("linear_sd")
    np.testing.assert_allclose(s.alpha_prev[-1], ab[0], rtol=1e-6)  # ᾱ[0], not 1
    np.testing.assert_allclose(s.alpha_prev[:-1], ab[steps[1:]], rtol=1e-6)
    assert list(np.asarray(s.timesteps)[[20, 30, 40]]) == [581, 381, 181]  # the 3D-aware steps


def _numpy_released_loop(x, outputs, ab, steps, prediction):
    """The released DDIM loop (eta 0) in float64 NumPy, model outputs given per step."""
    for i, t in enumerate(steps):
        a, a_prev = ab[t], ab[max(t - 20, 0)]
        out = outputs[i]
        if prediction == "eps":
            x0 = x / np.sqrt(a) - np.sqrt(1 / a - 1) * out
        else:
            x0 = np.sqrt(a) * x - np.sqrt(1 - a) * out
        eps = (x / np.sqrt(a) - x0) / np.sqrt(1 / a - 1)
        x = np.sqrt(a_prev) * x0 + np.sqrt(1 - a_prev) * eps
    return x


@pytest.mark.parametrize("schedule, prediction", [("linear_sd", "eps"), ("cosine", "v")])
def test_scanned_ddim_equals_numpy_released_formulas(schedule, prediction):
    rng = np.random.default_rng(0)
    x_t = rng.normal(size=(2, 3, 4, 4, 4))
    outputs = rng.normal(size=(50, 2, 3, 4, 4, 4)) * 0.5
    s = ddim.make_schedule(schedule, 50, prediction=prediction)

    def step(x, inputs):
        alpha, alpha_prev, out = inputs
        x0 = ddim.predict_x0(x, out, alpha, s.prediction)
        return ddim.ddim_update(x, x0, alpha, alpha_prev), None

    x, _ = jax.lax.scan(step, jnp.asarray(x_t, jnp.float32),
                        (s.alpha, s.alpha_prev, jnp.asarray(outputs, jnp.float32)))
    ab = alphas_cumprod(schedule)
    # the cosine schedule starts at ᾱ = 0.00078 (√(1/ᾱ) ≈ 36): float32 vs float64 ~1e-4 relative
    expected = _numpy_released_loop(x_t, outputs, ab, np.asarray(s.timesteps), prediction)
    np.testing.assert_allclose(x, expected, rtol=2e-4, atol=2e-4)


def test_x0_roundtrip_and_training_targets():
    rng = np.random.default_rng(1)
    x0, noise = (jnp.asarray(rng.normal(size=(5,)), jnp.float32) for _ in range(2))
    alpha = jnp.float32(0.3)
    xt = ddim.q_sample(x0, noise, alpha)
    np.testing.assert_allclose(ddim.predict_x0(xt, noise, alpha, "eps"), x0, atol=1e-5)
    v = ddim.v_target(x0, noise, alpha)
    np.testing.assert_allclose(ddim.predict_x0(xt, v, alpha, "v"), x0, atol=1e-5)
    np.testing.assert_allclose(ddim.eps_from_x0(xt, x0, alpha), noise, atol=1e-5)
    np.testing.assert_allclose(ddim.guidance(jnp.ones(2), 3 * jnp.ones(2), 9.0), [19.0, 19.0])


def test_eta_needs_noise_and_matches_formula():
    xt, x0 = jnp.ones(3), jnp.zeros(3)
    with pytest.raises(ValueError, match="needs noise"):
        ddim.ddim_update(xt, x0, 0.5, 0.6, eta=1.0)
    z = jnp.full(3, 2.0)
    a, ap = 0.5, 0.6
    sigma = np.sqrt((1 - ap) / (1 - a)) * np.sqrt(1 - a / ap)
    eps = (1 / np.sqrt(a)) / np.sqrt(1 / a - 1)
    expected = np.sqrt(1 - ap - sigma ** 2) * eps + sigma * 2.0
    np.testing.assert_allclose(ddim.ddim_update(xt, x0, a, ap, 1.0, z), expected, rtol=1e-6)
