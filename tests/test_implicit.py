"""iMAML's meta-gradient and adaptation against closed forms, per-task runs and dense solves."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import imaml
from imaml import _batching, tree
from imaml.inner import GD, HessianFree
from imaml.solvers import CG, MINRES, Dense, Neumann
from imaml.testing import linear_loss, make_linear_tasks, make_regression_batch

LAM = 2.0
INNERS = {
    "gd": GD(steps=150, lr=0.2),
    "hf": HessianFree(steps=3, cg_iters=5),
}
SOLVERS = {
    "cg": CG(iters=5),
    "minres": MINRES(iters=5),
    "neumann": Neumann(iters=120, alpha=0.45),
    "dense": Dense(),
}


def flat(params: dict[str, torch.Tensor]) -> torch.Tensor:
    return tree.flatten(params)[0]


@pytest.mark.parametrize("inner_name", INNERS)
@pytest.mark.parametrize("solver_name", SOLVERS)
def test_meta_gradient_matches_closed_form(linear_tasks, inner_name, solver_name):
    grads, info = imaml.meta_gradient(
        linear_loss,
        linear_tasks.theta,
        linear_tasks.support,
        linear_tasks.query,
        lam=LAM,
        inner=INNERS[inner_name],
        solver=SOLVERS[solver_name],
    )
    expected = linear_tasks.exact_meta_gradient(LAM)
    torch.testing.assert_close(flat(grads), expected, rtol=1e-6, atol=1e-9)
    assert set(grads) == {"w", "b"} and grads["b"].shape == ()
    for key in ("support_loss", "query_loss", "inner_grad_norm", "solver_residual"):
        assert info[key].shape == (4,), key
    assert torch.all(info["inner_grad_norm"] < 1e-8)
    assert torch.all(info["inner_stationarity"] < 1e-7)
    distance = [
        (linear_tasks.prox_solution(i, LAM) - linear_tasks.theta_vec).norm() for i in range(4)
    ]
    torch.testing.assert_close(info["inner_distance"], torch.stack(distance))
    assert torch.all(info["solver_residual"] < 1e-7)
    # I + H/λ with H = XᵀX/n ⪰ 0: every curvature the solvers see is at least 1; the
    # Ritz values lie within the extreme eigenvalues.
    smallest, largest = info["solver_min_curvature"], info["solver_max_curvature"]
    if solver_name == "neumann":
        assert torch.all(torch.isnan(smallest)) and torch.all(torch.isnan(largest))
    else:
        eigenvalues = torch.stack([linear_tasks.eigenvalues(i, LAM) for i in range(4)])
        lo, hi = eigenvalues[:, 0], eigenvalues[:, -1]
        assert torch.all(lo >= 1) and torch.all(smallest >= lo - 1e-9)
        assert torch.all(largest <= hi + 1e-9) and torch.all(largest >= smallest)
        if solver_name == "dense":
            torch.testing.assert_close(torch.stack([smallest, largest]), torch.stack([lo, hi]))
    # g = (I + H/λ)⁻¹ ∇L_q(φ*) against the query gradient at φ*, per task.
    for i in range(4):
        q_grad = linear_tasks.query_grad(i, linear_tasks.prox_solution(i, LAM))
        g = linear_tasks.imaml_gradient(i, LAM)
        expected = (g - q_grad).norm() / q_grad.norm()
        assert expected > 0.05  # H/λ is not negligible on these tasks
        torch.testing.assert_close(info["solver_correction"][i], expected, rtol=1e-5, atol=1e-9)


def test_inner_stationarity_of_an_unsolved_inner_problem(linear_tasks):
    """One GD step on the proximal objective: φ₁ = θ − lr·∇L_s(θ), in closed form."""
    lr = 0.1
    _, info = imaml.meta_gradient(
        linear_loss, linear_tasks.theta, linear_tasks.support, linear_tasks.query,
        lam=LAM, inner=GD(steps=1, lr=lr), solver=Dense(),
    )  # fmt: skip
    for i in range(4):
        h, c = linear_tasks.quadratic(linear_tasks.xs[i], linear_tasks.ys[i])
        theta = linear_tasks.theta_vec
        phi = theta - lr * (h @ theta - c)
        grad_f = h @ phi - c + LAM * (phi - theta)
        torch.testing.assert_close(info["inner_distance"][i], (phi - theta).norm())
        expected = grad_f.norm() / (LAM * (phi - theta).norm())
        torch.testing.assert_close(info["inner_stationarity"][i], expected)
        assert expected > 0.1  # far from solved, and the diagnostic says so


def test_inner_stationarity_is_inf_when_phi_is_theta(linear_tasks):
    """0 inner steps: φ = θ, the support gradient is unbalanced and the distance is 0."""
    _, info = imaml.meta_gradient(
        linear_loss, linear_tasks.theta, linear_tasks.support, linear_tasks.query,
        lam=LAM, inner=GD(steps=0, lr=0.1), solver=Dense(),
    )  # fmt: skip
    assert torch.all(info["inner_distance"] == 0)
    assert torch.all(info["inner_grad_norm"] > 0)
    assert torch.all(torch.isposinf(info["inner_stationarity"]))


def test_info_losses_are_those_at_the_inner_solution(linear_tasks):
    _, info = imaml.meta_gradient(
        linear_loss,
        linear_tasks.theta,
        linear_tasks.support,
        linear_tasks.query,
        lam=LAM,
        inner=INNERS["hf"],
        solver=CG(5),
    )
    for i in range(4):
        phi = linear_tasks.unflatten(linear_tasks.prox_solution(i, LAM))
        s = linear_loss(phi, linear_tasks.xs[i], linear_tasks.ys[i])
        q = linear_loss(phi, linear_tasks.xq[i], linear_tasks.yq[i])
        torch.testing.assert_close(info["support_loss"][i], s)
        torch.testing.assert_close(info["query_loss"][i], q)


def test_cg_error_falls_with_iterations(linear_tasks):
    expected = linear_tasks.exact_meta_gradient(LAM)
    errors = []
    for iters in (1, 2, 3):
        grads, _ = imaml.meta_gradient(
            linear_loss,
            linear_tasks.theta,
            linear_tasks.support,
            linear_tasks.query,
            lam=LAM,
            inner=INNERS["hf"],
            solver=CG(iters),
        )
        errors.append(float(torch.linalg.norm(flat(grads) - expected)))
    assert errors[0] > errors[1] > errors[2] > 0


def test_adapt_matches_closed_form(linear_tasks):
    phi = imaml.adapt(
        linear_loss, linear_tasks.theta, linear_tasks.support, lam=LAM, inner=INNERS["gd"]
    )
    assert phi["w"].shape == (4, 4) and phi["b"].shape == (4,)
    for i in range(4):
        got = flat({k: v[i] for k, v in phi.items()})
        torch.testing.assert_close(got, linear_tasks.prox_solution(i, LAM), rtol=1e-8, atol=1e-10)


def test_adapt_with_lam_zero_is_plain_descent(linear_tasks):
    phi = imaml.adapt(
        linear_loss, linear_tasks.theta, linear_tasks.support, lam=0.0, inner=GD(7, 0.1)
    )
    for i in range(4):
        expected, _ = linear_tasks.gd_path(i, lr=0.1, steps=7)
        torch.testing.assert_close(flat({k: v[i] for k, v in phi.items()}), expected)


@pytest.mark.parametrize("method", ["imaml", "maml", "fomaml", "reptile"])
def test_batched_equals_mean_of_single_tasks(mlp_problem, method):
    loss_fn, params, (xs, ys, xq, yq) = mlp_problem

    def run(s, q):
        if method == "imaml":
            return imaml.meta_gradient(
                loss_fn, params, s, q, lam=LAM, inner=GD(10, 0.1), solver=CG(5)
            )
        if method == "reptile":
            return imaml.reptile_gradient(loss_fn, params, s, inner=GD(10, 0.1))
        return imaml.maml_gradient(
            loss_fn, params, s, q, inner=GD(5, 0.1), first_order=method == "fomaml"
        )

    batched, info = run((xs, ys), (xq, yq))
    singles = [
        run((xs[i : i + 1], ys[i : i + 1]), (xq[i : i + 1], yq[i : i + 1])) for i in range(3)
    ]
    for name in params:
        mean = torch.stack([g[name] for g, _ in singles]).mean(0)
        torch.testing.assert_close(batched[name], mean, rtol=1e-10, atol=1e-12)
    for key, value in info.items():
        torch.testing.assert_close(value, torch.cat([i[key] for _, i in singles]))


def test_chunked_equals_unchunked(mlp_problem):
    loss_fn, params, (xs, ys, xq, yq) = mlp_problem
    kwargs = dict(lam=LAM, inner=GD(5, 0.1), solver=CG(3))
    full, _ = imaml.meta_gradient(loss_fn, params, (xs, ys), (xq, yq), **kwargs)
    chunked, _ = imaml.meta_gradient(loss_fn, params, (xs, ys), (xq, yq), chunk_size=2, **kwargs)
    for name in params:
        torch.testing.assert_close(full[name], chunked[name])


def test_cache_sized_chunks_change_nothing(mlp_problem, monkeypatch):
    """With a tiny CPU chunk budget the inner loops, the query passes and the solves take
    one task at a time: same meta-gradient and diagnostics."""
    loss_fn, params, (xs, ys, xq, yq) = mlp_problem
    kwargs = dict(lam=LAM, inner=GD(5, 0.1), solver=CG(3))
    whole, info = imaml.meta_gradient(loss_fn, params, (xs, ys), (xq, yq), **kwargs)
    monkeypatch.setattr(_batching, "CPU_CHUNK_ELEMENTS", 1)
    assert _batching.cache_chunk((xs, ys), None) == 1 < xs.shape[0]
    chunked, info_chunked = imaml.meta_gradient(loss_fn, params, (xs, ys), (xq, yq), **kwargs)
    for name in params:
        torch.testing.assert_close(chunked[name], whole[name], rtol=1e-12, atol=1e-14)
    for key in info:
        torch.testing.assert_close(info_chunked[key], info[key], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("krylov", [CG(60, tol=1e-13), MINRES(60, tol=1e-13)], ids=["cg", "minres"])
def test_krylov_solver_converges_to_dense_on_mlp(mlp_problem, krylov):
    loss_fn, params, (xs, ys, xq, yq) = mlp_problem
    kwargs = dict(lam=LAM, inner=HessianFree(steps=8, cg_iters=10))
    dense, info_d = imaml.meta_gradient(
        loss_fn, params, (xs, ys), (xq, yq), solver=Dense(), **kwargs
    )
    approx, info_a = imaml.meta_gradient(
        loss_fn, params, (xs, ys), (xq, yq), solver=krylov, **kwargs
    )
    assert torch.all(info_d["solver_residual"] < 1e-12)
    assert torch.all(info_a["solver_residual"] < 1e-11)
    for name in params:
        torch.testing.assert_close(approx[name], dense[name], rtol=1e-8, atol=1e-10)


def stack_tasks(tasks, vectors: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Flattened per-task parameters -> {name: (B, *shape)}, as imaml.adapt returns them."""
    return {k: torch.stack([tasks.unflatten(v)[k] for v in vectors]) for k in tasks.theta}


def test_implicit_gradient_at_the_exact_solutions_is_the_closed_form(linear_tasks):
    """φ* from a linear solve (an inner loop of the user's own): the exact meta-gradient."""
    phi = stack_tasks(linear_tasks, [linear_tasks.prox_solution(i, LAM) for i in range(4)])
    grads, info = imaml.implicit_gradient(
        linear_loss, linear_tasks.theta, phi, linear_tasks.support, linear_tasks.query,
        lam=LAM, solver=Dense(),
    )  # fmt: skip
    expected = linear_tasks.exact_meta_gradient(LAM)
    torch.testing.assert_close(flat(grads), expected, rtol=1e-10, atol=1e-12)
    assert torch.all(info["inner_grad_norm"] < 1e-12)


def test_implicit_gradient_after_an_inner_loop_that_cannot_be_vmapped(linear_tasks):
    """torch.optim.LBFGS on each task's proximal objective, in a Python loop (the README)."""

    def lbfgs_solution(i: int) -> torch.Tensor:
        phi = {k: v.clone().requires_grad_() for k, v in linear_tasks.theta.items()}
        optimizer = torch.optim.LBFGS(
            phi.values(), max_iter=100, tolerance_grad=1e-13, tolerance_change=0.0,
            line_search_fn="strong_wolfe",
        )  # fmt: skip

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            step = flat(phi) - linear_tasks.theta_vec
            loss = linear_loss(phi, linear_tasks.xs[i], linear_tasks.ys[i]) + LAM / 2 * step @ step
            loss.backward()
            return loss

        optimizer.step(closure)
        return flat(phi).detach()

    solutions = [lbfgs_solution(i) for i in range(4)]
    grads, _ = imaml.implicit_gradient(
        linear_loss, linear_tasks.theta, stack_tasks(linear_tasks, solutions),
        linear_tasks.support, linear_tasks.query, lam=LAM, solver=CG(10),
    )  # fmt: skip
    expected = linear_tasks.exact_meta_gradient(LAM)
    # LBFGS stops ~1e-9 from φ* (it varies with the CPU's kernels: 3.6e-8 relative seen on an
    # AMD EPYC); a wrong meta-gradient would be off by O(1).
    torch.testing.assert_close(flat(grads), expected, rtol=1e-6, atol=1e-8)


def test_implicit_gradient_at_any_phi_solves_at_that_phi(linear_tasks):
    """Away from φ*: g_i = (I + H_i/λ)⁻¹ ∇L_q(φ_i), with φ_i as given, not re-adapted."""
    g = torch.Generator().manual_seed(3)
    vectors = [
        linear_tasks.theta_vec + torch.randn(5, generator=g, dtype=torch.float64) for _ in range(4)
    ]
    _, info = imaml.implicit_gradient(
        linear_loss, linear_tasks.theta, stack_tasks(linear_tasks, vectors), linear_tasks.support,
        linear_tasks.query, lam=LAM, solver=Dense(),
    )  # fmt: skip
    grads = [
        imaml.implicit_gradient(
            linear_loss, linear_tasks.theta, stack_tasks(linear_tasks, [v]),
            (linear_tasks.xs[i : i + 1], linear_tasks.ys[i : i + 1]),
            (linear_tasks.xq[i : i + 1], linear_tasks.yq[i : i + 1]), lam=LAM, solver=Dense(),
        )[0]
        for i, v in enumerate(vectors)
    ]  # fmt: skip
    for i, v in enumerate(vectors):
        h, c = linear_tasks.quadratic(linear_tasks.xs[i], linear_tasks.ys[i])
        eye = torch.eye(5, dtype=h.dtype)
        expected = torch.linalg.solve(eye + h / LAM, linear_tasks.query_grad(i, v))
        torch.testing.assert_close(flat(grads[i]), expected, rtol=1e-10, atol=1e-12)
        inner_grad = h @ v - c + LAM * (v - linear_tasks.theta_vec)
        torch.testing.assert_close(info["inner_grad_norm"][i], inner_grad.norm())


def test_meta_gradient_is_implicit_gradient_at_adapted_params(mlp_problem):
    loss_fn, params, (xs, ys, xq, yq) = mlp_problem
    inner, solver = GD(6, 0.1), CG(4)
    grads, info = imaml.meta_gradient(
        loss_fn, params, (xs, ys), (xq, yq), lam=LAM, inner=inner, solver=solver
    )
    phi = imaml.adapt(loss_fn, params, (xs, ys), lam=LAM, inner=inner)
    again, info_again = imaml.implicit_gradient(
        loss_fn, params, phi, (xs, ys), (xq, yq), lam=LAM, solver=solver
    )
    for name in params:
        torch.testing.assert_close(again[name], grads[name], rtol=0, atol=0)
    assert info_again.keys() == info.keys()
    for key in info:
        torch.testing.assert_close(info_again[key], info[key], rtol=0, atol=0)


def test_works_with_batchnorm_in_batch_statistics_mode():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4, track_running_stats=False),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    ).double()
    loss_fn = imaml.classification_loss(model)
    g = torch.Generator().manual_seed(0)
    xs = torch.randn(2, 6, 1, 8, 8, generator=g, dtype=torch.float64)
    xq = torch.randn(2, 9, 1, 8, 8, generator=g, dtype=torch.float64)
    ys = torch.arange(3).repeat(2).expand(2, 6)
    yq = torch.arange(3).repeat(3).expand(2, 9)
    params = dict(model.named_parameters())
    kwargs = dict(lam=LAM, inner=GD(5, 0.1), has_aux=True)
    grads, info = imaml.meta_gradient(loss_fn, params, (xs, ys), (xq, yq), solver=CG(30), **kwargs)
    dense, _ = imaml.meta_gradient(loss_fn, params, (xs, ys), (xq, yq), solver=Dense(), **kwargs)
    assert info["query_accuracy"].shape == (2,)
    for name in params:
        assert torch.all(torch.isfinite(grads[name]))
        torch.testing.assert_close(grads[name], dense[name], rtol=1e-6, atol=1e-8)


def test_memory_does_not_retain_inner_graph(linear_tasks):
    params = {k: v.clone().requires_grad_() for k, v in linear_tasks.theta.items()}
    grads, info = imaml.meta_gradient(
        linear_loss,
        params,
        linear_tasks.support,
        linear_tasks.query,
        lam=LAM,
        inner=GD(3, 0.1),
        solver=CG(2),
    )
    assert all(g.grad_fn is None and not g.requires_grad for g in grads.values())
    assert all(v.grad_fn is None for v in info.values())


def test_generated_tasks_are_not_degenerate():
    tasks = make_linear_tasks()
    h, _ = tasks.quadratic(tasks.xs[0], tasks.ys[0])
    eig = torch.linalg.eigvalsh(torch.eye(5, dtype=h.dtype) + h / LAM)
    # Neumann(alpha=0.45) above converges when alpha * eig < 2 for every eigenvalue.
    assert eig.max() * 0.45 < 2 and eig.min() > 1


def test_converged_solvers_report_the_dense_extremes():
    # The measurement of issue 26: a 25-parameter tanh MLP (1→8→1), 4 tasks, float64, GD
    # lr 0.15 for 16 steps, λ 2. CG(30) with tol=0 iterates on a residual far below round-off
    # (it once reported minima near 1e-13, the true ones being 0.78-0.90); every solver must
    # report the extreme eigenvalues of I + H/λ, H the full Hessian, batched as per task.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1, 8), nn.Tanh(), nn.Linear(8, 1)).double()
    loss_fn, params = imaml.regression_loss(model), dict(model.named_parameters())
    xs, ys, xq, yq = make_regression_batch(num_tasks=4)
    phi = imaml.adapt(loss_fn, params, (xs, ys), lam=LAM, inner=GD(16, 0.15))

    def system_matrix(i: int) -> torch.Tensor:
        vector, unflatten = tree.flatten({k: v[i] for k, v in phi.items()})
        hessian = torch.func.hessian(lambda v: loss_fn(unflatten(v), xs[i], ys[i]))(vector)
        return torch.eye(vector.numel(), dtype=vector.dtype) + hessian / LAM

    exact = torch.stack([torch.linalg.eigvalsh(system_matrix(i))[[0, -1]] for i in range(4)])
    assert sum(p.numel() for p in params.values()) == 25 and torch.all(exact[:, 0] > 0.5)

    def extremes(solver, tasks=slice(None)):
        _, info = imaml.implicit_gradient(
            loss_fn, params, {k: v[tasks] for k, v in phi.items()}, (xs[tasks], ys[tasks]),
            (xq[tasks], yq[tasks]), lam=LAM, solver=solver,
        )  # fmt: skip
        assert torch.all(info["solver_residual"] < 1e-12)
        return torch.stack([info["solver_min_curvature"], info["solver_max_curvature"]], dim=1)

    for solver in (CG(30), MINRES(30), Dense()):
        batched = extremes(solver)
        torch.testing.assert_close(batched, exact, rtol=1e-10, atol=0)
        if not isinstance(solver, Dense):
            torch.testing.assert_close(extremes(solver, slice(2, 3))[0], batched[2])
