"""MAML, first-order MAML and Reptile against their own closed forms and finite differences."""

from __future__ import annotations

import pytest
import torch

import imaml
from imaml import _batching, tree
from imaml.inner import GD, Adam
from imaml.testing import linear_loss, make_regression_batch

LR, STEPS = 0.1, 6


def flat(params):
    return tree.flatten(params)[0]


def test_maml_matches_closed_form(linear_tasks):
    grads, info = imaml.maml_gradient(
        linear_loss,
        linear_tasks.theta,
        linear_tasks.support,
        linear_tasks.query,
        inner=GD(STEPS, LR),
    )
    expected = []
    for i in range(4):
        phi, jac = linear_tasks.gd_path(i, LR, STEPS)
        expected.append(jac.T @ linear_tasks.query_grad(i, phi))
    torch.testing.assert_close(flat(grads), torch.stack(expected).mean(0), rtol=1e-10, atol=1e-12)
    assert info["query_loss"].shape == (4,)


def test_first_order_maml_matches_closed_form(linear_tasks):
    grads, _ = imaml.maml_gradient(
        linear_loss,
        linear_tasks.theta,
        linear_tasks.support,
        linear_tasks.query,
        inner=GD(STEPS, LR),
        first_order=True,
    )
    expected = [linear_tasks.query_grad(i, linear_tasks.gd_path(i, LR, STEPS)[0]) for i in range(4)]
    torch.testing.assert_close(flat(grads), torch.stack(expected).mean(0), rtol=1e-10, atol=1e-12)


def test_first_order_and_full_maml_differ(linear_tasks):
    args = (linear_loss, linear_tasks.theta, linear_tasks.support, linear_tasks.query)
    full, _ = imaml.maml_gradient(*args, inner=GD(STEPS, LR))
    first, _ = imaml.maml_gradient(*args, inner=GD(STEPS, LR), first_order=True)
    assert torch.linalg.norm(flat(full) - flat(first)) > 1e-3


def test_reptile_matches_closed_form(linear_tasks):
    grads, info = imaml.reptile_gradient(
        linear_loss, linear_tasks.theta, linear_tasks.support, inner=GD(STEPS, LR)
    )
    expected = [linear_tasks.theta_vec - linear_tasks.gd_path(i, LR, STEPS)[0] for i in range(4)]
    torch.testing.assert_close(flat(grads), torch.stack(expected).mean(0), rtol=1e-10, atol=1e-12)
    for i in range(4):
        phi = linear_tasks.unflatten(linear_tasks.gd_path(i, LR, STEPS)[0])
        torch.testing.assert_close(
            info["support_loss"][i], linear_loss(phi, linear_tasks.xs[i], linear_tasks.ys[i])
        )


@pytest.mark.parametrize("inner", [GD(4, 0.05), Adam(4, 0.01)], ids=["gd", "adam"])
def test_maml_matches_finite_differences_on_mlp(mlp_problem, inner):
    loss_fn, params, (xs, ys, xq, yq) = mlp_problem
    theta = tree.detach(params)
    grads, _ = imaml.maml_gradient(loss_fn, theta, (xs, ys), (xq, yq), inner=inner)

    assert_matches_finite_differences(loss_fn, theta, (xs, ys, xq, yq), inner, grads, seed=3)


@pytest.mark.parametrize("first_order", [False, True], ids=["maml", "fomaml"])
def test_cache_sized_chunks_of_tasks_change_nothing(mlp_problem, monkeypatch, first_order):
    """With a tiny CPU chunk budget the tasks go through one at a time: same results."""
    loss_fn, params, (xs, ys, xq, yq) = mlp_problem

    def run():
        return imaml.maml_gradient(
            loss_fn, params, (xs, ys), (xq, yq), inner=GD(3, 0.1), first_order=first_order
        )

    whole, info = run()
    monkeypatch.setattr(_batching, "CPU_CHUNK_ELEMENTS", 1)
    assert _batching.cache_chunk((xq, yq), None) == 1 < xq.shape[0]
    chunked, info_chunked = run()
    for name in params:
        torch.testing.assert_close(chunked[name], whole[name], rtol=1e-12, atol=1e-14)
    for key in info:
        torch.testing.assert_close(info_chunked[key], info[key], rtol=1e-12, atol=1e-14)


def test_maml_through_adam_with_a_dead_relu_unit_is_finite():
    """A dead ReLU unit has exactly-zero gradients, so Adam's second moment is 0 there: the
    derivative of its square root must not turn MAML's meta-gradient into NaN."""
    torch.manual_seed(0)
    model = imaml.models.MLP(1, 1, hidden=(8,)).double()
    loss_fn = imaml.regression_loss(model)
    xs, ys, xq, yq = make_regression_batch()
    theta = tree.detach(dict(model.named_parameters()))
    theta["net.0.bias"] = theta["net.0.bias"].clone()
    theta["net.0.bias"][0] = -1e3  # unit 0 never fires on these inputs
    inner = Adam(3, 0.01)
    grads, _ = imaml.maml_gradient(loss_fn, theta, (xs, ys), (xq, yq), inner=inner)
    assert all(torch.isfinite(g).all() for g in grads.values())
    assert grads["net.0.bias"][0] == 0 and torch.all(grads["net.0.weight"][0] == 0)

    assert_matches_finite_differences(loss_fn, theta, (xs, ys, xq, yq), inner, grads, seed=4)


def assert_matches_finite_differences(loss_fn, theta, batch, inner, grads, seed):
    """MAML's meta-gradient ``grads`` along a random direction equals the central finite
    difference of the mean post-adaptation query loss (float64)."""
    xs, ys, xq, yq = batch

    def meta_loss(th):
        phi = imaml.adapt(loss_fn, th, (xs, ys), lam=0.0, inner=inner)
        losses = [loss_fn({k: v[i] for k, v in phi.items()}, xq[i], yq[i]) for i in range(3)]
        return torch.stack(losses).mean()

    g = torch.Generator().manual_seed(seed)
    v = {k: torch.randn(p.shape, generator=g, dtype=p.dtype) for k, p in theta.items()}
    eps = 1e-6
    fd = (meta_loss(tree.axpy(eps, v, theta)) - meta_loss(tree.axpy(-eps, v, theta))) / (2 * eps)
    torch.testing.assert_close(tree.dot(grads, v), fd, rtol=1e-6, atol=1e-9)
