"""Makes ``tf.keras`` resolve to tf_keras (Keras 2), which tfmot requires.

TensorFlow 2.16+ resolves ``tf.keras`` lazily, on first attribute access, to
Keras 3 unless ``TF_USE_LEGACY_KERAS=1`` is set at that moment.  tfmot 0.8.1
only works on tf_keras models, so tfedge sets the variable on import
(:func:`guard_legacy_keras`).  If the user's process already resolved
``tf.keras`` to Keras 3, switching is no longer possible and an
``ImportError`` says how to fix the import order.

The guard imports no TensorFlow when TensorFlow is not imported yet (it only
sets the variable), so ``import tfedge`` stays fast for the command line;
``keras`` (the tf_keras module) is imported on first use of this module's
``keras`` attribute (PEP 562).
"""

from __future__ import annotations

import os
import sys
import types
from typing import Any

_FIX = (
    "Set the environment variable TF_USE_LEGACY_KERAS=1 before TensorFlow is "
    "imported (e.g. `export TF_USE_LEGACY_KERAS=1`, or "
    "`os.environ['TF_USE_LEGACY_KERAS'] = '1'` as the first line of your "
    "script), or `import tfedge` before anything touches `tf.keras`."
)


def _resolved_tf_keras() -> types.ModuleType | None:
    """Returns what ``tf.keras`` resolved to, or None if not resolved yet."""
    tf_module = sys.modules.get("tensorflow")
    if tf_module is None:
        return None
    # Read the attribute from the module dict: getattr on the lazy loader
    # would resolve it.
    attr = vars(tf_module).get("keras")
    if attr is None or type(attr).__name__ == "KerasLazyLoader":
        return None
    return attr


def _set_legacy_flag() -> None:
    if os.environ.get("TF_USE_LEGACY_KERAS") not in ("1", "true", "True"):
        os.environ["TF_USE_LEGACY_KERAS"] = "1"


def ensure_legacy_keras() -> types.ModuleType:
    """Makes ``tf.keras`` tf_keras and returns the tf_keras module.

    Returns:
        The ``tf_keras`` module, which is what ``tf.keras`` now is.

    Raises:
        ImportError: if ``tf.keras`` was already resolved to Keras 3 in this
            process, or if tf_keras is not installed.
    """
    if _resolved_tf_keras() is None:
        _set_legacy_flag()
    try:
        import tf_keras
    except ImportError as err:  # pragma: no cover - dependency is declared
        raise ImportError(
            "tfedge needs the tf-keras package (tfmot works only on Keras 2): "
            "pip install 'tf-keras~=2.21.0'"
        ) from err
    import tensorflow as tf

    if tf.keras.Model is not tf_keras.Model:
        raise ImportError(
            "tf.keras is already Keras 3 in this process, but tfedge (through "
            "the TensorFlow Model Optimization Toolkit) needs tf.keras to be "
            "tf_keras (Keras 2). " + _FIX
        )
    return tf_keras


def guard_legacy_keras() -> None:
    """Runs on ``import tfedge``: sets the flag, or checks that it is not too late.

    When TensorFlow is not imported yet, only ``TF_USE_LEGACY_KERAS=1`` is
    set (no import: the CLI's ``inspect`` and ``check`` never load
    TensorFlow). When it is, :func:`ensure_legacy_keras` checks ``tf.keras``
    now, before tfedge resolves anything Keras.

    Raises:
        ImportError: ``tf.keras`` is already Keras 3 in this process.
    """
    if "tensorflow" not in sys.modules:
        _set_legacy_flag()
        return
    globals()["keras"] = ensure_legacy_keras()


def __getattr__(name: str) -> Any:
    if name == "keras":  # the tf_keras module, imported on first use
        globals()["keras"] = module = ensure_legacy_keras()
        return module
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def is_keras3_model(obj: object) -> bool:
    """True if ``obj`` is a Keras 3 layer or model (not tf_keras)."""
    keras3 = sys.modules.get("keras")
    if keras3 is None or not hasattr(keras3, "Layer"):
        return False
    tf_keras = sys.modules.get("tf_keras")
    return isinstance(obj, keras3.Layer) and not (
        tf_keras is not None and isinstance(obj, tf_keras.layers.Layer))


guard_legacy_keras()
