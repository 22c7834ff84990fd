"""Small real datasets that ship inside packages, for demos, tests and recipes.

Nothing here downloads: scikit-learn ships the digits data set (1,797 real
8x8 handwritten digits) in its wheel.
"""

from __future__ import annotations

import numpy as np


def load_digits(test_fraction: float = 0.25, seed: int = 0,
                ) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """scikit-learn's handwritten digits as 8x8x1 float images in [0, 1].

    Args:
        test_fraction: fraction of samples held out, stratified by class.
        seed: seed of the split.

    Returns:
        ``((x_train, y_train), (x_test, y_test))``; ``x`` float32 of shape
        (N, 8, 8, 1), ``y`` int64 labels 0-9.

    Raises:
        ImportError: scikit-learn is missing (``pip install scikit-learn``).
    """
    try:
        from sklearn.datasets import load_digits as sk_load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as err:
        raise ImportError("The digits data set comes from scikit-learn: "
                          "pip install scikit-learn") from err
    digits = sk_load_digits()
    x = (digits.images / 16.0).astype(np.float32)[..., None]
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_fraction, random_state=seed, stratify=y)
    return (x_train, y_train), (x_test, y_test)


DIGIT_LABELS = [str(i) for i in range(10)]
