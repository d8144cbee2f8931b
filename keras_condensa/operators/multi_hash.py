"""`MultiHash`: structured multi-hashing, a few low-rank products stand in for each kernel.

After Eban et al. 2020, "Structured Multi-Hashing for Model Compression".
Each covered kernel (`N` entries) is read off a virtual `m x n` matrix
(`m * n >= N`, nearly square) that is a sum of a few low-rank products
`U_i @ V_i`, each laid over the kernel's positions by its own fixed
pseudo-random permutation, times a learned scale. Only the factors and the
scales train, so the trainable variable count is set directly by `ratio`.
"""

import math
import numbers

import keras
import numpy as np
from keras import ops

from keras_condensa import prunable
from keras_condensa.operators.base import Operator, is_real

SCALES = ("channel", "layer")

# Block-coordinate sweeps of the fit to a trained kernel (`fit`): on the digits CNN the
# relative error moves by under 0.5% after 4.
_SWEEPS = 4


def layout(size, ratio, products, scales):
    """The virtual matrix and ranks that spend as much as possible of `ratio * size` variables.

    The total rank `R` is the largest that a nearly square `m x n` matrix
    (`m = ceil(sqrt(size))`) affords; the matrix is then widened (`m + n`
    grown, still `m * n >= size`) to spend what is left, so the count is
    within about `R` of the budget. `R` is split across the products as
    evenly as possible.

    Args:
        size: the kernel's entry count `N`.
        ratio: trainable variables per entry, in (0, 1).
        products: the number of low-rank products.
        scales: the scale variables (counted in the budget).

    Returns:
        `(m, n, ranks)`, or `None` when the budget cannot pay for rank 1 in
        every product.
    """
    budget = math.floor(ratio * size + 1e-9) - scales
    m0 = math.isqrt(size - 1) + 1
    total = budget // (m0 + math.ceil(size / m0))
    if total < products:
        return None
    best = None
    for m in range(m0, 0, -1):
        n = math.ceil(size / m)
        if total * (m + n) <= budget and (best is None or m + n > sum(best)):
            best = (m, n)
    ranks = tuple(total // products + (i < total % products) for i in range(products))
    return best[0], best[1], ranks


def permutations(seed, size, m, n, products):
    """Where each product's virtual matrix meets the kernel: `products` int32 arrays of `size`.

    Product `i` places kernel entry `j` at flat position `perm_i[j]` of its
    `m x n` matrix. The order is the argsort of PCG64's raw output seeded
    with `(seed, size, i)`: a bit generator's stream is fixed by its
    algorithm (NumPy's `Generator` methods may change between versions),
    so a saved model rebuilds the same permutations when it loads.
    """
    out = []
    for i in range(products):
        raw = np.random.PCG64([seed, size, i]).random_raw(m * n)
        out.append(np.argsort(raw, kind="stable")[:size].astype("int32"))
    return out


def decode(factors, perms):
    """The flat kernel the factors make, in float64 (NumPy).

    Outer products are added one rank at a time, in a fixed order, with
    elementwise NumPy only (no BLAS, whose summation order may depend on
    threads), so the result is the same on every machine.

    Args:
        factors: `[(U_i, V_i)]` arrays, `U_i` of shape `(m, r_i)`, `V_i` of `(r_i, n)`.
        perms: `permutations(...)`.

    Returns:
        A float64 array of `len(perms[0])` entries.
    """
    flat = np.zeros(len(perms[0]))
    for (u, v), perm in zip(factors, perms, strict=True):
        u, v = np.asarray(u, "float64"), np.asarray(v, "float64")
        virtual = np.zeros((u.shape[0], v.shape[1]))
        for k in range(u.shape[1]):
            virtual += u[:, k, None] * v[None, k]
        flat += virtual.reshape(-1)[perm]
    return flat


def _top(matrix, rank, rng):
    """The `rank` leading singular triplets of `matrix` `(u, s, vt)`.

    A full SVD for small matrices; randomized subspace iteration (Halko et
    al. 2011, 20 extra columns and 4 power steps) when the rank is small
    against the matrix: on a 1M-entry kernel it fits within 0.5% of the
    exact SVDs in a fifth of the time.
    """
    columns = rank + 20
    if 2 * columns >= min(matrix.shape):
        u, s, vt = np.linalg.svd(matrix, full_matrices=False)
        return u[:, :rank], s[:rank], vt[:rank]
    q = np.linalg.qr(matrix @ rng.standard_normal((matrix.shape[1], columns)))[0]
    for _ in range(4):
        q = np.linalg.qr(matrix @ np.linalg.qr(matrix.T @ q)[0])[0]
    u, s, vt = np.linalg.svd(q.T @ matrix, full_matrices=False)
    return (q @ u)[:, :rank], s[:rank], vt[:rank]


def fit(target, perms, m, n, ranks, sweeps=_SWEEPS, seed=0):
    """Least-squares factors whose decoded sum approximates `target` (a flat array).

    Block-coordinate descent: each product in turn takes the truncated SVD
    of what the others leave of `target`, laid out through its permutation
    (the virtual positions no kernel entry uses keep the product's own
    values, so each step is a least-squares step; one product needs one
    sweep). The singular values are split evenly between `U` and `V`.

    Returns:
        `[(U_i, V_i)]` float64 arrays.
    """
    target = np.asarray(target, "float64")
    rng = np.random.default_rng(seed)
    virtual = [np.zeros(m * n) for _ in perms]
    factors = [None] * len(perms)
    for _ in range(sweeps if len(perms) > 1 else 1):
        for i, (perm, rank) in enumerate(zip(perms, ranks, strict=True)):
            others = sum(virtual[k][perms[k]] for k in range(len(perms)) if k != i)
            matrix = virtual[i].copy()
            matrix[perm] = target - others
            u, s, vt = _top(matrix.reshape(m, n), rank, rng)
            root = np.sqrt(s)
            factors[i] = (u * root, root[:, None] * vt)
            virtual[i] = (factors[i][0] @ factors[i][1]).reshape(-1)
    return factors


def _relative(spec, path):
    """`path` relative to the layer of `spec` (nested layers' paths carry their prefix)."""
    return path[len(spec.prefix) + 1 :] if spec.prefix else path


def _scale_axes(spec, path, rank, granularity):
    """The kernel axes that get their own scale: the output channels, or none."""
    if granularity == "channel" and spec is not None and path == spec.channel_weight:
        return tuple(sorted(a % rank for a in spec.channel_axes))
    return ()


@keras.saving.register_keras_serializable(package="keras_condensa")
class MultiHash(Operator):
    """Structured multi-hashing: each kernel is decoded from a few low-rank products.

    Each covered kernel `w` (`N` entries) is a slice of a virtual `m x n`
    matrix (`m * n >= N`, nearly square) made of `products` low-rank
    products `U_i @ V_i` (`U_i` is `m x r_i`, `V_i` is `r_i x n`), each laid
    over the kernel's positions by its own fixed pseudo-random permutation,
    and scaled per output channel (or per kernel):

    `w[j] = scale[c(j)] * sum_i (U_i @ V_i).flat[perm_i[j]]`

    Every entry thus mixes a row and a column of several products, and the
    kernel is not a plain low-rank factorization of itself. Only `U_i`,
    `V_i` and the scales train: the ranks are chosen so that their count is
    as close as possible to `ratio * N` without exceeding it, which sets the
    model's trainable variable count directly (`ratio=0.25`: 4x fewer;
    `keras_condensa.operators.multi_hash.hashed_variables(model)` reports
    the counts). The stored kernel stays
    in the wrapped layer, unused by the forward pass and not trainable, and
    `kc.strip` bakes the decoded kernel in: what shrinks is what trains
    (gradients, optimizer state, the variables a deployment would keep
    with the seed), not the stripped model. Biases and the layers not
    covered keep their own variables.

    When the scheme is applied, the factors are fitted to the current
    (trained) kernel by least squares (truncated SVDs, see `fit`) and the
    scales keep each output channel's root mean square, so fine-tuning
    starts near the trained model: on the digits CNN at ratio 0.25 the
    fitted kernels have a cosine similarity of about 0.63 with the trained
    ones, and one epoch of fine-tuning recovers 92% accuracy (50% from a
    random start); ten reach the dense model's accuracy. To train from
    scratch under `MultiHash`, apply it to the untrained model.

    The permutations are rebuilt from `seed` when the model is built or
    loaded; they are never stored. `MultiHash` must be the first operator
    of a weight (it replaces the weight); others may follow
    (`kc.Compose([kc.MultiHash(0.25), kc.Quantize("int8")])`). A kernel
    too small to pay for rank 1 in every product at `ratio` is left dense
    (the first convolution of a small CNN, usually); naming it in
    `include=` is an error that names the ratio it needs.

    Args:
        ratio: trainable variables per covered kernel entry, in (0, 1).
        products: the number of low-rank products, an int >= 1.
        scale: `"channel"` (one learned scale per output channel) or
            `"layer"` (one per kernel). The scales count in the budget.
        seed: an int that fixes the permutations.
        include: layer names or classes to cover (default: all supported).
        exclude: layer names or classes to leave untouched.

    Raises:
        ValueError: for a bad argument, or a layer named in `include=` too
            small for rank 1 in each product at this ratio.

    Example:

    ```python
    scheme = kc.MultiHash(ratio=0.25, exclude=["conv1"])
    hashed = scheme.apply(model)   # 4x fewer trainable variables in the covered kernels
    hashed.compile(...)
    hashed.fit(x, y, epochs=10)
    multi_hash.hashed_variables(hashed)  # {"fc/kernel": (8182, 32768), ...}
    final = kc.strip(hashed)       # plain layers holding the decoded kernels
    ```
    """

    scheme_word = "hash"
    scheme_args = ("R",)
    scheme_help = (
        "structured multi-hashing: R trainable variables per covered weight, in (0, 1) "
        "(sums of low-rank products over hashed positions)"
    )
    exclusive = "hashed"

    def __init__(self, ratio=0.25, products=2, scale="channel", seed=0, include=None, exclude=None):
        super().__init__(include=include, exclude=exclude)
        if not is_real(ratio) or not 0 < ratio < 1:
            raise ValueError(
                "ratio is the number of trainable variables per covered weight and must be in "
                f"(0, 1), e.g. 0.25 for 4x fewer. Received: ratio={ratio!r}"
            )
        for name, value, low in (("products", products, 1), ("seed", seed, 0)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
                raise ValueError(f"{name} must be an int >= {low}. Received: {name}={value!r}")
        if scale not in SCALES:
            raise ValueError(f"scale must be one of {SCALES}. Received: scale={scale!r}")
        self.ratio = float(ratio)
        self.products = int(products)
        self.scale = scale
        self.seed = int(seed)

    def paths(self, layer, spec):
        return tuple(spec.weights)

    def reason_unsupported(self, layer, spec):
        # A kernel too small to hash is left dense, or an error when include= names it.
        reason = super().reason_unsupported(layer, spec)
        if reason is None:
            for path in self.paths(layer, spec):
                shape = tuple(prunable.resolve(layer, _relative(spec, path)).shape)
                try:
                    self._layout(
                        layer.name, path, shape, _scale_axes(spec, path, len(shape), self.scale)
                    )
                except ValueError as error:
                    return str(error)
        return reason

    def _layout(self, name, path, shape, axes):
        """`(m, n, ranks)` of a kernel, or a `ValueError` naming the layer and the fix."""
        size = math.prod(shape)
        scales = math.prod(shape[a] for a in axes)
        found = layout(size, self.ratio, self.products, scales)
        if found is None:
            m = math.isqrt(size - 1) + 1
            need = self.products * (m + math.ceil(size / m)) + scales
            fix = "leave the layer out"
            if need < size:  # a ratio below 1 can pay for it
                fix = (
                    f"raise the ratio to at least {math.ceil(1000 * need / size) / 1000:g} (or "
                    f"lower products, or scale='layer'), or {fix}"
                )
            raise ValueError(
                f"MultiHash(ratio={self.ratio:g}) cannot cover layer '{name}': its weight "
                f"'{path}' has {size} entries, and {math.floor(self.ratio * size + 1e-9)} "
                f"trainable variables do not pay for rank 1 in each of the {self.products} "
                f"products and the {scales} scales ({need} needed). To fix it, {fix}: "
                f"exclude=['{name}']."
            )
        return found

    def build(self, wrapper, path, variable):
        first = wrapper.operators[wrapper.chains[path][0]]
        if first is not self:
            raise ValueError(
                f"MultiHash replaces the weight '{path}' of layer '{wrapper.layer.name}', so it "
                f"must be its first operator, not after {first!r}: put MultiHash first in "
                "kc.Compose([...])."
            )
        unit = wrapper.unit_of(path)
        shape = tuple(variable.shape)
        axes = _scale_axes(unit.spec if unit else None, path, len(shape), self.scale)
        m, n, ranks = self._layout(wrapper.layer.name, path, shape, axes)
        prefix = path.replace(".", "_")
        state = {
            "shape": shape,
            "view": tuple(shape[a] if a in axes else 1 for a in range(len(shape))),
            "perms": permutations(self.seed, math.prod(shape), m, n, self.products),
            "virtual": (m, n),
            "ranks": ranks,
        }
        # A random start (decoded entries of unit variance), until `update` fits the
        # factors to the kernel when the scheme is applied.
        rng = np.random.default_rng(self.seed)
        std = sum(ranks) ** -0.25
        for i, rank in enumerate(ranks):
            for key, factor_shape in ((f"u{i}", (m, rank)), (f"v{i}", (rank, n))):
                state[key] = wrapper.add_weight(
                    name=f"{prefix}_hash_{key}", shape=factor_shape, initializer="zeros"
                )
                state[key].assign(rng.normal(0.0, std, factor_shape).astype("float32"))
        value = np.asarray(ops.convert_to_numpy(variable), "float64")
        state["scale"] = wrapper.add_weight(
            name=f"{prefix}_hash_scale", shape=tuple(shape[a] for a in axes), initializer="ones"
        )
        state["scale"].assign(_channel_rms(value, state["view"]).reshape(state["scale"].shape))
        variable.trainable = False  # the factors stand in for it
        return state

    def transform(self, state, value, training):
        dtype = value.dtype
        flat = None
        for i, perm in enumerate(state["perms"]):
            u = ops.cast(state[f"u{i}"], dtype)
            v = ops.cast(state[f"v{i}"], dtype)
            part = ops.take(ops.reshape(ops.matmul(u, v), (-1,)), ops.convert_to_tensor(perm))
            flat = part if flat is None else flat + part
        scale = ops.reshape(ops.cast(state["scale"], dtype), state["view"])
        return ops.reshape(flat, state["shape"]) * scale

    def update(self, items, context):
        """Fits the factors and scales to the kernels (when the scheme is applied).

        The factors are fitted to the kernel divided by each output
        channel's root mean square (`fit`), and the scales then make the
        decoded channels' root mean squares equal the kernel's: a least-squares
        fit shrinks every channel alike (it captures part of the kernel), and
        keeping activation scales fine-tunes faster on the digits CNN (about
        2 points better after one or two epochs at ratio 0.25).
        """
        for item in items:
            for path in item.paths:
                state = item.states[path]
                value = np.asarray(item.values[path], "float64")
                rms = _channel_rms(value, state["view"])
                target = (value / np.where(rms > 0, rms, 1.0)).reshape(-1)
                factors = fit(
                    target, state["perms"], *state["virtual"], state["ranks"], seed=self.seed
                )
                decoded = _channel_rms(
                    decode(factors, state["perms"]).reshape(state["shape"]), state["view"]
                )
                scale = np.where(decoded > 0, rms / np.where(decoded > 0, decoded, 1.0), 0.0)
                for i, (u, v) in enumerate(factors):
                    context.assign(state[f"u{i}"], u.astype("float32"))
                    context.assign(state[f"v{i}"], v.astype("float32"))
                context.assign(
                    state["scale"], scale.reshape(state["scale"].shape).astype("float32")
                )

    def finalize(self, state, value):
        """The decoded kernel in float32, computed on the host in float64 (`decode`).

        Deterministic: given the variables' values, the same bits on every
        backend, device and thread count (no TF32, fused or threaded
        matmuls), rounded to float32 once; the forward pass agrees to float32
        rounding.
        """
        factors = [
            (ops.convert_to_numpy(state[f"u{i}"]), ops.convert_to_numpy(state[f"v{i}"]))
            for i in range(len(state["perms"]))
        ]
        scale = np.asarray(ops.convert_to_numpy(state["scale"]), "float64")
        kernel = decode(factors, state["perms"]).reshape(state["shape"])
        return ops.convert_to_tensor((kernel * scale.reshape(state["view"])).astype("float32"))

    def get_config(self):
        config = super().get_config()
        config.update(ratio=self.ratio, products=self.products, scale=self.scale, seed=self.seed)
        return config


def _channel_rms(value, view):
    """The root mean square of `value` over the axes where `view` is 1 (shaped as `view`)."""
    axes = tuple(a for a, size in enumerate(view) if size == 1)
    return np.sqrt(np.mean(np.square(value), axis=axes, keepdims=True)).reshape(view)


def hashed_variables(model):
    """The trainable variables `MultiHash` keeps for each kernel it covers in `model`.

    Args:
        model: a model returned by `MultiHash(...).apply` (or a `kc.Compose` holding one).

    Returns:
        `{"layer/path": (trainable variables, kernel entries)}`.

    Example:

    ```python
    counts = hashed_variables(kc.MultiHash(0.25).apply(model))
    sum(v for v, _ in counts.values()) <= 0.25 * sum(n for _, n in counts.values())  # True
    ```
    """
    from keras_condensa import masking  # noqa: PLC0415 - masking is above operators

    counts = {}
    for wrapper in masking.iter_wrappers(model):
        for path in wrapper.chains:
            for op, state in wrapper.chain(path):
                if isinstance(op, MultiHash):
                    keys = ["scale", *(f"{k}{i}" for i in range(len(state["perms"])) for k in "uv")]
                    variables = sum(math.prod(state[k].shape) for k in keys)
                    counts[f"{wrapper.layer.name}/{path}"] = (variables, math.prod(state["shape"]))
    return counts
