"""imaml._checks: the functional API's input checks, one-line errors before any vmap."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import imaml
from imaml._checks import as_batch, check_lam, check_params, loss_parts, num_tasks, prepare
from imaml.inner import GD
from imaml.solvers import CG
from imaml.testing import linear_loss

LAM = 2.0


def test_check_params_takes_named_parameters_and_detaches():
    model = nn.Linear(3, 2).double()
    theta = check_params(model.named_parameters())
    assert list(theta) == ["weight", "bias"]
    for name, p in model.named_parameters():
        assert theta[name].data_ptr() == p.data_ptr() and not theta[name].requires_grad
    with pytest.raises(ValueError, match="params is empty"):
        check_params({})


@pytest.mark.parametrize(("lam", "allow_zero"), [(2, False), (0.0, True), (1e-3, True)])
def test_check_lam_returns_a_float(lam, allow_zero):
    assert check_lam(lam, allow_zero) == float(lam) and type(check_lam(lam, allow_zero)) is float


def test_check_lam_names_the_allowed_values():
    with pytest.raises(ValueError, match=r"positive finite number or 0, got -1.0"):
        check_lam(-1, allow_zero=True)
    with pytest.raises(ValueError, match=r"positive finite number, got 0.0"):
        check_lam(0)


def test_as_batch_wraps_a_tensor_and_keeps_a_tuple():
    x, y = torch.zeros(2, 3), torch.ones(2)
    assert as_batch(x, "support") == (x,)
    batch = as_batch([x, y], "support")
    assert type(batch) is tuple and batch[0] is x and batch[1] is y
    with pytest.raises(TypeError, match="support must be a tensor or a non-empty tuple"):
        as_batch((x, [1.0]), "support")
    with pytest.raises(TypeError, match="query must be"):
        as_batch((), "query")


def test_num_tasks_is_the_common_dim_0():
    assert num_tasks(support=(torch.zeros(3, 5), torch.zeros(3)), query=(torch.zeros(3, 7),)) == 3
    with pytest.raises(ValueError, match=r"support\[1\] is 0-d"):
        num_tasks(support=(torch.zeros(3, 5), torch.tensor(1.0)))
    with pytest.raises(ValueError, match=r"differ \(support\[0\]: 3, query\[0\]: 2\)"):
        num_tasks(support=(torch.zeros(3, 5),), query=(torch.zeros(2, 5),))


def test_loss_parts_splits_aux_and_checks_the_loss():
    x, y = torch.randn(6, 4, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    params = {"w": torch.ones(4, dtype=torch.float64), "b": torch.tensor(0.5).double()}
    loss_only, with_aux = loss_parts(linear_loss, has_aux=False)
    expected = linear_loss(params, x, y)
    assert torch.equal(loss_only(params, x, y), expected)
    loss, aux = with_aux(params, x, y)
    assert torch.equal(loss, expected) and aux == {}
    _, with_aux = loss_parts(lambda p, x, y: (linear_loss(p, x, y), {"two": 2 * expected}), True)
    assert torch.equal(with_aux(params, x, y)[1]["two"], 2 * expected)


def test_prepare_returns_checked_splits_in_order(linear_tasks):
    theta, splits, _, _ = prepare(
        linear_loss, linear_tasks.theta, False, support=linear_tasks.support, query=linear_tasks.xq
    )
    assert theta.keys() == linear_tasks.theta.keys()
    (xs, ys), (xq,) = splits
    assert xs is linear_tasks.xs and ys is linear_tasks.ys and xq is linear_tasks.xq


class TestBadInput:
    def call(self, tasks, **overrides):
        kwargs = dict(
            loss_fn=linear_loss,
            params=tasks.theta,
            support=tasks.support,
            query=tasks.query,
            lam=LAM,
            inner=GD(2, 0.1),
            solver=CG(2),
        )
        kwargs.update(overrides)
        return imaml.meta_gradient(**kwargs)

    @pytest.mark.parametrize("lam", [0.0, -1.0, float("nan"), float("inf")])
    def test_lam_must_be_positive(self, linear_tasks, lam):
        with pytest.raises(ValueError, match="lam"):
            self.call(linear_tasks, lam=lam)

    def test_task_dimensions_must_agree(self, linear_tasks):
        with pytest.raises(ValueError, match="number of tasks"):
            self.call(linear_tasks, query=(linear_tasks.xq[:3], linear_tasks.yq[:3]))
        with pytest.raises(ValueError, match="number of tasks"):
            self.call(linear_tasks, support=(linear_tasks.xs, linear_tasks.ys[:2]))

    def test_params_must_be_floating_point(self, linear_tasks):
        with pytest.raises(TypeError, match="floating-point"):
            self.call(
                linear_tasks, params={"w": torch.ones(4, dtype=torch.long), "b": torch.tensor(0.0)}
            )
        with pytest.raises(TypeError, match="not a tensor"):
            self.call(linear_tasks, params={"w": [1.0, 2.0], "b": torch.tensor(0.0)})

    def test_loss_must_be_scalar(self, linear_tasks):
        def per_example(params, x, y):
            return (x @ params["w"] + params["b"] - y) ** 2

        with pytest.raises(ValueError, match="scalar"):
            self.call(linear_tasks, loss_fn=per_example)

    def test_aux_must_be_a_dict(self, linear_tasks):
        with pytest.raises(TypeError, match="has_aux"):
            self.call(linear_tasks, has_aux=True)

    def test_negative_lam_in_adapt(self, linear_tasks):
        with pytest.raises(ValueError, match="lam"):
            imaml.adapt(
                linear_loss, linear_tasks.theta, linear_tasks.support, lam=-1.0, inner=GD(1, 0.1)
            )

    def test_phi_must_match_params_and_tasks(self, linear_tasks):
        phi = imaml.adapt(
            linear_loss, linear_tasks.theta, linear_tasks.support, lam=LAM, inner=GD(1, 0.1)
        )

        def call(phi):
            return imaml.implicit_gradient(
                linear_loss, linear_tasks.theta, phi, linear_tasks.support, linear_tasks.query,
                lam=LAM, solver=CG(2),
            )  # fmt: skip

        with pytest.raises(ValueError, match=r"missing \['b'\]"):
            call({"w": phi["w"]})
        with pytest.raises(ValueError, match=r"phi\['w'\] must be a tensor of shape \(4, 4\)"):
            call({"w": phi["w"][:3], "b": phi["b"]})
        with pytest.raises(ValueError, match=r"shape \(4,\).*got \(\)"):
            call({"w": phi["w"], "b": phi["b"][0]})
        with pytest.raises(ValueError, match=r"phi\['b'\] is torch.float32 on cpu, but"):
            call({"w": phi["w"], "b": phi["b"].float()})
