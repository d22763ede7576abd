"""imaml._batching: per-task computations vmapped over tasks, against closed forms and loops."""

from __future__ import annotations

import pytest
import torch

from imaml import _batching, tree
from imaml._batching import (
    adapt_task,
    adapt_tasks,
    cache_chunk,
    map_tasks,
    query_gradients,
    support_fit,
    task_mean,
)
from imaml._checks import loss_parts
from imaml.inner import GD
from imaml.testing import linear_loss

LAM = 2.0


def flat(params: dict[str, torch.Tensor]) -> torch.Tensor:
    return tree.flatten(params)[0]


def test_cache_chunk_for_omniglot_query_and_support_sets():
    # 5-way 15-query Omniglot: 75 images of 28x28 and 75 labels a task, 58,875 elements: 4
    # tasks fit in 2^18 = 262,144. 5-way 5-shot support: 25 a task, 13 tasks a chunk.
    query = (torch.zeros(32, 75, 1, 28, 28), torch.zeros(32, 75, dtype=torch.long))
    support = (torch.zeros(32, 25, 1, 28, 28), torch.zeros(32, 25, dtype=torch.long))
    assert cache_chunk(query, None) == 262_144 // (75 * 784 + 75) == 4
    assert cache_chunk(support, None) == 13
    assert cache_chunk(query, 2) == 2  # a smaller chunk_size of the caller wins
    small = (torch.zeros(25, 10, 1), torch.zeros(25, 10, 1))  # sinusoid: one chunk
    assert cache_chunk(small, None) is None and cache_chunk(small, 7) == 7


def test_cache_chunk_reads_the_budget_at_call_time(monkeypatch):
    split = (torch.zeros(6, 10),)
    assert cache_chunk(split, None) is None
    monkeypatch.setattr(_batching, "CPU_CHUNK_ELEMENTS", 25)
    assert cache_chunk(split, None) == 2


def test_task_mean_and_map_tasks():
    per_task = {"w": torch.arange(6.0).reshape(3, 2)}
    assert torch.equal(task_mean(per_task)["w"], torch.tensor([2.0, 3.0]))
    theta = {"w": torch.tensor([1.0, -1.0])}
    x = torch.arange(6.0).reshape(3, 2)
    out = map_tasks(lambda th, s: th["w"] @ s[0], theta, (x,), chunk_size=2)
    assert torch.equal(out, torch.tensor([-1.0, -1.0, -1.0]))


@pytest.mark.parametrize("lam", [0.0, LAM])
def test_adapt_tasks_is_adapt_task_per_task(linear_tasks, lam):
    t = linear_tasks
    loss_only, _ = loss_parts(linear_loss, has_aux=False)
    phi = adapt_tasks(loss_only, t.theta, t.support, lam, GD(4, 0.1), chunk_size=3)
    for i in range(4):
        one = adapt_task(loss_only, t.theta, (t.xs[i], t.ys[i]), lam, GD(4, 0.1))
        torch.testing.assert_close(flat({k: v[i] for k, v in phi.items()}), flat(one))
    if lam == 0.0:  # plain GD on L_s: the closed-form path
        expected, _ = t.gd_path(0, lr=0.1, steps=4)
        torch.testing.assert_close(flat({k: v[0] for k, v in phi.items()}), expected)


def test_query_gradients_and_support_fit_at_phi(linear_tasks):
    t = linear_tasks
    loss_only, with_aux = loss_parts(linear_loss, has_aux=False)
    phi = adapt_tasks(loss_only, t.theta, t.support, LAM, GD(3, 0.1), chunk_size=None)
    grads, q_loss, aux = query_gradients(with_aux, phi, t.query, chunk_size=None)
    s_loss, s_norm = support_fit(loss_only, phi, t.support, chunk_size=None)
    assert aux == {} and q_loss.shape == s_loss.shape == s_norm.shape == (4,)
    for i in range(4):
        phi_i = {k: v[i] for k, v in phi.items()}
        torch.testing.assert_close(
            flat({k: v[i] for k, v in grads.items()}), t.query_grad(i, flat(phi_i))
        )
        torch.testing.assert_close(q_loss[i], linear_loss(phi_i, t.xq[i], t.yq[i]))
        torch.testing.assert_close(s_loss[i], linear_loss(phi_i, t.xs[i], t.ys[i]))
        h, c = t.quadratic(t.xs[i], t.ys[i])
        torch.testing.assert_close(s_norm[i], (h @ flat(phi_i) - c).norm())
