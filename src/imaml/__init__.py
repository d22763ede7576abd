"""imaml: meta-learning with implicit gradients (Rajeswaran et al., NeurIPS 2019).

The meta-gradient of a whole meta-batch of tasks in one batched ``torch.func`` computation,
with swappable inner optimizers (:mod:`imaml.inner`) and linear solvers (:mod:`imaml.solvers`),
and MAML, first-order MAML and Reptile on the same footing (:mod:`imaml.baselines`).

Model-level API (:mod:`imaml.learner`): :class:`IMAML`, :class:`MAML` and :class:`Reptile` wrap
an ``nn.Module`` and fill its ``.grad`` with the meta-gradient. Functional API underneath:
:func:`meta_gradient`, :func:`implicit_gradient`, :func:`adapt`, :func:`maml_gradient`,
:func:`reptile_gradient`. Data sets in :mod:`imaml.data`, networks in :mod:`imaml.models`.
"""

from imaml import data, inner, models, solvers, tree
from imaml.baselines import maml_gradient, reptile_gradient
from imaml.diagnostics import Diagnostics
from imaml.implicit import adapt, implicit_gradient, meta_gradient
from imaml.inner import GD, Adam, HessianFree
from imaml.learner import IMAML, MAML, AdaptedModel, MetaLearner, Reptile
from imaml.losses import classification_loss, regression_loss
from imaml.objective import Objective
from imaml.solvers import CG, MINRES, Dense, Neumann
from imaml.zoo import pretrained

__version__ = "1.0.0"

__all__ = [
    "CG",
    "GD",
    "IMAML",
    "MAML",
    "MINRES",
    "Adam",
    "AdaptedModel",
    "Dense",
    "Diagnostics",
    "HessianFree",
    "MetaLearner",
    "Neumann",
    "Objective",
    "Reptile",
    "__version__",
    "adapt",
    "classification_loss",
    "data",
    "implicit_gradient",
    "inner",
    "maml_gradient",
    "meta_gradient",
    "models",
    "pretrained",
    "regression_loss",
    "reptile_gradient",
    "solvers",
    "tree",
]
