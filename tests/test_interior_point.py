"""The interior-point method's cone algebra and a small program with a known optimum."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from descent_opt.optimize import interior_point as ipm

CONES = ipm.Cones(2, (4, 3))


def _interior_point(rng):
    v = rng.normal(size=9)
    v[:2] = np.abs(v[:2]) + 0.1
    v[2] = np.linalg.norm(v[3:6]) + 0.1 + abs(rng.normal())
    v[6] = np.linalg.norm(v[7:9]) + 0.1 + abs(rng.normal())
    return jnp.asarray(v)


def test_nesterov_todd_scaling_and_jordan_algebra():
    rng = np.random.default_rng(0)
    with jax.enable_x64(True):
        for _ in range(5):
            s, z = _interior_point(rng), _interior_point(rng)
            w = ipm.nt_scaling(CONES, s, z)
            # W z = W^-1 s (the scaling point), and W^-1 inverts W.
            np.testing.assert_allclose(
                ipm.apply_scaling(CONES, w, z), ipm.apply_scaling(CONES, w, s, True), atol=1e-12
            )
            x = jnp.asarray(rng.normal(size=9))
            back = ipm.apply_scaling(CONES, w, ipm.apply_scaling(CONES, w, x), True)
            np.testing.assert_allclose(back, x, atol=1e-12)
            lam = ipm.apply_scaling(CONES, w, z)
            np.testing.assert_allclose(
                ipm.jordan(CONES, lam, ipm.jordan_divide(CONES, lam, x)), x, atol=1e-10
            )
            # The maximum step lands exactly on the boundary of one block.
            d = jnp.asarray(rng.normal(size=9))
            alpha = float(ipm.max_step(CONES, s, d))
            y = np.asarray(s + alpha * d)
            margins = [y[0], y[1], y[2] - np.linalg.norm(y[3:6]), y[6] - np.linalg.norm(y[7:9])]
            assert min(margins) > -1e-9 and abs(min(margins)) < 1e-9


def test_minimum_effort_double_integrator_matches_closed_form():
    """Rest-to-rest move of 1 m by a 1-D double integrator in N held-acceleration steps,
    minimising sum |u_k| dt through |u_k| <= sigma_k (a 2-D second-order cone per stage).
    A step-j acceleration moves the end point by w_j = (N - 1 - j + 1/2) dt^2 per unit, and
    the accelerations must sum to zero, so the optimum spends its effort on the extreme steps:
    effort = 2 / ((N - 1) dt)."""
    n, dt = 10, 0.5
    with jax.enable_x64(True):
        a = jnp.array([[1.0, dt], [0.0, 1.0]])
        b = jnp.array([[0.5 * dt * dt, 0.0], [dt, 0.0]])
        cones = ipm.Cones(0, (2,))  # (sigma, u) in a 2-D second-order cone: |u| <= sigma
        g = jnp.zeros((n, 2, 4)).at[:, 0, 3].set(-1.0).at[:, 1, 2].set(-1.0)
        c = jnp.zeros((n, 4)).at[:, 3].set(dt)
        # Terminal: x_N = (0, 0) through elastic e (4 extras), penalty 100.
        g_t = jnp.zeros((4, 4))
        for i in range(2):
            g_t = g_t.at[i, 2 + i].set(-1.0)
            g_t = g_t.at[2 + i, 2 + i].set(-1.0).at[2 + i, i].set(1.0)
        c_t = jnp.array([-100.0, -100.0, 200.0, 200.0])
        prog = ipm.StageSOCP(
            a=a, b=b, d=jnp.zeros(2), x0=jnp.array([-1.0, 0.0]), g=g, h=jnp.zeros((n, 2)), c=c,
            g_t=g_t, h_t=jnp.zeros(4), c_t=c_t, u0=jnp.zeros((n, 2)), e0=jnp.zeros(2),
            fixed_u=jnp.zeros(2), cones=cones, cones_t=ipm.Cones(4),
        )  # fmt: skip
        res = ipm.solve(prog, iterations=60, tol=1e-10)
        assert bool(res.converged)
        u = np.asarray(res.y[:, 2])
        effort = float(np.sum(np.abs(u)) * dt)
        np.testing.assert_allclose(effort, 2.0 / ((n - 1) * dt), rtol=1e-6)
        np.testing.assert_allclose(np.asarray(res.y_t[:2]), [0.0, 0.0], atol=1e-8)


def test_dynamics_multipliers_give_the_derivative_of_the_optimal_value():
    """Envelope theorem: for the same rest-to-rest move with cost sum_k sigma_k (no dt), the
    optimum is 2 / ((N - 1) dt^2); its derivative in dt, -4 / ((N - 1) dt^3), must equal
    sum_k lam_k . (dA/d(dt) x_k + dB/d(dt) u_k) at the solution."""
    n, dt = 10, 0.5

    def dynamics(step):
        a = jnp.array([[1.0, step], [0.0, 1.0]])
        b = jnp.array([[0.5 * step * step, 0.0], [step, 0.0]])
        return a, b

    with jax.enable_x64(True):
        a, b = dynamics(dt)
        g = jnp.zeros((n, 2, 4)).at[:, 0, 3].set(-1.0).at[:, 1, 2].set(-1.0)
        g_t = jnp.zeros((4, 4))
        for i in range(2):
            g_t = g_t.at[i, 2 + i].set(-1.0)
            g_t = g_t.at[2 + i, 2 + i].set(-1.0).at[2 + i, i].set(1.0)
        prog = ipm.StageSOCP(
            a=a, b=b, d=jnp.zeros(2), x0=jnp.array([-1.0, 0.0]), g=g, h=jnp.zeros((n, 2)),
            c=jnp.zeros((n, 4)).at[:, 3].set(1.0), g_t=g_t, h_t=jnp.zeros(4),
            c_t=jnp.array([-100.0, -100.0, 200.0, 200.0]), u0=jnp.zeros((n, 2)),
            e0=jnp.zeros(2), fixed_u=jnp.zeros(2), cones=ipm.Cones(0, (2,)), cones_t=ipm.Cones(4),
        )  # fmt: skip
        res = ipm.solve(prog, iterations=60, tol=1e-11)
        assert bool(res.converged)
        np.testing.assert_allclose(float(res.objective), 2.0 / ((n - 1) * dt * dt), rtol=1e-7)
        lam = ipm.dynamics_multipliers(prog, res)
        x, u = res.y[:, :2], res.y[:, 2:]

        def dynamics_term(step):
            a, b = dynamics(step)
            return jnp.sum(lam * (x @ a.T + u @ b.T))

        slope = jax.grad(dynamics_term)(dt)
        np.testing.assert_allclose(float(slope), -4.0 / ((n - 1) * dt**3), rtol=1e-6)
