"""imaml.types: one home for the aliases; the former names elsewhere are the same objects."""

from __future__ import annotations

import typing

import imaml
from imaml import implicit, learner, objective, tree, types


def test_former_names_are_the_aliases_of_imaml_types():
    assert tree.Params is types.Params
    assert implicit.ParamsLike is types.ParamsLike and implicit.SplitLike is types.SplitLike
    assert objective.LossFn is types.ParamsLoss and objective.HvpFn is types.MatVec
    assert learner.LossFn is types.OutputLoss and learner.Pair is types.Pair


def test_the_functional_api_is_annotated_with_them():
    hints = typing.get_type_hints(imaml.meta_gradient)
    assert hints["params"] == types.ParamsLike and hints["support"] == types.SplitLike
    assert hints["loss_fn"] == types.TaskLoss
    assert hints["return"] == tuple[types.Params, imaml.Diagnostics]
