"""Linear solvers on explicit matrices: exactness, masking, residuals, and batching."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch.func import vmap

from imaml import tree
from imaml.solvers import (
    CG,
    MINRES,
    Dense,
    Neumann,
    conjugate_gradient,
    dense_matrix,
    lanczos_extremes,
    minres,
    smallest_tridiagonal_eigenvalue,
)


def spd(n: int, seed: int, cond: float = 10.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    return q @ torch.diag(torch.linspace(1.0, cond, n, dtype=torch.float64)) @ q.T


def as_tree(vec):
    return {"a": vec[:3], "b": vec[3:].reshape(-1, 1)}


def matvec_of(a):
    return lambda v: as_tree(a @ tree.flatten(v)[0])


@pytest.fixture
def system():
    a = spd(6, 0)
    b = torch.linspace(-1, 2, 6, dtype=torch.float64)
    return a, b, torch.linalg.solve(a, b)


@pytest.mark.parametrize(
    "solver",
    [CG(6), CG(50, tol=1e-12), MINRES(6), MINRES(50, tol=1e-12), Neumann(400, alpha=0.15), Dense()],
    ids=["cg-exact", "cg-tol", "minres-exact", "minres-tol", "neumann", "dense"],
)
def test_solver_is_exact_and_reports_true_residual(system, solver):
    a, b, x_true = system
    x, residual, *_ = solver(matvec_of(a), as_tree(b))
    x = tree.flatten(x)[0]
    torch.testing.assert_close(x, x_true, rtol=1e-9, atol=1e-10)
    true_residual = torch.linalg.norm(a @ x - b) / torch.linalg.norm(b)
    assert residual < 1e-9
    torch.testing.assert_close(residual, true_residual, rtol=1e-2, atol=1e-12)


def test_truncated_solvers_report_their_residual(system):
    a, b, _ = system
    for solver in (CG(2), MINRES(2), Neumann(5, alpha=0.15)):
        x, residual, *_ = solver(matvec_of(a), as_tree(b))
        x = tree.flatten(x)[0]
        true_residual = torch.linalg.norm(a @ x - b) / torch.linalg.norm(b)
        assert residual > 1e-3
        torch.testing.assert_close(residual, true_residual, rtol=1e-8, atol=0)


def test_neumann_is_the_truncated_series(system):
    a, b, _ = system
    alpha, k = 0.1, 7
    m = torch.eye(6, dtype=torch.float64) - alpha * a
    expected = alpha * sum(torch.linalg.matrix_power(m, j) @ b for j in range(k))
    x = Neumann(k, alpha)(matvec_of(a), as_tree(b)).x
    torch.testing.assert_close(tree.flatten(x)[0], expected)


def test_converged_cg_keeps_its_solution(system):
    a, b, x_true = system
    # Far more iterations than needed: masked updates must not divide by a zero residual.
    for solver in (CG(200), MINRES(200)):
        x = solver(matvec_of(a), as_tree(b)).x
        x = tree.flatten(x)[0]
        assert torch.all(torch.isfinite(x))
        torch.testing.assert_close(x, x_true, rtol=1e-9, atol=1e-10)


def test_zero_right_hand_side_gives_zero():
    a = spd(6, 1)
    for solver in (CG(3), MINRES(3), Neumann(3, 0.1), Dense()):
        x, residual, *_ = solver(matvec_of(a), as_tree(torch.zeros(6, dtype=torch.float64)))
        assert torch.all(tree.flatten(x)[0] == 0) and residual == 0


def test_cg_error_falls_geometrically():
    a = spd(40, 2, cond=20.0)
    b = torch.ones(40, dtype=torch.float64)
    x_true = torch.linalg.solve(a, b)
    matvec = lambda v: {"v": a @ v["v"]}  # noqa: E731
    errors = [
        torch.linalg.norm(conjugate_gradient(matvec, {"v": b}, k).x["v"] - x_true)
        for k in (2, 6, 10, 14)
    ]
    assert all(e2 < 0.3 * e1 for e1, e2 in itertools.pairwise(errors))


def test_solvers_batch_under_vmap():
    mats = torch.stack([spd(6, s) for s in range(3)])
    rhs = torch.randn(3, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for solver in (CG(6), MINRES(6), Dense()):

        def solve(m, r, solver=solver):
            return solver(matvec_of(m), as_tree(r))

        xs, res, smallest, largest = vmap(solve)(mats, rhs)
        for i in range(3):
            got = tree.flatten({k: v[i] for k, v in xs.items()})[0]
            torch.testing.assert_close(got, torch.linalg.solve(mats[i], rhs[i]))
            eigenvalues = torch.linalg.eigvalsh(mats[i])
            torch.testing.assert_close(smallest[i], eigenvalues[0])
            torch.testing.assert_close(largest[i], eigenvalues[-1])
        assert res.shape == (3,)


def test_negative_curvature_stop_returns_a_descent_direction():
    a = torch.diag(torch.tensor([2.0, -1.0], dtype=torch.float64))
    b = torch.tensor([1.0, 1.0], dtype=torch.float64)
    matvec = lambda v: {"v": a @ v["v"]}  # noqa: E731
    x = conjugate_gradient(matvec, {"v": b}, 5, stop_on_negative_curvature=True).x["v"]
    assert torch.all(torch.isfinite(x)) and x @ b > 0


def symmetric_indefinite(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    eigenvalues = torch.linspace(-3.0, 10.0, n, dtype=torch.float64)
    eigenvalues[n // 3] = 0.3  # none near zero: a well-posed, indefinite system
    return q @ torch.diag(eigenvalues) @ q.T


def indefinite_system(n: int = 9):
    """``(A, b, matvec)`` of an n×n symmetric indefinite system."""
    a = symmetric_indefinite(n, 4)
    b = torch.randn(n, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    return a, b, lambda v: {"v": a @ v["v"]}


def krylov_bases(a: torch.Tensor, b: torch.Tensor):
    """``(k, Q_k)`` for k = 1 … n: an orthonormal basis of span{b, Ab, …, A^(k−1) b}."""
    krylov = [b]
    for k in range(1, b.numel() + 1):
        yield k, torch.linalg.qr(torch.stack(krylov, dim=1))[0]
        krylov.append(a @ krylov[-1])


def test_minres_minimizes_the_residual_over_the_krylov_space():
    a, b, matvec = indefinite_system()
    previous = 1.0
    for k, basis in krylov_bases(a, b):
        x, residual, *_ = minres(matvec, {"v": b}, k)
        # The least-squares minimizer of ‖b − A x‖ over x in the Krylov space.
        coef = torch.linalg.lstsq(a @ basis, b).solution
        best = torch.linalg.norm(a @ basis @ coef - b) / torch.linalg.norm(b)
        true = torch.linalg.norm(a @ x["v"] - b) / torch.linalg.norm(b)
        torch.testing.assert_close(true, best, rtol=1e-7, atol=1e-12)
        torch.testing.assert_close(residual, true, rtol=1e-7, atol=1e-12)
        assert residual <= previous + 1e-12
        previous = residual
    torch.testing.assert_close(x["v"], torch.linalg.solve(a, b), rtol=1e-8, atol=1e-10)


def test_cg_residual_can_exceed_one_where_minres_cannot():
    _, b, matvec = indefinite_system()
    cg = [float(conjugate_gradient(matvec, {"v": b}, k).residual) for k in range(1, 9)]
    mr = [float(minres(matvec, {"v": b}, k).residual) for k in range(1, 9)]
    assert max(cg) > 1.0 and max(mr) <= 1.0


def test_dense_matrix_recovers_the_operator():
    a = spd(6, 3)
    torch.testing.assert_close(
        dense_matrix(matvec_of(a), as_tree(torch.zeros(6, dtype=torch.float64))), a
    )


@pytest.mark.parametrize(
    "make",
    [
        lambda: CG(0),
        lambda: CG(2, tol=-1.0),
        lambda: MINRES(0),
        lambda: MINRES(2, tol=-1.0),
        lambda: Neumann(3, 0.0),
    ],
)
def test_bad_settings_are_rejected(make):
    with pytest.raises(ValueError):
        make()


def test_negative_curvature_stop_is_final():
    # p0 = b has positive curvature; the second direction has negative curvature. After the
    # stop, later iterations must not restart from the residual and move x again.
    a = torch.diag(torch.tensor([3.0, -1.0, 2.0, 5.0], dtype=torch.float64))
    b = torch.ones(4, dtype=torch.float64)
    matvec = lambda v: {"v": a @ v["v"]}  # noqa: E731
    first = conjugate_gradient(matvec, {"v": b}, 1, stop_on_negative_curvature=True)
    r1 = b - a @ first.x["v"]
    p1 = r1 + (r1 @ r1) / (b @ b) * b
    assert b @ a @ b > 0 and p1 @ a @ p1 < 0  # one step taken, then negative curvature
    for iters in (2, 3, 10):
        later = conjugate_gradient(matvec, {"v": b}, iters, stop_on_negative_curvature=True)
        torch.testing.assert_close(later.x["v"], first.x["v"], rtol=0, atol=0)
        torch.testing.assert_close(later.residual, first.residual, rtol=0, atol=0)


def test_curvatures_are_the_extreme_ritz_values():
    # CG and MINRES build the same Krylov space, so both report the smallest and largest
    # eigenvalues of A projected on it (Qᵀ A Q), which reach λ_min(A) and λ_max(A) after n
    # iterations; Dense is exact.
    a, b, matvec = indefinite_system()
    for k, basis in krylov_bases(a, b):
        ritz = torch.linalg.eigvalsh(basis.T @ a @ basis)
        for solve in (conjugate_gradient, minres):
            got = solve(matvec, {"v": b}, k)
            torch.testing.assert_close(got.min_curvature, ritz[0], rtol=1e-6, atol=1e-8)
            torch.testing.assert_close(got.max_curvature, ritz[-1], rtol=1e-6, atol=1e-8)
    exact = torch.linalg.eigvalsh(a)
    assert exact[0] < 0 < exact[-1]
    torch.testing.assert_close(ritz[[0, -1]], exact[[0, -1]])
    dense = Dense()(matvec, {"v": b})
    torch.testing.assert_close(
        torch.stack([dense.min_curvature, dense.max_curvature]), exact[[0, -1]]
    )


def test_min_curvature_ignores_iterations_after_a_stop():
    a = spd(6, 0)  # λ_min = 1
    b = torch.linspace(-1, 2, 6, dtype=torch.float64)
    largest = torch.linalg.eigvalsh(a)[-1]
    for solver in (CG(200, tol=1e-10), MINRES(200, tol=1e-10)):
        solution = solver(matvec_of(a), as_tree(b))
        torch.testing.assert_close(solution.min_curvature, torch.tensor(1.0, dtype=a.dtype))
        torch.testing.assert_close(solution.max_curvature, largest)
        nothing = solver(matvec_of(a), as_tree(torch.zeros_like(b)))
        assert torch.isnan(nothing.min_curvature) and torch.isnan(nothing.max_curvature)
    neumann = Neumann(3, 0.1)(matvec_of(a), as_tree(b))
    assert neumann.min_curvature is None and neumann.max_curvature is None


def test_smallest_tridiagonal_eigenvalue_matches_eigvalsh():
    g = torch.Generator().manual_seed(0)
    for k in range(1, 10):
        diagonal = 3 * torch.randn(3, k, dtype=torch.float64, generator=g)
        upper = torch.randn(3, k - 1, dtype=torch.float64, generator=g)
        got = vmap(smallest_tridiagonal_eigenvalue)(diagonal, upper)
        for i in range(3):
            t = torch.diag(diagonal[i]) + torch.diag(upper[i], 1) + torch.diag(upper[i], -1)
            torch.testing.assert_close(got[i], torch.linalg.eigvalsh(t)[0], rtol=0, atol=1e-9)


@pytest.mark.parametrize("scale", [1e-6, 1.0, 1e6])
def test_converged_krylov_solvers_report_the_exact_extremes(scale):
    # 60 iterations on a 6×6 system, with tol=0: CG's ‖r‖² falls far below 1e-30 (where a
    # clamp once shrank its Lanczos entries: a reported minimum of ~1e-13); MINRES's Krylov
    # space is exhausted after 6 iterations.
    a = spd(6, 0)
    b = scale * torch.linspace(-1, 2, 6, dtype=torch.float64)
    exact = torch.linalg.eigvalsh(a)[[0, -1]]
    for solver in (CG(60), MINRES(60)):
        solution = solver(matvec_of(a), as_tree(b))
        assert solution.residual < 1e-12
        got = torch.stack([solution.min_curvature, solution.max_curvature])
        torch.testing.assert_close(got, exact, rtol=1e-11, atol=0)


def test_minres_does_not_depend_on_the_scale_of_b():
    # In float32 an exhaustion test relative to ‖b‖ instead of ‖A‖ stopped this solve after
    # one iteration at ‖b‖ = 1e8.
    a = spd(6, 0).float()
    b = torch.linspace(-1, 2, 6)
    small, large = (minres(matvec_of(a), as_tree(s * b), 6) for s in (1.0, 1e8))
    torch.testing.assert_close(tree.flatten(large.x)[0] / 1e8, tree.flatten(small.x)[0])
    for got in (small, large):
        torch.testing.assert_close(got.residual, small.residual, rtol=0, atol=1e-5)
        torch.testing.assert_close(
            torch.stack([got.min_curvature, got.max_curvature]),
            torch.linalg.eigvalsh(a)[[0, -1]],
        )


def test_cg_iterates_are_the_galerkin_solutions():
    # x_k solves the system projected on the Krylov space, Qᵀ A Q y = Qᵀ b, x_k = Q y (even
    # for an indefinite A, barring breakdown): CG's iterates and residuals are unchanged by
    # where its Lanczos matrix stops.
    a, b, matvec = indefinite_system()
    for k, basis in krylov_bases(a, b):
        expected = basis @ torch.linalg.solve(basis.T @ a @ basis, basis.T @ b)
        got = conjugate_gradient(matvec, {"v": b}, k)
        torch.testing.assert_close(got.x["v"], expected, rtol=1e-8, atol=1e-10)
        true = torch.linalg.norm(a @ got.x["v"] - b) / torch.linalg.norm(b)
        torch.testing.assert_close(got.residual, true, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("kind", ["spd", "indefinite"])
def test_lanczos_extremes_bound_and_reach_the_extreme_eigenvalues(kind):
    # Inside [λ_min, λ_max] after k < n steps, equal to eigvalsh's extremes after n; under vmap.
    a = spd(6, 0) if kind == "spd" else symmetric_indefinite(6, 4)
    b = torch.linspace(-1, 2, 6, dtype=torch.float64)
    exact = torch.linalg.eigvalsh(a)
    assert (exact[0] < 0) == (kind == "indefinite")
    for k in range(1, 6):
        low, high = lanczos_extremes(matvec_of(a), as_tree(b), k)
        assert exact[0] - 1e-12 <= low <= high <= exact[-1] + 1e-12
    got = torch.stack(lanczos_extremes(matvec_of(a), as_tree(b), 6))
    torch.testing.assert_close(got, exact[[0, -1]], rtol=1e-10, atol=1e-10)
    batched = vmap(lambda v: torch.stack(lanczos_extremes(matvec_of(a), as_tree(v), 6)))
    torch.testing.assert_close(batched(torch.stack([b, -2 * b])), got.expand(2, 2))
