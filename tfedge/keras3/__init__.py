"""Keras 3 models in tfedge: a checked bridge to tf_keras and back.

TensorFlow 2.16+ makes Keras 3 the default (``import keras``), but the
TensorFlow Model Optimization Toolkit (tfmot), which tfedge wraps for pruning
and quantization-aware training, works only on tf_keras (Keras 2) models
(tfmot issues #1119, #1141, #1167). This module lets a user whose code says
``import keras`` call ``tfedge.wrap(model)`` and get back a Keras 3 model:

1. **Keras 3 -> tf_keras** (:func:`to_tf_keras`). The model's config is
   translated layer by layer: ``InputLayer``'s ``batch_shape`` becomes
   ``batch_input_shape``, dtype policies become dtype names, serialized
   initializers/regularizers/constraints lose Keras 3's ``module`` and
   ``registered_name`` keys, Keras 3 renames are undone (``LeakyReLU``'s
   ``negative_slope`` is tf_keras's ``alpha``), and Keras 3 options tf_keras
   does not have are dropped when they are at their Keras 3 default (which
   is the Keras 2 behaviour) and reported otherwise. The graph is rebuilt
   call by call from the config (Sequential, functional, nested models,
   shared layers, ``keras.applications`` models), every weight is copied,
   and both models are run on the same random inputs (every layer's output
   is compared, not only the model's outputs, which for an untrained network
   can hardly depend on its input). If anything differs beyond float
   tolerance, each layer is run alone: one that differs alone stops the run
   and is named; if none does, the drift is float rounding amplified by the
   network, which is logged (see :func:`check_equivalent`).
2. **tf_keras -> Keras 3** (:func:`to_keras3`). The trained tf_keras model
   is poured back into a clone of the user's own Keras 3 model (same classes,
   same config), weight by weight, and checked the same way, so the user
   gets back the kind of model they gave.

``tfedge.convert`` and ``tfedge.validate`` need no bridge: ``convert``
traces the Keras 3 model into a ``tf.function`` and hands the converter its
variables through :func:`variable_holder` (the converter does not see
through Keras 3's variable wrappers), and ``validate`` only calls
``predict``. :func:`as_functional` gives a subclassed Keras 3 model the
functional form ``convert`` needs by tracing its ``call`` once.

``wrap`` also accepts Keras 3 training objects: ``EdgeModel.compile`` takes
Keras 3 optimizers, losses and metrics (:func:`compile_arguments`), ``fit``
Keras 3 callbacks (:class:`Keras3Callback`), and a Keras 3 ``teacher=`` is
carried across like the student. After QAT, ``finish()`` returns the tf_keras
model: tfmot's fake-quant layers hold the learned int8 ranges and exist only
in tf_keras (see :meth:`Keras3Bridge.finish`).

Why a bridge and not native Keras 3 pruning/QAT
-----------------------------------------------
The alternative was to re-implement tfmot's mechanisms as Keras 3 layers:
pruning masks with the same polynomial schedule, fake-quant ops placed and
named so that the TFLite converter folds them into int8 kernels, and
distillation as a Keras 3 ``Model``. The bridge was chosen because:

* **one implementation**. The bridge reuses tfmot exactly as tf_keras users
  get it: same pruning wrappers, same QAT layout transforms (Conv+BN
  folding, the per-layer quantize registry) and the converter paths they
  are tested against. A native copy would have to match tfmot's QAT graph
  patterns bit for bit to get the same int8 model from the converter, and
  stay matched as both evolve; its bugs would be ours alone.
* **verifiable**. Every crossing is checked numerically (random inputs,
  float tolerance) before any training happens and again on the way back,
  so a silent semantic difference between the two Keras versions cannot
  slip through: it stops the run and names the layer.
* **small and removable**. The whole difference between the two Keras
  versions lives in this one module; when tfmot supports Keras 3, wrap drops
  the bridge and nothing else changes.

The cost is that a Keras 3 model must be describable to tf_keras: see below.

What is not supported (each raises :class:`~tfedge.errors.UnsupportedModelError`
naming every offending layer and the way out)
------------------------------------------------------------------------------
* Layers tf_keras does not have (e.g. ``RMSNormalization``, ``RandAugment``,
  ``TFSMLayer``), Keras 3 options tf_keras lacks set to a non-default value
  (e.g. ``lora_rank``), quantized Keras 3 layers (quantized dtype policies),
  activations missing in tf_keras (``hard_silu``, ``glu``...) or defined
  differently there (``hard_sigmoid``: Keras 3 uses ``relu6(x + 3) / 6``,
  tf_keras ``0.2 x + 0.5``).
* Keras 3 operations called directly on tensors of a functional model
  (``x + 3.0``, ``keras.ops.relu(x)``; ``keras.applications.MobileNetV3``
  does this): tf_keras has no layer for them. Use layers (``layers.Add``,
  ``layers.Rescaling``, ``layers.ReLU``...).
* Custom layers, unless a tf_keras twin is given:
  ``to_tf_keras(model, custom_objects={"Scale": TfKerasScale})``, then
  ``tfedge.wrap`` on the result, and ``to_keras3(trained, like=model)`` at
  the end. The numerical check still guards the twin.
* Subclassed models in ``wrap``: their layers cannot be copied and rewired
  from Python code. ``convert`` and ``validate`` accept them once they have
  been called on data (their ``call`` is traced).
* Backends other than TensorFlow work for the bridge (weights are copied as
  NumPy arrays), but conversion to TFLite needs the TensorFlow backend.

Example:

>>> tf_model = tfedge.keras3.to_tf_keras(keras3_model)  # doctest: +SKIP
>>> wrapped = tfedge.wrap(keras3_model, prune=0.8)  # the same, inside wrap  # doctest: +SKIP
>>> wrapped.finish()  # a Keras 3 model again  # doctest: +SKIP

The bridge is a package along its layers: :mod:`~tfedge.keras3.translate`
(config translation), :mod:`~tfedge.keras3.equivalence` (weights and the
numerical check) and :mod:`~tfedge.keras3.bridge` (the entry points).
"""

from tfedge.keras3.bridge import (Keras3Bridge, Keras3Callback, as_functional,
                                  compile_arguments, fit_callbacks, to_keras3, to_tf_keras,
                                  variable_holder)
from tfedge.keras3.equivalence import check_equivalent, max_difference
from tfedge.keras3.translate import ATOL, RTOL, model_kind

__all__ = ["to_tf_keras", "to_keras3", "Keras3Bridge", "Keras3Callback", "variable_holder",
           "as_functional", "compile_arguments", "fit_callbacks", "check_equivalent",
           "max_difference", "model_kind", "RTOL", "ATOL"]
