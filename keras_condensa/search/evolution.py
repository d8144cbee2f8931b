"""The genetic algorithm of `GeneticChannelOracle`: one gene, a grid of values, binary chromosomes.

After Hu et al. 2018 ("A novel channel pruning method for deep neural network
compression"), whose chromosomes are bit strings: here a chromosome is the
Gray code of an index into the gene's grid of values (`Gene.grid`, e.g. the
keep-ratios a layer may take), so one bit flip moves to a neighbouring value
and single-point crossover mixes the parents' high and low bits. Selection
is by tournament, the best chromosome survives each generation (elitism),
and fitness values are cached: a stage never pays twice for one value.

Pure NumPy, no Keras: `evolve` takes any fitness function of an index.
"""

import math

import numpy as np
from keras_tuner.engine import hyperparameters as hp_module

DEFAULT_GRID_SIZE = 10


class Gene:
    """A hyperparameter the genetic search tunes, and the grid of values it may take.

    The grid is ascending: the last value is the one that keeps the most
    (a keep-ratio or a density of 1.0), the value a layer keeps before its
    stage.

    Args:
        hp: a `Float`, `Int` or numeric `Choice` hyperparameter.
        grid_size: points of a `Float` without `step` (linear, or geometric
            with `sampling="log"`).

    Raises:
        TypeError: `hp` is another kind of hyperparameter, or a `Choice` of
            non-numbers.
    """

    def __init__(self, hp, grid_size=DEFAULT_GRID_SIZE):
        self.name = hp.name
        if isinstance(hp, hp_module.Choice):
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in hp.values):
                raise TypeError(
                    f"GeneticChannelOracle tunes numeric hyperparameters (keep-ratios); "
                    f"Choice {hp.name!r} has values {hp.values}. Use numbers, or declare "
                    "it with hp.Fixed."
                )
            grid = sorted(set(hp.values))
        elif isinstance(hp, hp_module.Int):
            grid = list(range(hp.min_value, hp.max_value + 1, hp.step or 1))
        elif isinstance(hp, hp_module.Float):
            grid = _float_grid(hp, grid_size)
        else:
            raise TypeError(
                f"GeneticChannelOracle tunes Float, Int and numeric Choice hyperparameters; "
                f"{hp.name!r} is a {type(hp).__name__}."
            )
        self.grid = grid


def _float_grid(hp, grid_size):
    lo, hi = float(hp.min_value), float(hp.max_value)
    if hp.step:
        if hp.sampling == "log":
            count = int(math.floor(math.log(hi / lo) / math.log(hp.step) + 1e-9)) + 1
            values = [lo * hp.step**i for i in range(count)]
        else:
            values = list(np.arange(lo, hi + 1e-9 * max(abs(hi), 1.0), hp.step))
    elif hp.sampling == "log":
        values = list(np.geomspace(lo, hi, grid_size))
    else:
        values = list(np.linspace(lo, hi, grid_size))
    return sorted({round(float(v), 6) for v in values})


def gray(index, bits):
    """The Gray-code chromosome of `index`: a `(bits,)` array of 0/1.

    >>> gray(3, 3).tolist(), gray(4, 3).tolist()
    ([0, 1, 0], [1, 1, 0])
    """
    code = index ^ (index >> 1)
    return np.array([(code >> (bits - 1 - b)) & 1 for b in range(bits)], dtype=np.int8)


def ungray(chromosome, size):
    """The grid index a chromosome codes: its `2**bits` codes spread evenly over `size` values.

    Each value gets one or two codes (none gets the leftovers of a clipped
    range, which would favour the last value).

    >>> ungray(gray(6, 3), 8), ungray(gray(7, 3), 5), ungray(gray(4, 3), 5)
    (6, 4, 2)
    """
    value, bit = 0, 0
    for b in chromosome:
        bit ^= int(b)
        value = (value << 1) | bit
    return value * size >> len(chromosome)


def encode(index, size, bits):
    """A chromosome of `bits` bits that `ungray` reads as `index` of `size` values.

    >>> all(ungray(encode(i, 10, 4), 10) == i for i in range(10))
    True
    """
    return gray(-(-index * 2**bits // size), bits)


def evolve(
    fitness,
    size,
    rng,
    population=8,
    generations=4,
    crossover_rate=0.8,
    mutation_rate=0.1,
    tournament=2,
):
    """Runs the genetic algorithm over the indices `0..size-1` of one gene's grid.

    Args:
        fitness: a function from an index to a float (higher is better);
            called at most once per index.
        size: how many values the gene's grid holds.
        rng: a `numpy.random.Generator`.
        population: chromosomes per generation.
        generations: generations after the random first one.
        crossover_rate: probability that two parents exchange their tails at
            a random bit.
        mutation_rate: probability that each bit of a child flips.
        tournament: chromosomes drawn to pick each parent (the fittest wins).

    Returns:
        A list of `(fitness, index)` for every index visited, fittest first.
    """
    bits = max(1, math.ceil(math.log2(size)))
    scores = {}

    def score(chromosome):
        index = ungray(chromosome, size)
        if index not in scores:
            scores[index] = float(fitness(index))
        return scores[index]

    pool = [encode(int(i), size, bits) for i in rng.integers(0, size, population)]
    for _ in range(generations):
        values = [score(c) for c in pool]
        elite = pool[int(np.argmax(values))]

        def pick(pool=pool, values=values):
            drawn = rng.integers(0, len(pool), tournament)
            return pool[max(drawn, key=lambda i: values[i])]

        children = [elite.copy()]
        while len(children) < population:
            a, b = pick().copy(), pick().copy()
            if bits > 1 and rng.random() < crossover_rate:
                cut = int(rng.integers(1, bits))
                a[cut:], b[cut:] = b[cut:].copy(), a[cut:].copy()
            for child in (a, b):
                flips = rng.random(bits) < mutation_rate
                children.append(np.where(flips, 1 - child, child).astype(np.int8))
        pool = children[:population]
    for c in pool:
        score(c)
    return sorted(((s, i) for i, s in scores.items()), key=lambda p: (-p[0], -p[1]))
