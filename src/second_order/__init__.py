"""second_order: second-order optimizers for JAX as optax transformations.

Submodules: :mod:`second_order.curvature` (Hessian-, GGN-vector products, dense
Hessian), :mod:`second_order.solvers` (conjugate gradient, damped dense solve),
:mod:`second_order.optim` (``newton``, ``hessian_free``, ``gauss_newton``).  The
experiment suite (data, model, trainer) lives beside them and is not needed to use
the optimizers.
"""

__version__ = "0.1.0"
