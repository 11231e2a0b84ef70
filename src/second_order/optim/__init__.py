"""Second-order optimizers as optax transformations.

Each returns an ``optax.GradientTransformationExtraArgs``; ``update`` takes the loss
through keyword arguments (``value_fn`` for :func:`newton` and :func:`hessian_free`,
``predict_fn`` and ``output_loss_fn`` for :func:`gauss_newton`) and ignores the ones
it does not need, so a trainer can hand every optimizer the same arguments.  SGD is
``optax.sgd``.
"""

from second_order.optim.base import SecondOrderState, collect_diagnostics
from second_order.optim.gauss_newton import gauss_newton
from second_order.optim.hessian_free import hessian_free
from second_order.optim.newton import newton

__all__ = ["newton", "hessian_free", "gauss_newton", "SecondOrderState", "collect_diagnostics"]
