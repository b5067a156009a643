"""Primal-dual interior-point method for stage-wise second-order cone programs.

The programs have the shape of a discrete-time optimal control problem:

    minimise    sum_k c_k . y_k  +  c_T . y_T
    subject to  y_k = (x_k, u_k),  x_{k+1} = A x_k + B u_k + d,  x_0 given,
                h_k - G_k y_k  in K        (k = 0 .. N-1, the same cone K at every stage)
                h_T - G_T y_T  in K_T,     y_T = (x_N, e)  (terminal state, extra variables e)

with K a product of a non-negative orthant and second-order cones. The iterate always satisfies
the dynamics exactly, so each Newton system is an equality-constrained linear-quadratic
problem, solved by a Riccati recursion in O(N) small dense operations instead of one dense
factorisation of the whole Hessian (O(N^3)). The method is Mehrotra's predictor-corrector with
Nesterov-Todd scaling, as in the standard cone-QP solvers. It is written for one program; the
callers vmap it over a batch.

Over 400 lines because it is one solver: the cone algebra, the Riccati solve of each
Newton system and the iteration share their stage-wise data layout.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int


class Cones(eqx.Module):
    """Layout of a cone vector: ``n_l`` non-negative entries, then second-order cones."""

    n_l: int = eqx.field(static=True)
    soc: tuple[int, ...] = eqx.field(static=True, default=())

    @property
    def size(self) -> int:
        return self.n_l + sum(self.soc)

    @property
    def degree(self) -> int:
        return self.n_l + len(self.soc)

    def blocks(self):
        """(offset, dim) of each second-order cone."""
        off = self.n_l
        for d in self.soc:
            yield off, d
            off += d


class StageSOCP(eqx.Module):
    """One program (see the module docstring). nx states, nu controls, ne terminal extras."""

    a: Float[Array, "nx nx"]
    b: Float[Array, "nx nu"]
    d: Float[Array, " nx"]
    x0: Float[Array, " nx"]
    g: Float[Array, "n m n_y"]
    h: Float[Array, "n m"]
    c: Float[Array, "n n_y"]
    g_t: Float[Array, "m_t n_t"]
    h_t: Float[Array, " m_t"]
    c_t: Float[Array, " n_t"]
    u0: Float[Array, "n nu"]  # initial controls (need not be feasible)
    e0: Float[Array, " ne"]  # initial terminal extras
    fixed_u: Float[Array, " nu"]  # 1 where a control is pinned at zero (no column in G, B)
    cones: Cones = eqx.field(static=True)
    cones_t: Cones = eqx.field(static=True)


class IpmResult(eqx.Module):
    y: Float[Array, "n n_y"]
    y_t: Float[Array, " n_t"]
    z: Float[Array, "n m"]  # cone multipliers
    z_t: Float[Array, " m_t"]
    objective: Float[Array, ""]
    gap: Float[Array, ""]  # s . z summed over all cones
    primal_residual: Float[Array, ""]  # max |G y + s - h|
    iterations: Int[Array, ""]
    converged: Bool[Array, ""]


# ---------------------------------------------------------------------------------------------
# Cone algebra (vectors carry the cone along their last axis)
# ---------------------------------------------------------------------------------------------


def _soc_parts(cones: Cones, v):
    return [(v[..., o], v[..., o + 1 : o + d]) for o, d in cones.blocks()]


def _assemble(cones: Cones, lin, socs):
    parts = [lin] + [jnp.concatenate([v0[..., None], v1], axis=-1) for v0, v1 in socs]
    return jnp.concatenate(parts, axis=-1)


def identity(cones: Cones, like):
    e = jnp.zeros(like.shape[:-1] + (cones.size,), like.dtype)
    e = e.at[..., : cones.n_l].set(1.0)
    for o, _ in cones.blocks():
        e = e.at[..., o].set(1.0)
    return e


def jordan(cones: Cones, a, b):
    """Jordan product a o b (elementwise on the orthant)."""
    lin = a[..., : cones.n_l] * b[..., : cones.n_l]
    socs = [
        (a0 * b0 + jnp.sum(a1 * b1, -1), a0[..., None] * b1 + b0[..., None] * a1)
        for (a0, a1), (b0, b1) in zip(_soc_parts(cones, a), _soc_parts(cones, b))
    ]
    return _assemble(cones, lin, socs)


def jordan_divide(cones: Cones, lam, v):
    """x with lam o x = v."""
    lin = v[..., : cones.n_l] / lam[..., : cones.n_l]
    socs = []
    for (l0, l1), (v0, v1) in zip(_soc_parts(cones, lam), _soc_parts(cones, v)):
        det = l0 * l0 - jnp.sum(l1 * l1, -1)
        x0 = (l0 * v0 - jnp.sum(l1 * v1, -1)) / det
        socs.append((x0, (v1 - x0[..., None] * l1) / l0[..., None]))
    return _assemble(cones, lin, socs)


class Scaling(eqx.Module):
    """Nesterov-Todd scaling W (symmetric): W z = W^-1 s = lambda. On a second-order cone
    W = eta [[w0, w1'], [w1, I + w1 w1' / (1 + w0)]] with w0^2 - |w1|^2 = 1."""

    w_l: Array  # diagonal on the orthant
    eta: list  # per SOC, shape (...)
    wbar: list  # per SOC, shape (..., d) with wbar' J wbar = 1


def nt_scaling(cones: Cones, s, z) -> Scaling:
    w_l = jnp.sqrt(s[..., : cones.n_l] / z[..., : cones.n_l])
    etas, wbars = [], []
    for (s0, s1), (z0, z1) in zip(_soc_parts(cones, s), _soc_parts(cones, z)):
        s_det = jnp.sqrt(jnp.maximum(s0 * s0 - jnp.sum(s1 * s1, -1), 1e-300))
        z_det = jnp.sqrt(jnp.maximum(z0 * z0 - jnp.sum(z1 * z1, -1), 1e-300))
        sb0, sb1 = s0 / s_det, s1 / s_det[..., None]
        zb0, zb1 = z0 / z_det, z1 / z_det[..., None]
        gamma = jnp.sqrt(0.5 * (1.0 + sb0 * zb0 + jnp.sum(sb1 * zb1, -1)))
        wb0 = (sb0 + zb0) / (2.0 * gamma)
        wb1 = (sb1 - zb1) / (2.0 * gamma[..., None])
        etas.append(jnp.sqrt(s_det / z_det))
        wbars.append(jnp.concatenate([wb0[..., None], wb1], -1))
    return Scaling(w_l, etas, wbars)


def expand(w: Scaling, axes: int = 1) -> Scaling:
    """Insert ``axes`` broadcast axes after the scaling's leading axes (to scale the columns
    of a matrix given as (..., columns, m))."""
    at = w.w_l.ndim - 1

    def ins(a, k):
        return jnp.expand_dims(a, tuple(range(k, k + axes)))

    return Scaling(ins(w.w_l, at), [ins(e, at) for e in w.eta], [ins(b, at) for b in w.wbar])


def apply_scaling(cones: Cones, w: Scaling, v, inverse: bool = False):
    """W v, or W^-1 v (cone axis last)."""
    lin = v[..., : cones.n_l] / w.w_l if inverse else v[..., : cones.n_l] * w.w_l
    socs = []
    for (o, d), eta, wb in zip(cones.blocks(), w.eta, w.wbar):
        x0, x1 = v[..., o], v[..., o + 1 : o + d]
        w0, w1 = wb[..., 0], wb[..., 1:]
        w1x1 = jnp.sum(w1 * x1, -1)
        if inverse:
            y0 = (w0 * x0 - w1x1) / eta
            y1 = (x1 + (w1x1 / (1.0 + w0) - x0)[..., None] * w1) / eta[..., None]
        else:
            y0 = eta * (w0 * x0 + w1x1)
            y1 = eta[..., None] * (x1 + (w1x1 / (1.0 + w0) + x0)[..., None] * w1)
        socs.append((y0, y1))
    return _assemble(cones, lin, socs)


def max_step(cones: Cones, x, dx):
    """Largest alpha in (0, inf] with x + alpha dx in the cone (x interior), per leading index."""
    big = jnp.asarray(jnp.inf, x.dtype)
    xl, dl = x[..., : cones.n_l], dx[..., : cones.n_l]
    ratio = jnp.where(dl < 0.0, -xl / jnp.where(dl < 0.0, dl, -1.0), big)
    alpha = jnp.min(ratio, axis=-1) if cones.n_l else jnp.full(x.shape[:-1], big)
    for (x0, x1), (d0, d1) in zip(_soc_parts(cones, x), _soc_parts(cones, dx)):
        qa = d0 * d0 - jnp.sum(d1 * d1, -1)
        qb = x0 * d0 - jnp.sum(x1 * d1, -1)
        qc = x0 * x0 - jnp.sum(x1 * x1, -1)
        disc = qb * qb - qa * qc
        root = jnp.sqrt(jnp.maximum(disc, 0.0))
        q = -(qb + jnp.where(qb >= 0.0, root, -root))
        r1 = jnp.where(jnp.abs(qa) > 0.0, q / jnp.where(jnp.abs(qa) > 0.0, qa, 1.0), big)
        r2 = jnp.where(jnp.abs(q) > 0.0, qc / jnp.where(jnp.abs(q) > 0.0, q, 1.0), big)
        r1 = jnp.where(r1 > 0.0, r1, big)
        r2 = jnp.where(r2 > 0.0, r2, big)
        a_soc = jnp.where(disc >= 0.0, jnp.minimum(r1, r2), big)
        a_cone = jnp.where(d0 < 0.0, -x0 / jnp.where(d0 < 0.0, d0, -1.0), big)
        alpha = jnp.minimum(alpha, jnp.minimum(a_soc, a_cone))
    return alpha


def _interior(cones: Cones, s, margin=1.0):
    """Push a vector into the cone interior (per block) for the infeasible start."""
    lin = jnp.maximum(s[..., : cones.n_l], margin)
    socs = []
    for s0, s1 in _soc_parts(cones, s):
        socs.append((jnp.maximum(s0, jnp.sqrt(jnp.sum(s1 * s1, -1)) + margin), s1))
    return _assemble(cones, lin, socs)


# ---------------------------------------------------------------------------------------------
# Small dense SPD solves, unrolled (vectorise well under vmap, unlike batched LAPACK calls)
# ---------------------------------------------------------------------------------------------


def _ldl(m):
    n = m.shape[-1]
    low = [[None] * n for _ in range(n)]
    diag = [None] * n
    for j in range(n):
        acc = m[..., j, j]
        for k in range(j):
            acc = acc - low[j][k] ** 2 * diag[k]
        diag[j] = acc
        for i in range(j + 1, n):
            acc = m[..., i, j]
            for k in range(j):
                acc = acc - low[i][k] * low[j][k] * diag[k]
            low[i][j] = acc / diag[j]
    return low, diag


def _ldl_solve(fac, rhs):
    """Solve with an LDL' factor; rhs (..., n) or (..., n, k)."""
    low, diag = fac
    n = len(diag)
    matrix = rhs.ndim == len(jnp.shape(diag[0])) + 2
    rows = [rhs[..., i, :] if matrix else rhs[..., i] for i in range(n)]
    ex = (lambda a: a[..., None]) if matrix else (lambda a: a)
    y = []
    for i in range(n):
        acc = rows[i]
        for k in range(i):
            acc = acc - ex(low[i][k]) * y[k]
        y.append(acc)
    x = [None] * n
    for i in reversed(range(n)):
        acc = y[i] / ex(diag[i])
        for k in range(i + 1, n):
            acc = acc - ex(low[k][i]) * x[k]
        x[i] = acc
    return jnp.stack(x, axis=-2 if matrix else -1)


def _stack_ldl(fac):
    low, diag = fac
    n = len(diag)
    zero = jnp.zeros_like(diag[0])
    lows = jnp.stack(
        [jnp.stack([low[i][j] if i > j else zero for j in range(n)], -1) for i in range(n)], -2
    )
    return lows, jnp.stack(diag, -1)


def _unstack_ldl(packed):
    lows, diag = packed
    n = diag.shape[-1]
    low = [[lows[..., i, j] if i > j else None for j in range(n)] for i in range(n)]
    return low, [diag[..., i] for i in range(n)]


# ---------------------------------------------------------------------------------------------
# Riccati solution of the Newton (linear-quadratic) systems
# ---------------------------------------------------------------------------------------------


class _Factor(eqx.Module):
    gain: Array  # (n, nu, nx): du = K dx + k
    quu: tuple  # packed LDL of Q_uu per stage
    hee: tuple  # packed LDL of the terminal extras block
    gain_t: Array  # (ne, nx)


def _riccati_factor(p: StageSOCP, hess, hess_t) -> _Factor:
    nx = p.a.shape[0]
    f = jnp.concatenate([p.a, p.b], axis=1)
    hee = _ldl(hess_t[nx:, nx:])
    gain_t = -_ldl_solve(hee, hess_t[nx:, :nx])
    pmat = hess_t[:nx, :nx] + hess_t[:nx, nx:] @ gain_t

    def back(pm, hk):
        q = hk + f.T @ pm @ f
        fac = _ldl(q[nx:, nx:])
        gain = -_ldl_solve(fac, q[nx:, :nx])
        pm = q[:nx, :nx] + q[nx:, :nx].T @ gain
        return 0.5 * (pm + pm.T), (gain, _stack_ldl(fac))

    _, (gains, quu) = jax.lax.scan(back, pmat, hess, reverse=True)
    return _Factor(gains, quu, _stack_ldl(hee), gain_t)


def _riccati_solve(p: StageSOCP, fac: _Factor, grad, grad_t):
    nx = p.a.shape[0]
    f = jnp.concatenate([p.a, p.b], axis=1)
    hee = _unstack_ldl(fac.hee)
    k_t = -_ldl_solve(hee, grad_t[nx:])
    pvec = grad_t[:nx] + fac.gain_t.T @ grad_t[nx:]

    def back(pv, inputs):
        gk, gain, quu = inputs
        q = gk + f.T @ pv
        kff = -_ldl_solve(_unstack_ldl(quu), q[nx:])
        return q[:nx] + gain.T @ q[nx:], kff

    _, kffs = jax.lax.scan(back, pvec, (grad, fac.gain, fac.quu), reverse=True)

    def fwd(dx, inputs):
        gain, kff = inputs
        du = gain @ dx + kff
        return p.a @ dx + p.b @ du, jnp.concatenate([dx, du])

    dx_n, dy = jax.lax.scan(fwd, jnp.zeros(nx, grad.dtype), (fac.gain, kffs))
    return dy, jnp.concatenate([dx_n, fac.gain_t @ dx_n + k_t])


# ---------------------------------------------------------------------------------------------
# The method
# ---------------------------------------------------------------------------------------------


def rollout(p: StageSOCP, u, e):
    """Stage vectors y_k = (x_k, u_k) and terminal (x_N, e) from controls."""

    def step(x, uk):
        return p.a @ x + p.b @ uk + p.d, jnp.concatenate([x, uk])

    x_n, y = jax.lax.scan(step, p.x0, u)
    return y, jnp.concatenate([x_n, e])


def dynamics_multipliers(p: StageSOCP, res: IpmResult):
    """Multipliers of the dynamics x_{k+1} = A x_k + B u_k + d, row k for step k -> k+1.

    With the Lagrangian c.y + z.(G y - h) + sum_k lam_k.(A x_k + B u_k + d - x_{k+1}),
    stationarity in the states gives the backward recursion
    lam_{N-1} = c_T,x + G_T,x' z_T and lam_{k-1} = c_k,x + G_k,x' z_k + A' lam_k.
    At an optimum, d(optimal value)/d(theta) = sum_k lam_k.(dA x_k + dB u_k + dd) for
    program data theta that enters only the dynamics (the envelope theorem)."""
    nx = p.a.shape[0]
    lam_last = p.c_t[:nx] + p.g_t[:, :nx].T @ res.z_t

    def back(lam, inputs):
        ck, gk, zk = inputs
        return ck[:nx] + gk[:, :nx].T @ zk + p.a.T @ lam, lam

    lam_0, lams = jax.lax.scan(back, lam_last, (p.c[1:], p.g[1:], res.z[1:]), reverse=True)
    return jnp.concatenate([lam_0[None], lams])


def _residual(p: StageSOCP, y, y_t, s, s_t):
    rp = jnp.einsum("kmn,kn->km", p.g, y) + s - p.h
    rp_t = p.g_t @ y_t + s_t - p.h_t
    return rp, rp_t


def solve(
    p: StageSOCP,
    iterations: int = 40,
    tol: float = 1e-9,
    step_fraction: float = 0.99,
    warm=None,
    margin=1.0,
    dual_bound: float = float("inf"),
) -> IpmResult:
    """Mehrotra predictor-corrector from the infeasible start ``p.u0, p.e0``.

    The states are rolled out from those controls and the slacks h - G y pushed ``margin``
    into the cone interiors; the multipliers start at the cone identities or, with
    ``warm = (z, z_T)`` (say a neighbouring program's solution), at those pushed ``margin``
    into the interiors. A warm start with a small margin (1e-2) saves about a third of the
    iterations when the programs are close.

    Stops when every cone's complementarity s.z / degree and the primal residual fall below
    ``tol`` (problem units), or after ``iterations``, or (not converged) once a multiplier
    exceeds ``dual_bound``: the multipliers of a primal-infeasible program grow without bound
    (they tend to a certificate of infeasibility)."""
    cs, ct = p.cones, p.cones_t
    nx = p.a.shape[0]
    degree = p.g.shape[0] * cs.degree + ct.degree
    keep = jnp.concatenate([jnp.ones(nx), 1.0 - p.fixed_u])
    pin = jnp.concatenate([jnp.zeros(nx), p.fixed_u])
    y, y_t = rollout(p, p.u0, p.e0)
    s = _interior(cs, p.h - jnp.einsum("kmn,kn->km", p.g, y), margin)
    s_t = _interior(ct, p.h_t - p.g_t @ y_t, margin)
    if warm is None:
        z = identity(cs, s)
        z_t = identity(ct, s_t)
    else:
        z = _interior(cs, warm[0], margin)
        z_t = _interior(ct, warm[1], margin)

    def measures(y, y_t, s, s_t, z, z_t):
        rp, rp_t = _residual(p, y, y_t, s, s_t)
        gap = jnp.sum(s * z) + jnp.sum(s_t * z_t)
        res = jnp.maximum(jnp.max(jnp.abs(rp)), jnp.max(jnp.abs(rp_t)))
        return gap, res, (rp, rp_t)

    def done(gap, res):
        return (gap / degree < tol) & (res < tol)

    def body(state):
        it, y, y_t, s, s_t, z, z_t, (rp, rp_t), _, _ = state
        w, w_t = nt_scaling(cs, s, z), nt_scaling(ct, s_t, z_t)
        lam, lam_t = apply_scaling(cs, w, z), apply_scaling(ct, w_t, z_t)
        # Hessian of the Newton system per stage: (W^-1 G)' (W^-1 G).
        wig = apply_scaling(cs, expand(w), jnp.swapaxes(p.g, 1, 2), True)
        hess = jnp.einsum("kim,kjm->kij", wig, wig) + jnp.diag(pin)
        wig_t = apply_scaling(ct, w_t, p.g_t.T, True)
        hess_t = wig_t @ wig_t.T
        fac = _riccati_factor(p, hess, hess_t)

        def direction(rc, rc_t):
            t = jordan_divide(cs, lam, rc)
            t_t = jordan_divide(ct, lam_t, rc_t)
            v = apply_scaling(cs, w, apply_scaling(cs, w, rp, True) + t, True)
            v_t = apply_scaling(ct, w_t, apply_scaling(ct, w_t, rp_t, True) + t_t, True)
            grad = (p.c + jnp.einsum("kmn,km->kn", p.g, z + v)) * keep
            grad_t = p.c_t + p.g_t.T @ (z_t + v_t)
            dy, dy_t = _riccati_solve(p, fac, grad, grad_t)
            gdy = jnp.einsum("kmn,kn->km", p.g, dy)
            gdy_t = p.g_t @ dy_t
            dz = apply_scaling(cs, w, apply_scaling(cs, w, gdy + rp, True) + t, True)
            dz_t = apply_scaling(ct, w_t, apply_scaling(ct, w_t, gdy_t + rp_t, True) + t_t, True)
            return dy, dy_t, -rp - gdy, -rp_t - gdy_t, dz, dz_t

        def step_length(ds, ds_t, dz, dz_t):
            a = jnp.minimum(jnp.min(max_step(cs, s, ds)), jnp.min(max_step(cs, z, dz)))
            a_t = jnp.minimum(max_step(ct, s_t, ds_t), max_step(ct, z_t, dz_t))
            return jnp.minimum(a, a_t)

        mu = (jnp.sum(s * z) + jnp.sum(s_t * z_t)) / degree
        rc, rc_t = -jordan(cs, lam, lam), -jordan(ct, lam_t, lam_t)
        _, _, ds, ds_t, dz, dz_t = direction(rc, rc_t)
        a_aff = jnp.minimum(1.0, step_length(ds, ds_t, dz, dz_t))
        mu_aff = (
            jnp.sum((s + a_aff * ds) * (z + a_aff * dz))
            + jnp.sum((s_t + a_aff * ds_t) * (z_t + a_aff * dz_t))
        ) / degree
        sigma = jnp.clip(mu_aff / mu, 0.0, 1.0) ** 3
        corr = jordan(cs, apply_scaling(cs, w, ds, True), apply_scaling(cs, w, dz))
        corr_t = jordan(ct, apply_scaling(ct, w_t, ds_t, True), apply_scaling(ct, w_t, dz_t))
        rc = rc - corr + sigma * mu * identity(cs, s)
        rc_t = rc_t - corr_t + sigma * mu * identity(ct, s_t)
        dy, dy_t, ds, ds_t, dz, dz_t = direction(rc, rc_t)
        a = jnp.minimum(1.0, step_fraction * step_length(ds, ds_t, dz, dz_t))
        new = (y + a * dy, y_t + a * dy_t, s + a * ds, s_t + a * ds_t, z + a * dz, z_t + a * dz_t)
        gap, res, residual = measures(*new)
        diverged = jnp.maximum(jnp.max(jnp.abs(new[4])), jnp.max(jnp.abs(new[5]))) > dual_bound
        return (it + 1, *new, residual, done(gap, res), diverged)

    def cond(state):
        return (state[0] < iterations) & ~state[-2] & ~state[-1]

    residual = _residual(p, y, y_t, s, s_t)
    false = jnp.asarray(False)
    state = (jnp.asarray(0), y, y_t, s, s_t, z, z_t, residual, false, false)
    it, y, y_t, s, s_t, z, z_t, _, conv, _ = jax.lax.while_loop(cond, body, state)
    gap, res, _ = measures(y, y_t, s, s_t, z, z_t)
    objective = jnp.sum(p.c * y) + jnp.dot(p.c_t, y_t)
    return IpmResult(y, y_t, z, z_t, objective, gap, res, it, conv)
