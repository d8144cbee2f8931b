"""The seam between the oracle and its strategies: `Strategy`, `History`, `Stop`."""

import dataclasses

import numpy as np
import threadpoolctl

from keras_condensa.search.confidence import DEFAULT_CONFIDENCE


@dataclasses.dataclass(frozen=True, eq=False)
class History:
    """What a strategy knows: the search problem and the trials so far, as arrays.

    Points are in the unit cube of `encoding.Space` (Keras Tuner's
    `value_to_prob` scale), one row per trial, in trial-id order. Only
    completed trials whose objective and constrained metric are finite have
    values; infeasible ones are kept (they locate the feasible set's
    boundary).

    Attributes:
        completed_x: `(n, dims)` points of the completed trials.
        constraint: `(n,)` their constrained metric (e.g. `val_accuracy`).
        errors: `(n,)` the standard errors of those readings the trials
            reported (`<name>_std`; 0 where none was).
        objective: `(n,)` their objective, oriented to be minimised: times
            `sign`, and its logarithm when `log_cost`.
        feasible: `(n,)` bool, whether each satisfies `bound`, judged by the
            mean of the readings at its values (replicates agree).
        log_cost: whether `objective` holds logarithms (every cost positive).
        failed_x: `(f, dims)` points of failed trials (never propose them).
        pending_x: `(p, dims)` points of trials still running (or queued for
            a retry), which parallel workers are evaluating now.
        bound: the `Constraint` the trials are judged against.
        objective_name: the objective's metric name.
        sign: +1.0 when the objective is minimised, -1.0 when maximised.
        monotone: the oracle's `monotone` option (see `search.monotone`).
        seed: the search's seed (for sequences that must repeat, e.g. a design).
        num_trials: how many trials were created so far, the one being
            proposed not included (running and failed ones included).
        confidence: the probability with which the answer must be
            feasible (the oracle's `confidence`; see `search.confidence`).
        noise: the known deviation of one reading of the constrained
            metric, or None (measured from replicates).
        max_trials: the search's budget of trials, or None.
    """

    completed_x: np.ndarray
    constraint: np.ndarray
    errors: np.ndarray
    objective: np.ndarray
    feasible: np.ndarray
    log_cost: bool
    failed_x: np.ndarray
    pending_x: np.ndarray
    bound: object
    objective_name: str
    sign: float
    monotone: object
    seed: int
    num_trials: int
    confidence: float = DEFAULT_CONFIDENCE
    noise: object = None
    max_trials: object = None

    @property
    def tried_x(self):
        """`(m, dims)` every point tried: completed, failed and running."""
        return np.vstack([self.completed_x, self.failed_x, self.pending_x])


class Stop:
    """A strategy's answer that ends the search before `max_trials`.

    Args:
        reason: why, in words; the oracle keeps it as `stop_reason`.
    """

    def __init__(self, reason):
        self.reason = reason

    def __repr__(self):
        return f"Stop({self.reason!r})"


class Replicate:
    """A strategy's answer that runs a completed trial's hyperparameters again.

    A replicate (another fine-tuning with another seed) measures the
    evaluation noise and averages it out of the trial's estimate.

    Args:
        point: the completed trial's `(dims,)` point (`History.completed_x`).
    """

    def __init__(self, point):
        self.point = np.asarray(point, dtype=float)

    def __repr__(self):
        return f"Replicate({self.point.tolist()!r})"


class Strategy:
    """Decides where the next trial goes, or defers to the next strategy.

    Subclass it and implement `propose`. A strategy keeps no state between
    calls: everything it uses comes from its arguments, so a reloaded oracle,
    or a chief serving distributed workers, proposes exactly what an
    uninterrupted one would.
    """

    def propose(self, history, space, rng):
        """The next trial's point, best candidates first; or None to defer.

        Args:
            history: the `History` of the search.
            space: the `encoding.Space` (its `dims`, `hyperparameters`,
                `ordered`, `snap`).
            rng: a `numpy.random.Generator` seeded by the search's seed and
                `history.num_trials`: the same stream for every strategy
                asked for this trial, whatever the others drew.

        Returns:
            One of:
            - a `(dims,)` point of the unit cube, or a `(k, dims)` array of
              them, best first: the oracle runs the first whose hyperparameter
              values were not tried yet (a random one if all were);
            - `None`: no proposal, ask the next strategy;
            - a `Stop`: end the search now.
        """
        raise NotImplementedError(
            f"{type(self).__name__} must implement `propose(history, space, rng)`."
        )


def check_strategies(strategies):
    """Validates the oracle's `strategies=`.

    Args:
        strategies: a list or tuple of `Strategy` instances.

    Returns:
        A new list of them.

    Raises:
        TypeError: if `strategies` is not a list or tuple of `Strategy`s.
    """
    if not isinstance(strategies, (list, tuple)):
        raise TypeError(
            "`strategies` must be a list of `keras_condensa.search.strategies.Strategy` "
            "instances, asked in order, e.g. [MyStrategy(), "
            f"*strategies.default_strategies()]. Received: strategies={strategies!r}."
        )
    for strategy in strategies:
        if not isinstance(strategy, Strategy):
            raise TypeError(
                "Each of `strategies` must be a `keras_condensa.search.strategies.Strategy` "
                f"(a subclass with a `propose` method). Received: {strategy!r} of type "
                f"{type(strategy).__name__}."
            )
    return list(strategies)


def ask(strategies, history, space, seed):
    """Asks the strategies in order; the first answer that is not None decides.

    Each strategy gets its own generator, seeded by `seed` and
    `history.num_trials`, so what one draws does not depend on the others.

    Args:
        strategies: a list of `Strategy`.
        history: the `History`.
        space: the `encoding.Space`.
        seed: the search's seed.

    Returns:
        A `Stop`, a `Replicate`, a `(k, dims)` array of points (best
        first), or None when no strategy answered.

    Raises:
        ValueError: if a strategy's points have the wrong shape.
    """
    # Small matrices: threads only contend (a chief may serve many workers).
    with threadpoolctl.threadpool_limits(limits=1, user_api="blas"):
        for strategy in strategies:
            rng = np.random.default_rng([seed, history.num_trials])
            proposal = strategy.propose(history, space, rng)
            if isinstance(proposal, (Stop, Replicate)):
                return proposal
            if proposal is not None:
                return _as_points(proposal, space.dims, strategy)
    return None


def _as_points(proposal, dims, strategy):
    """A strategy's proposal as a `(k, dims)` array of points, best first.

    Args:
        proposal: what `strategy.propose` returned (neither None nor a `Stop`).
        dims: the space's number of coordinates.
        strategy: the `Strategy`, named in the error.

    Returns:
        A `(k, dims)` float array.

    Raises:
        ValueError: if the proposal has the wrong shape.
    """
    points = np.asarray(proposal, dtype=float)
    if points.ndim == 1:
        points = points[None]
    if points.ndim != 2 or points.shape[1] != dims:
        raise ValueError(
            f"{type(strategy).__name__}.propose must return a point of the unit cube of "
            f"shape ({dims},), an array of them of shape (k, {dims}), None or a Stop. "
            f"Received: an array of shape {np.shape(proposal)}."
        )
    return points
