"""Search strategies: where `ConstrainedBayesianOracle` puts the next trial.

The oracle is Keras Tuner glue: for each new trial it encodes the trials so
far as a `History` (points of the unit cube with their objective and
constrained metric, see `encoding.Space`) and asks its strategies, in order,
`strategy.propose(history, space, rng)`. The first that does not return None
decides:

- a point (a `(dims,)` array in `[0, 1]`), or several best first (`(k, dims)`):
  the oracle runs the first whose hyperparameter values are new;
- a `Replicate(point)`: a completed trial's values run again (another
  fine-tuning: it measures the noise and averages it out of the estimate);
- a `Stop(reason)`: the search ends before `max_trials`;
- None: the next strategy is asked (a random point if none answers).

Whatever they propose, the oracle answers with the cheapest trial that meets
the constraint with its `confidence` (`search.confidence`).

The default strategies, in order (`default_strategies()`):

1. `InitialDesign`: bisection from the middle of one ordered hyperparameter;
   with several, the densest corner and the centre, then bisection of the
   diagonal when all are ordered (else Sobol points).
2. `LevelSetBracket`: with one ordered hyperparameter, bisects the bracket
   around the lowest feasible point, then confirms
   (`confirmation.confirm`) and stops once a further trial is not worth it.
3. `ConfidentImprovement`: with several hyperparameters, once a trial other
   than the dearest is feasible, where the confident answer is most likely
   to get cheaper (replicates included).
4. `ConstrainedExpectedImprovement`: expected improvement times probability
   of feasibility, from Gaussian processes of both metrics (the search for
   a first feasible trial, and any space the others decline).

A new strategy is a `Strategy` subclass with a `propose` method, passed to
the oracle as `strategies=`. It keeps no state between calls: everything it
uses comes from `history`, `space` and `rng` (seeded by the search's seed and
the trial count), so a reloaded oracle, or a chief serving distributed
workers, proposes exactly what an uninterrupted one would.

Example:

```python
import keras_tuner
import numpy as np
import keras_condensa as kc
from keras_condensa.search import strategies

class Centre(strategies.Strategy):
    # The centre of the space for the first trial; then the next strategies.
    def propose(self, history, space, rng):
        if history.num_trials > 0:
            return None
        return np.full(space.dims, 0.5)

hp = keras_tuner.HyperParameters()
hp.Float("density", 0.005, 1.0, sampling="log")
oracle = kc.search.ConstrainedBayesianOracle(
    objective=keras_tuner.Objective("nonzero_params", "min"),
    constraint=kc.search.Constraint("val_accuracy", min_value=0.97),
    hyperparameters=hp, max_trials=10, seed=0,
    strategies=[Centre(), *strategies.default_strategies()])
```
"""

from keras_condensa.search.strategies.base import History, Replicate, Stop, Strategy
from keras_condensa.search.strategies.confirmation import ConfidentImprovement
from keras_condensa.search.strategies.expected_improvement import ConstrainedExpectedImprovement
from keras_condensa.search.strategies.initial_design import InitialDesign
from keras_condensa.search.strategies.level_set import LevelSetBracket


def default_strategies(num_initial_points=None, min_expected_saving=0.04):
    """The oracle's strategies when it is given none.

    Args:
        num_initial_points: passed to `InitialDesign`.
        min_expected_saving: passed to `LevelSetBracket`.

    Returns:
        A new list: `InitialDesign`, `LevelSetBracket`,
        `ConfidentImprovement`, `ConstrainedExpectedImprovement`.

    Raises:
        ValueError: if an argument is out of range (see the strategies).
    """
    return [
        InitialDesign(num_initial_points),
        LevelSetBracket(min_expected_saving),
        ConfidentImprovement(),
        ConstrainedExpectedImprovement(),
    ]


__all__ = [
    "ConfidentImprovement",
    "ConstrainedExpectedImprovement",
    "History",
    "InitialDesign",
    "LevelSetBracket",
    "Replicate",
    "Stop",
    "Strategy",
    "default_strategies",
]
