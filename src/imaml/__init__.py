"""imaml: meta-learning with implicit gradients (Rajeswaran et al., NeurIPS 2019).

The meta-gradient of a whole meta-batch of tasks in one batched ``torch.func`` computation,
with swappable inner optimizers (:mod:`imaml.inner`) and linear solvers (:mod:`imaml.solvers`),
and MAML, first-order MAML and Reptile on the same footing (:mod:`imaml.baselines`).
"""

from imaml import inner, solvers, tree
from imaml.baselines import maml_gradient, reptile_gradient
from imaml.implicit import adapt, implicit_gradient, meta_gradient
from imaml.losses import classification_loss, regression_loss
from imaml.objective import Objective

__version__ = "0.1.0"

__all__ = [
    "Objective",
    "__version__",
    "adapt",
    "classification_loss",
    "implicit_gradient",
    "inner",
    "maml_gradient",
    "meta_gradient",
    "regression_loss",
    "reptile_gradient",
    "solvers",
    "tree",
]
