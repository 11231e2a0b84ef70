"""Second-order optimizers as optax transformations.

Each returns an ``optax.GradientTransformationExtraArgs``; ``update`` takes the loss
through keyword arguments (``value_fn``; ``predict_fn`` and ``output_loss_fn`` for
Gauss-Newton curvature) and ignores the ones it does not need, so a trainer can hand
every optimizer the same arguments.  SGD is ``optax.sgd``.

* :func:`newton`: exact (damped) Newton on the mini-batch Hessian.
* :func:`hessian_free`, :func:`gauss_newton`: CG on Hessian / Gauss-Newton products,
  optionally with Levenberg–Marquardt damping (Martens 2010).
* :func:`trust_region`: trust-region Newton, Steihaug–Toint CG or Newton–Lanczos (GLTR).
* :func:`saddle_free_newton`: ``(|H| + λI)⁻¹ g`` on a Lanczos Krylov space (Dauphin et al. 2014).
* :func:`online_parabola`: a parabola fitted online along the momentum direction (Duda 2019).
* The methods the field compares against: :func:`sophia` (a wrapper of
  ``optax.contrib.sophia`` that passes ``value_fn``), :func:`adahessian`,
  :func:`shampoo` and :func:`kfac` (Dense and conv layers, through ``tapped_predict_fn``);
  Adam is ``optax.adam``.
"""

from second_order.optim.base import SecondOrderState, collect_diagnostics
from second_order.optim.diagonal import adahessian, sophia
from second_order.optim.gauss_newton import gauss_newton
from second_order.optim.hessian_free import hessian_free
from second_order.optim.kfac import kfac
from second_order.optim.newton import newton
from second_order.optim.online_parabola import online_parabola
from second_order.optim.saddle_free import saddle_free_newton
from second_order.optim.shampoo import shampoo
from second_order.optim.trust_region import trust_region

__all__ = [
    "newton",
    "hessian_free",
    "gauss_newton",
    "trust_region",
    "saddle_free_newton",
    "online_parabola",
    "sophia",
    "adahessian",
    "shampoo",
    "kfac",
    "SecondOrderState",
    "collect_diagnostics",
]
