"""The order structure of the constrained metric: which way feasibility lies.

The trade-off being searched is usually monotone: more density, more accuracy
and more bytes. The oracle's `monotone` option says what is known:

- `True` (default): monotone in every ordered hyperparameter, nearer
  feasibility where the cost is higher; each direction is read from the cost's
  trend over the trials (cheap and exactly measured).
- `False`: no structure assumed.
- a dict from hyperparameter name to +1 (the metric rises with it, like
  density) or -1 (it falls, like sparsity); names left out have no known order.

Directions here are per coordinate of the unit cube (`encoding.Space`): +1
where feasibility grows with it, -1 where it shrinks, 0 where it has no known
order. Only a one-sided constraint (a floor or a ceiling) has a direction.
"""

import numpy as np


def check_monotone(monotone):
    """Validates the oracle's `monotone` argument.

    Args:
        monotone: `True`, `False`, or a dict from name to +1, -1 or 0.

    Raises:
        TypeError: if `monotone` is neither a bool nor a dict.
        ValueError: if the dict holds a direction other than +1, -1 or 0.
    """
    if isinstance(monotone, bool):
        return
    if not isinstance(monotone, dict):
        raise TypeError(
            "`monotone` must be True, False, or a dict from hyperparameter name to +1 "
            '(the constrained metric rises with it) or -1, e.g. {"density": 1}. '
            f"Received: monotone={monotone!r}."
        )
    for name, direction in monotone.items():
        if direction not in (-1, 0, 1) or isinstance(direction, bool):
            raise ValueError(f"`monotone[{name!r}]` must be +1, -1 or 0. Received: {direction!r}.")


def feasible_end(monotone, constraint, space):
    """The likelier feasible end of a single ordered hyperparameter, before any data.

    Args:
        monotone: the oracle's `monotone` option.
        constraint: the `Constraint`.
        space: the `encoding.Space`.

    Returns:
        1.0 or 0.0 (the coordinate of that end), or None when the space is not
        one ordered hyperparameter or its order is unknown. With
        `monotone=True` the maximum (density 1, say) is taken to be feasible.
    """
    if space.dims != 1 or not space.ordered[0] or monotone is False or not constraint.one_sided:
        return None
    if isinstance(monotone, dict):
        direction = constraint.direction * monotone.get(space.hyperparameters[0].name, 0)
        return None if direction == 0 else float(direction > 0)
    return 1.0


def feasibility_directions(monotone, constraint, space, x, cost):
    """Per-coordinate directions of feasibility, from the option and the trials.

    With `monotone=True` a least-squares slope of the cost along each ordered
    hyperparameter gives its sign: where the cost rises (more density), the
    constrained metric gets closer to feasible (more accuracy).

    Args:
        monotone: the oracle's `monotone` option.
        constraint: the `Constraint`.
        space: the `encoding.Space`.
        x: `(n, dims)` completed trials' points.
        cost: `(n,)` their objective, oriented to be minimised.

    Returns:
        A `(dims,)` array of +1, -1 and 0, or None when nothing is known.
    """
    if monotone is False or not constraint.one_sided:
        return None
    if isinstance(monotone, dict):
        names = [hp.name for hp in space.hyperparameters]
        directions = constraint.direction * np.array(
            [float(monotone.get(name, 0)) for name in names]
        )
        return directions if np.any(directions != 0) else None
    ordered = space.ordered
    if not ordered.any() or len(cost) < 2 or np.ptp(cost) == 0:
        return None
    x = x[:, ordered]
    x = np.hstack([x - x.mean(axis=0), np.ones((len(x), 1))])
    slope = np.linalg.lstsq(x, cost - cost.mean(), rcond=None)[0][:-1]
    significant = np.abs(slope) > 1e-3 * np.ptp(cost)
    directions = np.zeros(space.dims)
    directions[ordered] = np.where(significant, np.sign(slope), 0.0)
    return directions if np.any(directions != 0) else None


def consistent(x, feasible, directions):
    """Mask of points that do not contradict the order.

    An infeasible point that is "more feasible" than a feasible one in every
    ordered coordinate (and equal in the others) contradicts the assumed order
    (noise, or a metric that falls again at the dense end); it is not used as
    a bound.

    Args:
        x: `(n, dims)` points.
        feasible: `(n,)` bool array.
        directions: `(dims,)` output of `feasibility_directions`.

    Returns:
        An `(n,)` bool array.
    """
    keep = np.ones(len(x), dtype=bool)
    if not feasible.any():
        return keep
    ordered = directions != 0
    diff = (x[:, None, :] - x[None, feasible, :]) * directions
    free = ~ordered
    same = np.all(np.isclose(x[:, None, free], x[feasible][None, :, free]), axis=-1)
    above_feasible = np.any(np.all(diff[..., ordered] >= 0, axis=-1) & same, axis=1)
    keep[~feasible & above_feasible] = False
    return keep
