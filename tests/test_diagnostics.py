"""imaml.Diagnostics: the typed record of every gradient function reads as the old dict."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import imaml
from imaml.diagnostics import Diagnostics
from imaml.inner import GD
from imaml.released import released_gradient
from imaml.solvers import CG
from imaml.testing import linear_loss

LAM = 2.0
IMAML_KEYS = [
    "support_loss", "query_loss", "inner_grad_norm", "inner_distance", "inner_stationarity",
    "solver_residual", "solver_min_curvature", "solver_max_curvature", "solver_correction",
]  # fmt: skip
"""The keys, in order, of the dict meta_gradient returned before the record (then query_*)."""
MAML_KEYS = ["support_loss", "query_loss", "inner_grad_norm"]
REPTILE_KEYS = ["support_loss", "inner_grad_norm"]


def loss_with_aux(params, x, y):
    loss = linear_loss(params, x, y)
    return loss, {"mse": 2 * loss}


def producers(tasks):
    """Each producer's name, a call returning ``(grads, info)`` and the keys it returned."""
    s, q, theta = tasks.support, tasks.query, tasks.theta
    phi = imaml.adapt(loss_with_aux, theta, s, lam=LAM, inner=GD(3, 0.1), has_aux=True)
    aux, first_order = dict(has_aux=True), dict(first_order=True)
    return {
        "meta_gradient": (
            lambda: imaml.meta_gradient(
                loss_with_aux, theta, s, q, lam=LAM, inner=GD(3, 0.1), solver=CG(2), **aux
            ),
            [*IMAML_KEYS, "query_mse"],
        ),
        "implicit_gradient": (
            lambda: imaml.implicit_gradient(
                loss_with_aux, theta, phi, s, q, lam=LAM, solver=CG(2), **aux
            ),
            [*IMAML_KEYS, "query_mse"],
        ),
        "maml_gradient": (
            lambda: imaml.maml_gradient(loss_with_aux, theta, s, q, inner=GD(2, 0.1), **aux),
            [*MAML_KEYS, "query_mse"],
        ),
        "fomaml_gradient": (
            lambda: imaml.maml_gradient(linear_loss, theta, s, q, inner=GD(2, 0.1), **first_order),
            MAML_KEYS,
        ),
        "reptile_gradient": (
            lambda: imaml.reptile_gradient(loss_with_aux, theta, s, inner=GD(2, 0.1), **aux),
            REPTILE_KEYS,
        ),
        "released_gradient": (
            lambda: released_gradient(linear_loss, theta, s, q, lam=LAM, steps=2, lr=0.1),
            IMAML_KEYS,
        ),
    }


PRODUCERS = [
    "meta_gradient", "implicit_gradient", "maml_gradient", "fomaml_gradient", "reptile_gradient",
    "released_gradient",
]  # fmt: skip


@pytest.mark.parametrize("name", PRODUCERS)
def test_every_producer_returns_the_record_of_the_old_dict(linear_tasks, name):
    call, keys = producers(linear_tasks)[name]
    _, info = call()
    assert isinstance(info, Diagnostics)
    as_dict = info.to_dict()
    assert type(as_dict) is dict and list(as_dict) == keys == list(info)
    for key in keys:
        value = as_dict[key]
        assert value is info[key]
        assert value.shape == (4,) and value.dtype == torch.float64
        if not key.startswith("query_") or key == "query_loss":
            assert value is getattr(info, key)
    unset = {f.name for f in dataclasses.fields(info)} - set(keys) - {"aux"}
    assert all(getattr(info, field) is None for field in unset)


def test_the_fields_hold_what_their_names_say(linear_tasks):
    _, info = producers(linear_tasks)["meta_gradient"][0]()
    torch.testing.assert_close(info.aux["mse"], 2 * info.query_loss, rtol=0, atol=0)
    expected = info.inner_grad_norm / (LAM * info.inner_distance)
    torch.testing.assert_close(info.inner_stationarity, expected, rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["imaml", "maml", "reptile"])
def test_meta_backward_returns_the_functional_record(linear_tasks, kind):
    model = nn.Linear(4, 1).double()
    metrics = {"mae": lambda out, y: (out.squeeze(-1) - y).abs().mean()}
    common = dict(inner=GD(2, 0.1), metrics=metrics)
    learners = {
        "imaml": lambda: imaml.IMAML(model, mse, lam=LAM, solver=CG(2), **common),
        "maml": lambda: imaml.MAML(model, mse, **common),
        "reptile": lambda: imaml.Reptile(model, mse, **common),
    }
    info = learners[kind]().meta_backward(linear_tasks.support, linear_tasks.query)
    keys = {"imaml": IMAML_KEYS, "maml": MAML_KEYS, "reptile": REPTILE_KEYS}[kind]
    assert isinstance(info, Diagnostics)
    assert list(info) == keys + ([] if kind == "reptile" else ["query_mae"])


def mse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(out.squeeze(-1), y)


class TestMapping:
    def record(self) -> Diagnostics:
        t = torch.arange(3.0)
        return Diagnostics(support_loss=t, inner_grad_norm=t + 1, aux={"accuracy": t + 2})

    def test_reads_as_a_read_only_mapping(self):
        info = self.record()
        assert isinstance(info, Mapping)
        assert list(info.keys()) == ["support_loss", "inner_grad_norm", "query_accuracy"]
        assert len(info) == 3 and "query_accuracy" in info and "query_loss" not in info
        assert info["query_accuracy"] is info.aux["accuracy"]
        assert info.get("query_loss") is None
        assert info.get("query_loss", info["support_loss"]) is info.support_loss
        assert dict(info) == info.to_dict() and {**info}.keys() == info.keys()
        assert [k for k, _ in info.items()] == list(info)
        with pytest.raises(KeyError, match="solver_residual"):
            info["solver_residual"]
        with pytest.raises(KeyError):
            info["accuracy"]  # aux entries read with their query_ prefix

    def test_is_immutable(self):
        info = self.record()
        with pytest.raises(dataclasses.FrozenInstanceError):
            info.query_loss = torch.zeros(3)  # type: ignore[misc]
        with pytest.raises(TypeError):
            info["query_loss"] = torch.zeros(3)  # type: ignore[index]

    def test_an_aux_entry_named_loss_replaces_query_loss_as_before(self):
        t = torch.arange(2.0)
        info = Diagnostics(support_loss=t, query_loss=t + 1, aux={"loss": t + 5})
        assert list(info) == ["support_loss", "query_loss"]
        assert info["query_loss"] is info.aux["loss"]

    def test_exported_at_top_level(self):
        assert imaml.Diagnostics is Diagnostics and "Diagnostics" in imaml.__all__
