"""imaml.tree against plain tensor arithmetic on the flattened trees, in float64."""

from __future__ import annotations

import pytest
import torch
from torch.func import vmap

from imaml import tree


def random_tree(seed: int, batch: tuple[int, ...] = ()) -> dict[str, torch.Tensor]:
    """Three leaves of different ranks (a matrix, a vector, a scalar), optionally batched."""
    g = torch.Generator().manual_seed(seed)
    shapes = {"w": (3, 2), "b": (4,), "s": ()}
    return {
        k: torch.randn((*batch, *s), generator=g, dtype=torch.float64) for k, s in shapes.items()
    }


def flat(a: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([v.reshape(-1) for v in a.values()])


def test_leafwise_arithmetic_is_vector_arithmetic() -> None:
    a, b = random_tree(0), random_tree(1)
    s = torch.tensor(-0.7, dtype=torch.float64)
    x, y = flat(a), flat(b)
    assert torch.equal(flat(tree.add(a, b)), x + y)
    assert torch.equal(flat(tree.sub(a, b)), x - y)
    assert torch.equal(flat(tree.scale(a, 2.5)), 2.5 * x)
    assert torch.equal(flat(tree.scale(a, s)), s * x)
    torch.testing.assert_close(flat(tree.axpy(2.5, a, b)), 2.5 * x + y, rtol=1e-15, atol=0)
    torch.testing.assert_close(flat(tree.axpy(s, a, b)), s * x + y, rtol=1e-15, atol=0)
    assert torch.equal(flat(tree.map_(torch.maximum, a, b)), torch.maximum(x, y))
    assert torch.equal(flat(tree.zeros_like(a)), torch.zeros_like(x))
    for name, leaf in tree.zeros_like(a).items():
        assert leaf.shape == a[name].shape and leaf.dtype == torch.float64


def test_reductions_are_0d_tensors_of_the_flat_vectors() -> None:
    a, b = random_tree(0), random_tree(1)
    dot, norm = tree.dot(a, b), tree.norm(a)
    assert dot.shape == () and norm.shape == ()
    torch.testing.assert_close(dot, flat(a) @ flat(b), rtol=1e-14, atol=0)
    torch.testing.assert_close(norm, torch.linalg.vector_norm(flat(a)), rtol=1e-14, atol=0)


def test_where_picks_a_whole_tree() -> None:
    a, b = random_tree(0), random_tree(1)
    assert torch.equal(flat(tree.where(torch.tensor(True), a, b)), flat(a))
    assert torch.equal(flat(tree.where(torch.tensor(False), a, b)), flat(b))


def test_functions_batch_under_vmap_as_row_by_row() -> None:
    a, b = random_tree(0, batch=(5,)), random_tree(1, batch=(5,))
    rows = [({k: v[i] for k, v in a.items()}, {k: v[i] for k, v in b.items()}) for i in range(5)]
    dots = vmap(tree.dot)(a, b)
    cond = dots > 0
    picked = vmap(tree.where)(cond, a, b)
    for i, (ai, bi) in enumerate(rows):
        assert torch.equal(dots[i], tree.dot(ai, bi))
        assert torch.equal(vmap(tree.norm)(a)[i], tree.norm(ai))
        assert torch.equal(flat({k: v[i] for k, v in picked.items()}), flat(ai if cond[i] else bi))


def test_flatten_orders_leaves_as_the_dict_and_inverts() -> None:
    a = random_tree(0)
    vec, unflatten = tree.flatten(a)
    assert vec.shape == (3 * 2 + 4 + 1,)
    assert torch.equal(vec, flat(a))
    back = unflatten(2 * vec)
    assert list(back) == list(a)
    for name, leaf in a.items():
        assert torch.equal(back[name], 2 * leaf)


def test_detach_cuts_the_graph_and_keeps_the_values() -> None:
    a = {k: v.requires_grad_() for k, v in random_tree(0).items()}
    out = tree.detach(tree.scale(a, 3.0))
    assert not any(v.requires_grad for v in out.values())
    assert torch.equal(flat(out), 3 * flat(a).detach())


@pytest.mark.parametrize("s", [0.0, 1.0])
def test_axpy_with_scalar_zero_and_one(s: float) -> None:
    a, b = random_tree(0), random_tree(1)
    assert torch.equal(flat(tree.axpy(s, a, b)), s * flat(a) + flat(b))
