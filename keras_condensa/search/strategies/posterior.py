"""The Gaussian processes the model-based strategies share.

One process models the constrained metric (say `val_accuracy`) from every
completed trial, feasible or not: infeasible trials are what locates the
boundary of the feasible set. A second one models the objective (log-scaled
when positive, so that a cost proportional to density is a straight line on
Keras Tuner's log scale). Trials still running are "believed" at the
posterior mean (the kriging believer), so that parallel workers are sent to
different places.
"""

import numpy as np

from keras_condensa.search.surrogate import Surrogate


class Posterior:
    """The models of a history, with running trials believed.

    Args:
        history: the `History`, with at least two completed trials.
        space: the `encoding.Space`.
        seed: int, the seed of the constraint's process (the objective's
            uses `seed + 1`).

    Attributes:
        constraint_gp: the constrained metric's `Surrogate`.
        x: `(n + p, dims)` completed then running trials' points.
        metric: `(n + p,)` their constrained metric (believed when running).
        feasible: `(n + p,)` observed (or believed) feasibility.
        best_cost: the lowest oriented objective among (believed) feasible
            trials, or None.
        num_completed: `n`.
    """

    def __init__(self, history, space, seed):
        self._history = history
        self._dims = space.dims
        self._seed = seed
        self._objective_gp = None
        self.num_completed = len(history.completed_x)
        self.constraint_gp = Surrogate(space.dims, seed=seed).fit(
            history.completed_x, history.constraint
        )
        self.x = history.completed_x
        self.metric = history.constraint
        self.feasible = history.feasible
        feasible = history.feasible
        self.best_cost = history.objective[feasible].min() if feasible.any() else None
        pending = history.pending_x
        if len(pending):
            objective_gp = Surrogate(space.dims, seed=seed + 1).fit(self.x, history.objective)
            c_mean, _ = self.constraint_gp.predict(pending)
            o_mean, _ = objective_gp.predict(pending)
            self.x = np.vstack([self.x, pending])
            self.metric = np.concatenate([history.constraint, c_mean])
            self.constraint_gp.condition_on(self.x, self.metric)
            objective_gp.condition_on(self.x, np.concatenate([history.objective, o_mean]))
            self._objective_gp = objective_gp
            believed = np.array([history.bound.is_satisfied(v) for v in c_mean], dtype=bool)
            self.feasible = np.concatenate([self.feasible, believed])
            if believed.any():
                cost = o_mean[believed].min()
                self.best_cost = cost if self.best_cost is None else min(self.best_cost, cost)

    def objective_gp(self):
        """The objective's `Surrogate` (fitted on first use).

        Returns:
            A `Surrogate` over `x` and the oriented objective.
        """
        if self._objective_gp is None:
            self._objective_gp = Surrogate(self._dims, seed=self._seed + 1).fit(
                self.x, self._history.objective
            )
        return self._objective_gp
