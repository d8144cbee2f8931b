"""Gaussian-process surrogates for the search: scikit-learn, as Keras Tuner uses.

A `Surrogate` fits one `GaussianProcessRegressor` to points in the unit cube
(hyperparameters scaled by Keras Tuner's `value_to_prob`) and the values one
metric took there. The kernel is a Matern 5/2 with one length scale per
dimension plus a learned white-noise term, because trial metrics are noisy
(two fine-tunings at the same density differ by a few tenths of a point).
"""

import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.gaussian_process import GaussianProcessRegressor, kernels

# Length scales in the unit cube: shorter than 1/50 of the range would fit
# noise, longer than 10 ranges is a straight line already.
_LENGTH_SCALE_BOUNDS = (0.02, 10.0)
# Noise variance relative to the standardised data (normalize_y=True).
_NOISE_BOUNDS = (1e-6, 0.25)


class Surrogate:
    """A Gaussian process over the unit cube for one metric.

    Args:
        num_dims: dimension of the points.
        seed: integer seed of the kernel-hyperparameter optimiser's restarts.
        num_restarts: restarts of that optimiser beyond the first.
        noise: optional known standard deviation of one reading (in the
            metric's units), kept fixed; by default the noise is fitted.

    Example:

    >>> s = Surrogate(1, seed=0).fit(np.array([[0.0], [0.5], [1.0]]), np.array([0.1, 0.8, 0.9]))
    >>> mean, std = s.predict(np.array([[0.5]]))
    >>> bool(abs(mean[0] - 0.8) < 0.1)
    True
    """

    def __init__(self, num_dims, seed=0, num_restarts=2, noise=None):
        self.num_dims = int(num_dims)
        self.seed = int(seed)
        self.num_restarts = int(num_restarts)
        self.noise = None if noise is None else float(noise)
        self.gpr = None

    def _kernel(self):
        matern = kernels.Matern(
            length_scale=np.full(self.num_dims, 0.3),
            length_scale_bounds=_LENGTH_SCALE_BOUNDS,
            nu=2.5,
        )
        signal = kernels.ConstantKernel(1.0, (1e-2, 1e2))
        if self.noise is not None:
            return signal * matern
        return signal * matern + kernels.WhiteKernel(1e-3, _NOISE_BOUNDS)

    def fit(self, x, y, errors=None):
        """Fits the process (kernel hyperparameters by marginal likelihood).

        Args:
            x: `(n, d)` points in the unit cube.
            y: `(n,)` finite metric values.
            errors: optional `(n,)` standard errors of the values, added to
                a known `noise` (ignored when the noise is fitted).

        Returns:
            `self`.
        """
        x = np.asarray(x, dtype=float)
        y = np.asarray(y, dtype=float)
        self.gpr = GaussianProcessRegressor(
            kernel=self._kernel(),
            alpha=self._alpha(y, errors),
            normalize_y=True,
            n_restarts_optimizer=self.num_restarts if len(y) > 2 else 0,
            random_state=self.seed,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.gpr.fit(x, y)
        return self

    def condition_on(self, x, y):
        """Adds points with the fitted kernel kept fixed (no re-optimisation).

        Used to "hallucinate" results of trials still running, so that
        parallel workers are not sent to the same place.

        Args:
            x: `(n, d)` all points (old and new).
            y: `(n,)` their values.

        Returns:
            `self`.
        """
        fitted = self.gpr.kernel_
        y = np.asarray(y, dtype=float)
        self.gpr = GaussianProcessRegressor(
            kernel=fitted, alpha=self._alpha(y), normalize_y=True, optimizer=None
        )
        self.gpr.fit(np.asarray(x, dtype=float), y)
        return self

    def _alpha(self, y, errors=None):
        """The diagonal jitter: a known noise's variance in the standardised units fitted."""
        if self.noise is None:
            return 1e-10
        variance = self.noise**2 + (0.0 if errors is None else np.asarray(errors) ** 2)
        return np.maximum(variance / max(float(np.var(y)), 1e-300), 1e-10)

    def predict(self, x, include_noise=True):
        """Posterior mean and standard deviation at `x`.

        Args:
            x: `(n, d)` points.
            include_noise: whether the deviation covers the evaluation noise
                (the spread of one more measurement) or only the latent value.

        Returns:
            A tuple `(mean, std)` of `(n,)` arrays.
        """
        mean, std = self.gpr.predict(np.asarray(x, dtype=float), return_std=True)
        if self.noise is not None:  # a fixed noise is not part of the kernel
            if include_noise:
                std = np.sqrt(std**2 + self.noise**2)
        elif not include_noise:
            var = std**2 - self.noise_variance()
            std = np.sqrt(np.maximum(var, 1e-18))
        return mean, std

    def noise_variance(self):
        """The fitted evaluation-noise variance, in the metric's own units.

        Returns:
            A float.
        """
        if self.noise is not None:
            return self.noise**2
        kernel = self.gpr.kernel_
        noise = kernel.k2.noise_level if isinstance(kernel.k2, kernels.WhiteKernel) else 0.0
        return float(noise) * float(np.squeeze(self.gpr._y_train_std)) ** 2
