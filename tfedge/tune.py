"""``tfedge.tune``: search compression settings under a device budget.

Which sparsity, which width, QAT or not, which resolution? ``tune`` answers
it by running the real pipeline for each candidate -- build, ``wrap``, train,
``finish``, full-int8 ``convert`` -- and scoring the **int8 flatbuffer** in
LiteRT (:func:`tfedge.validate`), never the float Keras model. Each trial is
checked against a :class:`Budget` (file size, estimated latency on a named
target, tensor-arena size, minimum accuracy); trials that break it are kept
and marked infeasible. The result is the Pareto front (accuracy vs size vs
latency) as a table, JSON and PNG, plus the best feasible model with its
model card.

The search itself is keras-tuner's: its oracles decide what to try
(Bayesian optimization, random search or Hyperband), its project directory
makes the search resumable, and its chief/worker mode (``KERASTUNER_TUNER_ID``,
``KERASTUNER_ORACLE_IP``, ``KERASTUNER_ORACLE_PORT``) spreads trials over
processes and machines. tfedge only subclasses ``keras_tuner.Tuner`` and
overrides ``run_trial``, the documented way to tune anything.

Example:

>>> result = tfedge.tune(build_fn, (x_train, y_train), validation_data=(x_val, y_val),
...                      budget=tfedge.Budget(max_size_bytes=20_000, min_accuracy=0.9),
...                      max_trials=8, directory="tune_runs")  # doctest: +SKIP
>>> print(result)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import os
import shutil
import time
import warnings
import zlib
from typing import Any, Callable, Sequence

import numpy as np
from absl import logging

from tfedge.errors import TFEdgeError
from tfedge.report import format_table, to_json

TRIAL_FILENAME = "tfedge_trial.json"
MODEL_FILENAME = "model.tflite"
ORACLES = ("bayesian", "random", "grid", "hyperband")


# ----------------------------------------------------------------------------
# Budget
# ----------------------------------------------------------------------------
@dataclasses.dataclass
class Budget:
    """What the deployed int8 model must fit in.

    Every limit is optional; a trial is feasible when it meets all given ones.

    Args:
        max_size_bytes: largest allowed ``.tflite`` file, in bytes.
        max_latency_ms: largest allowed estimated latency on ``target``.
        target: a device profile of the benchmark harness
            (``tfedge.devices.PROFILES``: rpi3, rpi4, rpi5, phone, cortex-m7);
            needed for ``max_latency_ms``. Given alone, latency is estimated
            and reported without a limit. Latencies are the harness's
            single-thread estimates (:func:`tfedge.bench.estimate_latency`).
        max_arena_bytes: largest allowed TFLite-Micro tensor arena, in bytes.
        min_accuracy: smallest allowed top-1 accuracy of the int8 model on
            the validation data, in [0, 1].

    Raises:
        ValueError: for negative limits, an accuracy outside [0, 1], or a
            latency limit without a target.

    Example:

    >>> Budget(max_size_bytes=50_000, min_accuracy=0.9).violations(
    ...     {"size_bytes": 60_000, "accuracy": 0.95})
    {'size_bytes': {'value': 60000, 'limit': 50000}}
    """

    max_size_bytes: int | None = None
    max_latency_ms: float | None = None
    target: str | None = None
    max_arena_bytes: int | None = None
    min_accuracy: float | None = None

    # (metric name, budget field, True if the metric must stay <= the limit)
    _LIMITS = (("size_bytes", "max_size_bytes", True), ("latency_ms", "max_latency_ms", True),
               ("arena_bytes", "max_arena_bytes", True), ("accuracy", "min_accuracy", False))

    def __post_init__(self):
        for name in ("max_size_bytes", "max_latency_ms", "max_arena_bytes"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"Budget {name}={value} must be positive (or None for no "
                                 "limit).")
        if self.min_accuracy is not None and not 0.0 <= self.min_accuracy <= 1.0:
            raise ValueError(f"Budget min_accuracy={self.min_accuracy} is outside [0, 1]; "
                             "give a fraction, e.g. 0.9 for 90%.")
        if self.max_latency_ms is not None and not self.target:
            raise ValueError("Budget max_latency_ms needs target=, the device the latency is "
                             "estimated for (a device profile of tfedge's benchmark harness).")

    @property
    def measures_latency(self) -> bool:
        return bool(self.target)

    @property
    def measures_arena(self) -> bool:
        return self.max_arena_bytes is not None

    def violations(self, metrics: dict[str, float]) -> dict[str, dict[str, float]]:
        """The limits ``metrics`` break: ``{metric: {"value": v, "limit": l}}``.

        A limited metric that is missing or NaN counts as a violation.
        """
        broken = {}
        for metric, field, upper in self._LIMITS:
            limit = getattr(self, field)
            if limit is None:
                continue
            value = metrics.get(metric)
            if value is None or (isinstance(value, float) and math.isnan(value)) \
                    or (value > limit if upper else value < limit):
                broken[metric] = {"value": value, "limit": limit}
        return broken

    def penalty(self, metrics: dict[str, float]) -> float:
        """Sum of relative excesses over the limits (0 when feasible)."""
        total = 0.0
        for metric, v in self.violations(metrics).items():
            value, limit = v["value"], v["limit"]
            if value is None or (isinstance(value, float) and math.isnan(value)):
                total += 1.0
            elif metric == "accuracy":
                total += limit - value
            else:
                total += value / limit - 1.0
        return total

    def get_config(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "Budget":
        return cls(**config)


def score(accuracy: float, budget: Budget, metrics: dict[str, float]) -> float:
    """The objective keras-tuner maximizes.

    A feasible trial scores its int8 accuracy (in [0, 1]); an infeasible one
    scores ``accuracy - 1 - penalty``, below every feasible trial, and less
    so the closer it is to the budget, which steers Bayesian optimization
    toward the feasible region.
    """
    penalty = budget.penalty(metrics)
    return float(accuracy) if penalty == 0.0 and not budget.violations(metrics) \
        else float(accuracy) - 1.0 - penalty


# ----------------------------------------------------------------------------
# Search space
# ----------------------------------------------------------------------------
@dataclasses.dataclass
class SearchSpace:
    """The choices ``tune`` searches over. A one-value list fixes that setting.

    Args:
        final_sparsity: pruning targets; 0 means no pruning.
        prune_end: where the pruning schedule ends, as a fraction of the
            training epochs (the rest fine-tunes at the final sparsity).
        quantize: QAT off/on choices (``[False]``, ``[True]`` or both). With
            pruning, QAT (prune-preserving) fine-tunes from the epoch pruning
            ends; without, it trains from the start.
        width: width multipliers (channels and units of every layer but the
            output layers are scaled; with a ``build_fn`` it is passed on).
        resolution: square input sides in pixels; None keeps the data's own.
        distill: distillation off/on choices (on needs ``teacher=``).
        distill_alpha: weights of the hard-label loss when distilling
            (:class:`tfedge.distill.DistillConfig`'s ``alpha``; the soft
            targets get ``1 - alpha``).
        temperature: distillation temperatures.

    Raises:
        ValueError: for empty choice lists or values out of range.

    Example:

    >>> SearchSpace(final_sparsity=[0.5, 0.8], width=[0.5, 1.0]).width
    [0.5, 1.0]
    """

    final_sparsity: Sequence[float] = (0.0, 0.5, 0.75, 0.9)
    prune_end: Sequence[float] = (0.5, 1.0)
    quantize: Sequence[bool] = (False,)
    width: Sequence[float] = (0.5, 1.0)
    resolution: Sequence[int | None] = (None,)
    distill: Sequence[bool] = (False,)
    distill_alpha: Sequence[float] = (0.1,)
    temperature: Sequence[float] = (4.0,)

    def __post_init__(self):
        for f in dataclasses.fields(self):
            values = getattr(self, f.name)
            if isinstance(values, (int, float, bool)) or values is None:
                values = [values]
            values = list(values)
            if not values:
                raise ValueError(f"SearchSpace {f.name} is empty: give at least one value.")
            setattr(self, f.name, values)
        checks = (("final_sparsity", lambda v: 0.0 <= v < 1.0, "in [0, 1)"),
                  ("prune_end", lambda v: 0.0 < v <= 1.0, "in (0, 1]"),
                  ("width", lambda v: v > 0, "positive"),
                  ("resolution", lambda v: v is None or (int(v) == v and v > 0),
                   "a positive number of pixels or None"),
                  ("distill_alpha", lambda v: 0.0 <= v <= 1.0, "in [0, 1]"),
                  ("temperature", lambda v: v > 0, "positive"))
        for name, ok, what in checks:
            bad = [v for v in getattr(self, name) if not ok(v)]
            if bad:
                raise ValueError(f"SearchSpace {name} values {bad} must be {what}.")

    def declare(self, hp: Any) -> None:
        """Declares the choices on a ``keras_tuner.HyperParameters``.

        The pruning length exists only for trials that prune, and the
        distillation weights only for trials that distill (keras-tuner
        conditional scopes), so no two trials differ only in a setting that
        does nothing.
        """
        def choice(name, values):
            keys = list(dict.fromkeys(_hp_value(v) for v in values))
            if len(keys) == 1:
                hp.Fixed(name, keys[0])
            else:
                hp.Choice(name, keys, ordered=not isinstance(keys[0], bool))

        choice("final_sparsity", self.final_sparsity)
        pruned = sorted({float(v) for v in self.final_sparsity if v > 0})
        if pruned:
            with hp.conditional_scope("final_sparsity", pruned):
                choice("prune_end", self.prune_end)
        choice("quantize", self.quantize)
        choice("width", self.width)
        choice("resolution", self.resolution)
        choice("distill", self.distill)
        if any(self.distill):
            with hp.conditional_scope("distill", [True]):
                choice("distill_alpha", self.distill_alpha)
                choice("temperature", self.temperature)

    def get_config(self) -> dict[str, Any]:
        return {f.name: list(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "SearchSpace":
        return cls(**config)


def _hp_value(value: Any) -> Any:
    """keras-tuner choices must be one type and not None: None -> 0."""
    if value is None:
        return 0
    if isinstance(value, bool):
        return value
    return float(value) if isinstance(value, float) else int(value)


@dataclasses.dataclass
class TrialSettings:
    """One candidate's settings, read from a keras-tuner trial's values."""

    final_sparsity: float = 0.0
    prune_end: float = 1.0
    quantize: bool = False
    width: float = 1.0
    resolution: int | None = None
    distill: bool = False
    distill_alpha: float = 0.1
    temperature: float = 4.0
    epochs: int | None = None

    @classmethod
    def from_values(cls, values: dict[str, Any], epochs: int) -> "TrialSettings":
        return cls(final_sparsity=float(values.get("final_sparsity", 0.0)),
                   prune_end=float(values.get("prune_end", 1.0)),
                   quantize=bool(values.get("quantize", False)),
                   width=float(values.get("width", 1.0)),
                   resolution=int(values.get("resolution", 0)) or None,
                   distill=bool(values.get("distill", False)),
                   distill_alpha=float(values.get("distill_alpha", 0.1)),
                   temperature=float(values.get("temperature", 4.0)),
                   epochs=int(values.get("tuner/epochs", epochs)))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------
# Building candidates
# ----------------------------------------------------------------------------
def _width_key(layer: Any) -> str | None:
    config = layer.get_config()
    for key in ("filters", "units"):
        if isinstance(config.get(key), int):
            return key
    return None


def _head_layers(model: Any) -> set[str]:
    """Names of the layers that set each output's width (kept unscaled)."""
    heads: set[str] = set()
    seen: set[int] = set()
    stack = list(model.outputs)
    while stack:
        tensor = stack.pop()
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        layer, node_index, _ = tensor._keras_history
        if _width_key(layer):
            heads.add(layer.name)
            continue
        stack.extend(layer._inbound_nodes[node_index].keras_inputs)
    return heads


def scale_model(model: Any, width: float = 1.0, input_shape: Sequence[int] | None = None) -> Any:
    """A freshly initialized copy of ``model`` with scaled width and input size.

    The ``filters`` / ``units`` of every layer are multiplied by ``width``
    (rounded, at least 1), except the layers that produce the model's outputs,
    so the number of classes stays. Weights are not copied: the copy is for
    training from scratch.

    Args:
        model: a tf_keras functional or Sequential model.
        width: the width multiplier.
        input_shape: the new input shape without the batch dimension
            (default: the model's own).

    Returns:
        The new, untrained model.

    Raises:
        UnsupportedModelError: the model cannot be rebuilt this way (nested
            models, several inputs, or outputs whose shape would change);
            pass a ``build_fn`` to ``tune`` instead.
    """
    from tfedge._keras import keras
    from tfedge.errors import UnsupportedModelError

    if len(model.inputs) != 1:
        raise UnsupportedModelError(
            f"{model.name!r} has {len(model.inputs)} inputs; tune can rescale only single-"
            "input models. Pass build_fn=... that builds the model for a width and input shape.")
    if width != 1.0 and any(isinstance(layer, keras.Model) for layer in model.layers):
        raise UnsupportedModelError(
            f"{model.name!r} contains nested models, whose layers tune cannot rescale. Pass "
            "build_fn=... that builds the model for a width and input shape.")
    heads = _head_layers(model)

    def clone_layer(layer):
        config = layer.get_config()
        key = _width_key(layer)
        if key and layer.name not in heads and width != 1.0:
            config[key] = max(1, int(round(config[key] * width)))
        return layer.__class__.from_config(config)

    shape = tuple(input_shape) if input_shape is not None else tuple(model.inputs[0].shape[1:])
    inputs = keras.Input(shape, dtype=model.inputs[0].dtype)
    try:
        scaled = keras.models.clone_model(model, input_tensors=inputs, clone_function=clone_layer)
    except (ValueError, TypeError, NotImplementedError) as err:
        raise UnsupportedModelError(
            f"{model.name!r} could not be rebuilt at width {width} and input {shape}: {err}. "
            "Pass build_fn=... that builds the model for a width and input shape.") from err
    for old, new in zip(model.outputs, scaled.outputs):
        if tuple(old.shape[1:]) != tuple(new.shape[1:]) and input_shape is None:
            raise UnsupportedModelError(
                f"Rescaling {model.name!r} changed an output shape from {tuple(old.shape)} to "
                f"{tuple(new.shape)}. Pass build_fn=... instead.")
    scaled._name = model.name
    return scaled


def resize_images(x: np.ndarray, resolution: int | None) -> np.ndarray:
    """Images (N, H, W, C) resized to ``resolution`` x ``resolution`` (area/bilinear)."""
    if resolution is None or tuple(x.shape[1:3]) == (resolution, resolution):
        return x
    import tensorflow as tf

    if x.ndim != 4:
        raise ValueError(f"resolution choices need image inputs (N, H, W, C); got shape "
                         f"{x.shape}. Use resolution=[None].")
    return tf.image.resize(x, (resolution, resolution), antialias=True).numpy().astype(x.dtype)


# ----------------------------------------------------------------------------
# Measurements that belong to other stages
# ----------------------------------------------------------------------------
def _latency_ms(artifact: Any, target: str, method: str = "macs") -> float:
    """Estimated single-thread latency on ``target``, from the benchmark harness.

    ``method="macs"`` is the harness's fast estimate (MACs over the device's
    calibrated MAC rate); ``"instructions"`` emulates one inference under
    qemu (exact instruction count / IPC / clock), seconds to minutes a trial.
    """
    from tfedge import bench

    return float(bench.estimate_latency(artifact, target, method=method).latency_ms)


def _arena_bytes(artifact: Any, limit: int | None) -> tuple[int | None, str | None]:
    """Tensor-arena bytes TFLite Micro needs, measured by :mod:`tfedge.micro`.

    Runs the flatbuffer in TFLM's interpreter (in a subprocess, as the micro
    export does) on one all-zero input; the arena does not depend on the
    values. When TFLM cannot report the smallest arena, the budget's own
    question is answered directly: does the model run in ``limit`` bytes?

    Returns:
        ``(bytes, note)``: the measured arena and None; or, when only the
        limit could be checked, ``(limit, note)`` if the model runs in it
        (an upper bound) and ``(None, note)`` if it does not.
    """
    from tfedge import micro
    from tfedge.errors import VerificationError

    if micro.tflm_version() is None:
        raise TFEdgeError("An arena budget (Budget(max_arena_bytes=...)) is measured in "
                          "TensorFlow Lite for Microcontrollers: pip install tflite-micro")
    inputs = [np.zeros((1,) + tuple(t.shape[1:]), dtype=t.numpy_dtype) for t in artifact.inputs]
    outputs = len(artifact.outputs)
    try:
        return int(micro.run_tflm(artifact.content, inputs, num_outputs=outputs).arena_bytes), None
    except VerificationError as err:
        if limit is None:
            raise
        reason = _short_error(err)
    try:
        micro.run_tflm(artifact.content, inputs, num_outputs=outputs, arena_size=int(limit))
    except VerificationError as err:
        return None, f"arena: does not run in {int(limit)} bytes ({_short_error(err)})"
    return int(limit), (f"arena: runs in the budget's {int(limit)} bytes; smallest not "
                        f"measured ({reason})")


def check_measurable(budget: Budget) -> None:
    """Fails fast, before any training, if the budget cannot be measured.

    Raises:
        ValueError: an unknown target device (the message lists the profiles).
        TFEdgeError: an arena budget without TensorFlow Lite Micro installed.
    """
    if budget.measures_latency:
        from tfedge import devices

        devices.get_profile(budget.target)
    if budget.measures_arena:
        from tfedge import micro

        if micro.tflm_version() is None:
            raise TFEdgeError("An arena budget (Budget(max_arena_bytes=...)) is measured in "
                              "TensorFlow Lite for Microcontrollers: pip install tflite-micro")


# ----------------------------------------------------------------------------
# One trial: the real pipeline
# ----------------------------------------------------------------------------
@dataclasses.dataclass
class TrialRecord:
    """One trial's settings, measurements and verdict.

    Attributes:
        trial_id: keras-tuner's trial id.
        status: ``"COMPLETED"``, ``"FAILED"``, ``"RUNNING"`` ...
        settings: the :class:`TrialSettings` as a dict.
        metrics: ``accuracy`` (int8, validation), ``keras_accuracy`` (float
            model), ``size_bytes``, ``sparsity`` and, when measured,
            ``latency_ms`` and ``arena_bytes``; ``score`` is the objective.
        violations: the budget limits broken (empty when feasible).
        artifact_path: the trial's ``.tflite`` file, if it was kept.
        message: why a failed trial failed; for a completed one, which
            tuner ran it and any measurement notes (``"tuner tuner0; arena: ..."``).
        seconds: wall time of the trial.
    """

    trial_id: str
    status: str
    settings: dict[str, Any]
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    violations: dict[str, Any] = dataclasses.field(default_factory=dict)
    artifact_path: str | None = None
    message: str | None = None
    seconds: float | None = None
    validation: dict[str, Any] | None = None

    @property
    def feasible(self) -> bool:
        return self.status == "COMPLETED" and not self.violations

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "feasible": self.feasible}


def run_pipeline(settings: TrialSettings, *, make_model: Callable[[float, tuple], Any],
                 compile_fn: Callable[[Any], Any], data: tuple[np.ndarray, np.ndarray],
                 validation_data: tuple[np.ndarray, np.ndarray], batch_size: int,
                 teacher: Any = None, num_calibration: int = 300,
                 strategy: Any = None) -> tuple[Any, Any, Any]:
    """Build -> wrap -> fit -> finish -> int8 convert -> validate, for one setting.

    Returns:
        ``(artifact, report, plain_model)``: the int8 TFLiteArtifact, the
        ValidationReport of the flatbuffer on ``validation_data``, and the
        finished Keras model.
    """
    import tfedge

    x, y = data
    x_val, y_val = validation_data
    x = resize_images(x, settings.resolution)
    x_val = resize_images(x_val, settings.resolution)
    epochs = settings.epochs or 1
    scope = strategy.scope() if strategy is not None else contextlib.nullcontext()
    with scope:
        model = make_model(settings.width, tuple(x.shape[1:]))
        options = _wrap_options(settings, epochs, teacher, tuple(x.shape[1:]))
        trainee = tfedge.wrap(model, **options) if options else model
        compile_fn(trainee)
    trainee.fit(x, y, epochs=epochs, batch_size=batch_size, verbose=0)
    plain = trainee.finish() if hasattr(trainee, "finish") else trainee
    artifact = tfedge.convert(plain, representative_data=x[:num_calibration])
    report = tfedge.validate(artifact, plain, x_val, y_val)
    return artifact, report, plain


def _wrap_options(settings: TrialSettings, epochs: int, teacher: Any,
                  input_shape: tuple[int, ...]) -> dict[str, Any]:
    """``tfedge.wrap`` arguments for one trial's settings.

    Pruning ramps to its final sparsity over ``prune_end`` of the epochs.
    With QAT too, pruning must end before the last epoch, and QAT
    (sparsity-preserving) fine-tunes from the epoch pruning ends.

    Raises:
        ValueError: settings that cannot run in ``epochs`` epochs, or a
            teacher whose input differs from this trial's by more than size.
    """
    from tfedge import prune as prune_lib

    options: dict[str, Any] = {}
    prune_end = settings.prune_end * epochs
    if settings.final_sparsity > 0 and settings.quantize:
        if epochs < 2:
            raise ValueError("Pruning followed by QAT needs at least 2 epochs (one to prune, "
                             "one to fine-tune quantization-aware); raise epochs.")
        prune_end = min(math.ceil(prune_end), epochs - 1)
    if settings.final_sparsity > 0:
        options["prune"] = prune_lib.PruneConfig(settings.final_sparsity,
                                                 end_epoch=max(prune_end, 1e-6))
    if settings.quantize:
        from tfedge.quantize import QATConfig

        options["quantize"] = QATConfig(
            start_epoch=int(prune_end) if settings.final_sparsity > 0 else 0)
    if settings.distill:
        if teacher is None:
            raise ValueError("distill=True needs teacher= (a trained tf_keras model).")
        from tfedge.distill import DistillConfig

        options["teacher"] = _teacher_at(teacher, tuple(input_shape))
        options["distill"] = DistillConfig(temperature=settings.temperature,
                                           alpha=settings.distill_alpha)
    return options


def _teacher_at(teacher: Any, input_shape: tuple[int, ...]) -> Any:
    """The teacher, taking this trial's input size (resized back to its own).

    A student at a lower resolution still learns from the teacher's soft
    targets: the teacher sees the same low-resolution images, resized to the
    size it was trained on by a ``Resizing`` layer in front of it.

    Raises:
        ValueError: the inputs differ by more than height and width.
    """
    from tfedge._keras import keras

    own = tuple(teacher.inputs[0].shape[1:])
    if own == input_shape or (len(own) == len(input_shape) and None in own[:2]
                               and own[2:] == input_shape[2:]):
        return teacher
    if len(own) != 3 or len(input_shape) != 3 or own[2] != input_shape[2] or None in own:
        raise ValueError(f"The teacher takes inputs of shape {own}, but this trial's inputs "
                         f"are {input_shape}: tune can only resize images (H, W, C) with the "
                         "same channels for the teacher.")
    inputs = keras.Input(input_shape)
    resized = keras.layers.Resizing(own[0], own[1], name="teacher_resize")(inputs)
    return keras.Model(inputs, teacher(resized, training=False),
                       name=f"{teacher.name}_from_{input_shape[0]}x{input_shape[1]}")


def _tuner_class():
    """keras_tuner.Tuner subclass, built lazily: keras-tuner imports Keras 3."""
    import keras_tuner as kt

    class EdgeTuner(kt.Tuner):
        """Runs each trial through tfedge's pipeline and scores the int8 model.

        keras-tuner's documented extension point: ``run_trial`` returns the
        metrics dict; the oracle (Bayesian, random or Hyperband) decides what
        to try next.
        """

        def __init__(self, oracle, *, pipeline: dict[str, Any], budget: Budget,
                     epochs: int, seed: int, latency_method: str = "macs", **kwargs):
            self.pipeline = pipeline
            self.latency_method = latency_method
            self.budget = budget
            self.epochs = epochs
            self.seed = seed
            self.ran: list[str] = []
            super().__init__(oracle, **kwargs)

        def run_trial(self, trial, *args, **kwargs):
            from tfedge._keras import keras

            start = time.time()
            settings = TrialSettings.from_values(trial.hyperparameters.values, self.epochs)
            keras.backend.clear_session()
            keras.utils.set_random_seed(self.seed + _trial_number(trial.trial_id))
            logging.info("tfedge tune: trial %s: %s", trial.trial_id, settings)
            self.ran.append(trial.trial_id)
            trial_dir = self.get_trial_dir(trial.trial_id)
            record = TrialRecord(trial.trial_id, "RUNNING", settings.to_dict())
            notes: list[str] = []
            try:
                artifact, report, _ = run_pipeline(
                    settings, strategy=self.distribution_strategy, **self.pipeline)
                metrics = {"accuracy": float(report.tflite_accuracy),
                           "keras_accuracy": float(report.keras_accuracy),
                           "size_bytes": float(artifact.size_bytes),
                           "compressed_bytes": float(len(zlib.compress(artifact.content, 9))),
                           "sparsity": float(_weight_sparsity(artifact))}
                if self.budget.measures_latency:
                    metrics["latency_ms"] = _latency_ms(artifact, self.budget.target,
                                                        self.latency_method)
                if self.budget.measures_arena:
                    arena, note = _arena_bytes(artifact, self.budget.max_arena_bytes)
                    if arena is not None:
                        metrics["arena_bytes"] = float(arena)
                    if note:
                        notes.append(note)
            except Exception as err:  # recorded, then keras-tuner marks the trial failed
                record.status, record.message = "FAILED", _short_error(err)
                record.seconds = time.time() - start
                _write_json(os.path.join(trial_dir, TRIAL_FILENAME), record.to_dict())
                logging.warning("tfedge tune: trial %s failed: %s", trial.trial_id,
                                record.message)
                if isinstance(err, (TFEdgeError, ValueError)):
                    raise kt.errors.FailedTrialError(record.message) from err
                raise
            record.violations = self.budget.violations(metrics)
            metrics["feasible"] = 0.0 if record.violations else 1.0
            metrics["score"] = score(metrics["accuracy"], self.budget, metrics)
            record.status, record.metrics = "COMPLETED", metrics
            record.validation = report.to_dict()
            record.artifact_path = artifact.save(os.path.join(trial_dir, MODEL_FILENAME))
            record.seconds = time.time() - start
            record.message = "; ".join([f"tuner {self.tuner_id}"] + notes)
            _write_json(os.path.join(trial_dir, TRIAL_FILENAME), record.to_dict())
            logging.info("tfedge tune: trial %s: int8 accuracy %.4f, %d bytes, %s",
                         trial.trial_id, metrics["accuracy"], metrics["size_bytes"],
                         "feasible" if not record.violations else
                         "infeasible (" + ", ".join(record.violations) + ")")
            return metrics

        def save_model(self, trial_id, model, step=0):  # the trial saved its .tflite
            pass

        def load_model(self, trial):
            from tfedge.convert import load
            return load(os.path.join(self.get_trial_dir(trial.trial_id), MODEL_FILENAME))

    return EdgeTuner


def _short_error(err: BaseException) -> str:
    """One line saying what went wrong (Keras wraps errors in long messages)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    named = [line for line in lines if line.split(":")[0].endswith(("Error", "Exception"))]
    text = named[-1] if named else (lines[0] if lines else "")
    return f"{type(err).__name__}: {text}"[:500]


def _trial_number(trial_id: str) -> int:
    try:
        return int(trial_id)
    except ValueError:
        return abs(hash(trial_id)) % 10_000


def _weight_sparsity(artifact: Any) -> float:
    """Fraction of zeros over all int8 weight tensors of the flatbuffer."""
    rows = artifact.flatbuffer.weight_sparsity()
    total = sum(r["size"] for r in rows)
    return sum(r["sparsity"] * r["size"] for r in rows) / total if total else 0.0


def _write_json(path: str, data: Any) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(to_json(data) + "\n")
    os.replace(tmp, path)


# ----------------------------------------------------------------------------
# Results: Pareto front, table, JSON, plot, best bundle
# ----------------------------------------------------------------------------
def pareto_front(points: Sequence[dict[str, float]], maximize: Sequence[str] = ("accuracy",),
                 minimize: Sequence[str] = ("size_bytes", "latency_ms")) -> list[int]:
    """Indices of the points no other point dominates.

    ``a`` dominates ``b`` when it is at least as good on every objective and
    better on one. Objectives missing from every point are ignored.

    Example:

    >>> pareto_front([{"accuracy": .9, "size_bytes": 10}, {"accuracy": .8, "size_bytes": 20},
    ...               {"accuracy": .7, "size_bytes": 5}])
    [0, 2]
    """
    keys = [(k, 1.0) for k in maximize] + [(k, -1.0) for k in minimize]
    keys = [(k, s) for k, s in keys if any(p.get(k) is not None for p in points)]

    def vector(p):
        return [s * p[k] if p.get(k) is not None else -math.inf for k, s in keys]

    def dominates(b, a):
        return all(bj >= aj for aj, bj in zip(a, b)) and any(bj > aj for aj, bj in zip(a, b))

    vectors = [vector(p) for p in points]
    return [i for i, a in enumerate(vectors)
            if not any(dominates(b, a) for j, b in enumerate(vectors) if j != i)]


@dataclasses.dataclass
class TuneResult:
    """What a search found.

    Attributes:
        trials: every trial, feasible or not, in id order.
        front: ids of the feasible trials on the Pareto front.
        best: the best feasible trial (highest int8 accuracy, then smallest,
            then fastest), or None when no trial met the budget.
        budget: the budget the trials were checked against.
        ran: ids of the trials this call ran (the rest were loaded).
        role: ``"single"``, ``"chief"`` or ``"worker"`` (keras-tuner's
            distributed mode; only the chief and single processes report).
        files: paths of the written table, JSON, plot and best bundle.
        seconds: wall time of this call.
    """

    trials: list[TrialRecord]
    front: list[str]
    best: TrialRecord | None
    budget: Budget
    ran: list[str] = dataclasses.field(default_factory=list)
    role: str = "single"
    files: dict[str, str] = dataclasses.field(default_factory=dict)
    seconds: float = 0.0

    @property
    def infeasible(self) -> list[TrialRecord]:
        return [t for t in self.trials if t.status == "COMPLETED" and t.violations]

    def table(self) -> str:
        """All trials as a text table (Pareto members marked ``*``)."""
        has_latency = any("latency_ms" in t.metrics for t in self.trials)
        has_arena = any("arena_bytes" in t.metrics for t in self.trials)
        headers = ["trial", "sparsity", "prune end", "qat", "width", "res", "distill", "epochs",
                   "int8 acc", "float acc", "size B", "zlib B"]
        headers += ["latency ms"] * has_latency + ["arena B"] * has_arena
        headers += ["feasible", "pareto", "note"]
        rows = []
        for t in self.trials:
            s, m = t.settings, t.metrics
            row = [t.trial_id, s.get("final_sparsity"), s.get("prune_end")
                   if s.get("final_sparsity") else "-", "on" if s.get("quantize") else "off",
                   s.get("width"), s.get("resolution") or "native",
                   f"a={s.get('distill_alpha')} T={s.get('temperature'):g}"
                   if s.get("distill") else "-", s.get("epochs") or "-",
                   _fmt(m.get("accuracy")), _fmt(m.get("keras_accuracy")),
                   _fmt(m.get("size_bytes"), int), _fmt(m.get("compressed_bytes"), int)]
            row += [_fmt(m.get("latency_ms"))] * has_latency
            row += [_fmt(m.get("arena_bytes"), int)] * has_arena
            row += ["yes" if t.feasible else ("no" if t.status == "COMPLETED" else t.status),
                    "*" if t.trial_id in self.front else "", _note(t)]
            rows.append(row)
        return format_table(headers, rows, title=f"tfedge tune: {len(self.trials)} trials, "
                                                  f"budget {_budget_text(self.budget)}")

    def to_dict(self) -> dict[str, Any]:
        return {"budget": self.budget.get_config(), "role": self.role,
                "trials": [t.to_dict() for t in self.trials], "pareto_front": self.front,
                "best": self.best.trial_id if self.best else None, "ran": self.ran,
                "files": self.files, "seconds": self.seconds}

    def __str__(self) -> str:
        if self.best is None:
            tail = "No trial met the budget."
        else:
            m = self.best.metrics
            tail = (f"Best feasible: trial {self.best.trial_id}, int8 accuracy "
                    f"{100 * m['accuracy']:.2f}%, {int(m['size_bytes']):,} bytes"
                    + (f", {m['latency_ms']:.3g} ms on {self.budget.target}"
                       if "latency_ms" in m else "")
                    + (f" -> {self.files['best']}" if "best" in self.files else ""))
        return self.table() + "\n" + tail


_KINDS = {"size_bytes": int, "arena_bytes": int, "compressed_bytes": int}


def _note(trial: TrialRecord, width: int = 70) -> str:
    """The table's note: broken limits and measurement notes, or why it failed."""
    if trial.status != "COMPLETED":
        return (trial.message or "").splitlines()[0][:width] if trial.message else ""
    parts = []
    for key, v in trial.violations.items():
        kind = _KINDS.get(key, float)
        if v["value"] is None:
            parts.append(f"{key} over {_fmt(v['limit'], kind)}")
        elif key == "accuracy":
            parts.append(f"accuracy {_fmt(v['value'])} < {_fmt(v['limit'])}")
        else:
            parts.append(f"{key} {_fmt(v['value'], kind)} > {_fmt(v['limit'], kind)}")
    parts += [m.split(";")[0].split(" (")[0] for m in (trial.message or "").split("; ")
              if m.startswith("arena:")]
    return "; ".join(parts)[:width]


def _fmt(value: Any, kind: type = float) -> Any:
    if value is None:
        return "-"
    if kind is int:
        return int(value)
    return round(float(value), 4)


def _budget_text(budget: Budget) -> str:
    parts = [f"{k}={v}" for k, v in budget.get_config().items() if v is not None]
    return ", ".join(parts) or "none"


def plot_pareto(result: TuneResult, path: str) -> str:
    """Writes accuracy vs size (and vs latency, when measured) as a PNG.

    Feasible trials are dots, infeasible ones crosses, the Pareto front is a
    line; budget limits are dashed lines. Uses matplotlib's Agg backend.

    Returns:
        ``path``.

    Raises:
        ImportError: matplotlib is missing (``pip install 'tfedge[tune]'``).
    """
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ImportError("The Pareto plot needs matplotlib: pip install 'tfedge[tune]' "
                          "(or pass plot=False).") from err
    done = [t for t in result.trials if t.status == "COMPLETED"]
    axes_keys = [("size_bytes", "model size (KB)", 1e-3, result.budget.max_size_bytes)]
    if any("latency_ms" in t.metrics for t in done):
        axes_keys.append(("latency_ms", f"estimated latency on {result.budget.target} (ms)",
                          1.0, result.budget.max_latency_ms))
    fig, axes = plt.subplots(1, len(axes_keys), figsize=(6 * len(axes_keys), 4.5), squeeze=False)
    for ax, (key, label, unit, limit) in zip(axes[0], axes_keys):
        for feasible, marker, color, name in ((True, "o", "tab:blue", "feasible"),
                                              (False, "x", "tab:red", "infeasible")):
            pts = [t for t in done if t.feasible == feasible and key in t.metrics]
            ax.scatter([t.metrics[key] * unit for t in pts],
                       [100 * t.metrics["accuracy"] for t in pts],
                       marker=marker, color=color, label=name)
            for t in pts:
                ax.annotate(t.trial_id, (t.metrics[key] * unit, 100 * t.metrics["accuracy"]),
                            fontsize=7, xytext=(3, 3), textcoords="offset points")
        front = sorted((t for t in done if t.trial_id in result.front and key in t.metrics),
                       key=lambda t: t.metrics[key])
        if front:
            ax.plot([t.metrics[key] * unit for t in front],
                    [100 * t.metrics["accuracy"] for t in front], "-o", color="tab:green",
                    markersize=11, markerfacecolor="none", label="Pareto front", zorder=0)
        if limit is not None:
            ax.axvline(limit * unit, linestyle="--", color="gray", label="budget")
        if result.budget.min_accuracy is not None:
            ax.axhline(100 * result.budget.min_accuracy, linestyle="--", color="gray")
        ax.set_xlabel(label)
        ax.set_ylabel("int8 top-1 accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"tfedge tune: {len(done)} trials, budget {_budget_text(result.budget)}",
                 fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _best(trials: Sequence[TrialRecord]) -> TrialRecord | None:
    feasible = [t for t in trials if t.feasible]
    if not feasible:
        return None
    return max(feasible, key=lambda t: (t.metrics["accuracy"], -t.metrics["size_bytes"],
                                        -t.metrics.get("latency_ms", 0.0)))


def _collect(tuner: Any) -> list[TrialRecord]:
    """Every trial the oracle knows, with tfedge's per-trial files when present."""
    records = []
    for trial_id, trial in sorted(tuner.oracle.trials.items()):
        path = os.path.join(tuner.project_dir, f"trial_{trial_id}", TRIAL_FILENAME)
        saved = None
        if os.path.exists(path):
            with open(path) as f:
                saved = json.load(f)
        status = str(trial.status)
        settings = TrialSettings.from_values(trial.hyperparameters.values, 0).to_dict()
        metrics = {name: float(trial.metrics.get_last_value(name))
                   for name in trial.metrics.metrics}
        record = TrialRecord(trial_id, status, settings, metrics)
        if saved:
            record.settings = saved.get("settings", settings)
            record.violations = saved.get("violations", {}) if status == "COMPLETED" else {}
            record.artifact_path = saved.get("artifact_path")
            record.seconds = saved.get("seconds")
            record.validation = saved.get("validation")
            record.message = saved.get("message")
        elif status == "COMPLETED" and metrics.get("feasible") == 0.0:
            record.violations = {"unknown": {"value": None, "limit": None}}
        if status != "COMPLETED" and trial.message and not record.message:
            record.message = trial.message.strip().splitlines()[-1]
        records.append(record)
    return records


def _report(trials: list[TrialRecord], budget: Budget, out_dir: str, *, plot: bool,
            name: str, **fields: Any) -> TuneResult:
    """Builds the result and writes pareto.txt / .json / .png and best/ into ``out_dir``."""
    feasible = [t for t in trials if t.feasible]
    front = [feasible[i].trial_id for i in pareto_front([t.metrics for t in feasible])]
    result = TuneResult(trials, front, _best(trials), budget, **fields)
    os.makedirs(out_dir, exist_ok=True)
    files = {"table": os.path.join(out_dir, "pareto.txt"),
             "json": os.path.join(out_dir, "pareto.json")}
    if plot:
        files["plot"] = plot_pareto(result, os.path.join(out_dir, "pareto.png"))
    best = result.best
    if best is not None and best.artifact_path and os.path.exists(best.artifact_path):
        files["best"] = _write_best(best, budget, os.path.join(out_dir, "best"), name)
    result.files = files
    with open(files["table"], "w") as f:
        f.write(str(result) + "\n")
    _write_json(files["json"], result.to_dict())
    return result


def _write_best(best: TrialRecord, budget: Budget, directory: str, name: str) -> str:
    from tfedge.card import model_card, write_model_card
    from tfedge.convert import load

    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, MODEL_FILENAME)
    shutil.copyfile(best.artifact_path, path)
    artifact = load(path)
    artifact.mode = "int8"
    card = model_card(artifact, name=name,
                      description="Best feasible model of a tfedge.tune search.",
                      validation=best.validation,
                      extra={"tune": {"trial_id": best.trial_id, "settings": best.settings,
                                      "metrics": best.metrics, "budget": budget.get_config()}})
    write_model_card(directory, card)
    return path


# ----------------------------------------------------------------------------
# The entry point
# ----------------------------------------------------------------------------
def _as_xy(data: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
    if not (isinstance(data, (tuple, list)) and len(data) == 2):
        raise ValueError(f"{what} must be a pair (x, y) of NumPy arrays: tune resizes and "
                         "slices the inputs per trial.")
    x, y = (np.asarray(v) for v in data)
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"{what}: x has {len(x)} samples and y has {len(y)} labels; give "
                         "the same, non-zero number.")
    return x.astype(np.float32) if x.dtype.kind == "f" else x, y


def _default_compile(optimizer: Any, loss: Any, learning_rate: float) -> Callable[[Any], Any]:
    from tfedge._keras import keras

    def compile_fn(model):
        opt = optimizer() if callable(optimizer) and not isinstance(optimizer, str) else optimizer
        if opt is None or opt == "adam":
            opt = keras.optimizers.Adam(learning_rate)
        model.compile(optimizer=opt, loss=loss, metrics=["accuracy"])
        return model
    return compile_fn


def _resumable_grid_oracle():
    import keras_tuner as kt

    class ResumableGridSearchOracle(kt.oracles.GridSearchOracle):
        """keras-tuner's grid oracle, able to resume.

        keras-tuner 1.4's GridSearchOracle keeps its walk through the grid in
        memory only (not in ``oracle.json``), so a reloaded search stops at
        once. When the parent says STOPPED, this walks the grid from its first
        combination and returns the first one not tried yet (the oracle's
        persisted ``_tried_so_far`` hashes), so only a truly exhausted grid stops.
        """

        def populate_space(self, trial_id):
            response = super().populate_space(trial_id)
            if response["status"] != kt.engine.trial.TrialStatus.STOPPED:
                return response
            hps = self.get_space()
            values = {hp.name: hp.default for hp in hps.space if hps.is_active(hp)}
            while values is not None:
                if not self._duplicate(values):
                    return {"status": kt.engine.trial.TrialStatus.RUNNING, "values": values}
                values = self._get_next_combination(values)
            return response

    return ResumableGridSearchOracle


def _make_oracle(kind: str, *, hp: Any, max_trials: int, epochs: int, seed: int) -> Any:
    import keras_tuner as kt

    objective = kt.Objective("score", direction="max")
    common = dict(objective=objective, hyperparameters=hp, seed=seed,
                  tune_new_entries=False, allow_new_entries=False,
                  max_consecutive_failed_trials=max(3, max_trials))
    if kind == "bayesian":
        return kt.oracles.BayesianOptimizationOracle(
            max_trials=max_trials, num_initial_points=min(3, max_trials), **common)
    if kind == "random":
        return kt.oracles.RandomSearchOracle(max_trials=max_trials, **common)
    if kind == "grid":
        return _resumable_grid_oracle()(max_trials=max_trials, **common)
    if kind == "hyperband":
        return kt.oracles.HyperbandOracle(max_epochs=epochs, factor=3, **common)
    raise ValueError(f"Unknown oracle {kind!r}; use one of {', '.join(ORACLES)}.")


def tune(build_fn: Any, data: Any, *, validation_data: Any = None,
         validation_split: float = 0.2, budget: Budget | None = None,
         space: SearchSpace | None = None, loss: Any = None, optimizer: Any = "adam",
         learning_rate: float = 1e-3, compile_fn: Callable[[Any], Any] | None = None,
         epochs: int = 3, batch_size: int = 32, max_trials: int = 10,
         oracle: str = "bayesian", teacher: Any = None, directory: str = "tfedge_tune",
         project_name: str = "search", overwrite: bool = False, output_dir: str | None = None,
         plot: bool = True, seed: int = 0, distribution_strategy: Any = None,
         num_calibration_samples: int = 300, latency_method: str = "macs",
         verbose: int = 0) -> TuneResult:
    """Searches compression settings whose int8 model fits a device budget.

    Each trial builds a candidate, trains it with ``tfedge.wrap`` (pruning,
    QAT and distillation as its settings say), converts it to a full-int8
    flatbuffer and scores that flatbuffer in LiteRT on the validation data.
    Trials are checked against ``budget``; infeasible ones are kept and
    marked. The search is keras-tuner's, so it resumes from ``directory``
    (finished trials are not rerun) and runs distributed when keras-tuner's
    ``KERASTUNER_*`` environment variables are set.

    Args:
        build_fn: either a function ``build_fn(width, input_shape)`` returning
            a fresh tf_keras model (``width`` is the multiplier,
            ``input_shape`` excludes the batch), or a tf_keras model, whose
            architecture is rebuilt at each width/resolution and trained from
            scratch (see :func:`scale_model`).
        data: training data ``(x, y)`` as NumPy arrays (classification, one
            output of class scores).
        validation_data: ``(x, y)`` the int8 model is scored on. Default: the
            last ``validation_split`` of ``data``. Keep the test set out.
        validation_split: used when ``validation_data`` is None.
        budget: the :class:`Budget`; None means no limits (plain Pareto search).
        space: the :class:`SearchSpace`.
        loss: the training loss (needed unless ``compile_fn`` is given), e.g.
            ``keras.losses.SparseCategoricalCrossentropy(from_logits=True)``.
        optimizer: ``"adam"`` or a callable returning a fresh optimizer.
        learning_rate: Adam's learning rate when ``optimizer="adam"``.
        compile_fn: ``compile_fn(model)`` compiling a model; overrides
            ``loss``/``optimizer`` (include an accuracy metric if you like).
        epochs: training epochs per trial (Hyperband: the maximum).
        batch_size: training batch size.
        max_trials: trials in total, counting those already in ``directory``
            (ignored by Hyperband, which sets its own schedule).
        oracle: ``"bayesian"`` (Gaussian-process Bayesian optimization),
            ``"random"``, ``"grid"`` (every combination, in order) or
            ``"hyperband"`` (trains many settings briefly and the best
            longer; each trial trains from scratch for its epoch count).
        teacher: a trained Keras model, for the distillation settings.
        directory: keras-tuner's directory (shared by chief and workers).
        project_name: keras-tuner's project name inside ``directory``.
        overwrite: start over instead of resuming.
        output_dir: where the table, JSON, plot and ``best/`` go (default:
            ``directory/project_name``).
        plot: write ``pareto.png`` (needs matplotlib).
        seed: seed of the oracle and of each trial's initialization.
        distribution_strategy: a ``tf.distribute`` strategy each trial trains
            under (e.g. ``MirroredStrategy`` over the local devices).
        num_calibration_samples: representative samples for int8 conversion.
        latency_method: how ``tfedge.bench.estimate_latency`` estimates the
            latency on ``budget.target``: ``"macs"`` (fast, from the MACs in
            the flatbuffer) or ``"instructions"`` (one run of LiteRT's aarch64
            build under qemu per trial; exact instruction count / IPC).
        verbose: keras-tuner's progress display (0 silent, 1 per trial).

    Returns:
        A :class:`TuneResult`. On a keras-tuner worker, only the trials that
        worker ran and no files (the chief writes the report).

    Raises:
        ValueError: bad data, settings or oracle name.
        TFEdgeError: an arena budget without TFLite Micro, or QAT/distillation
            asked of a ``wrap`` that lacks them.
        ImportError: keras-tuner is missing (``pip install 'tfedge[tune]'``).

    Example:

    >>> def build(width, input_shape):  # doctest: +SKIP
    ...     inputs = keras.Input(input_shape)
    ...     h = keras.layers.Conv2D(int(16 * width), 3, activation="relu")(inputs)
    ...     h = keras.layers.GlobalAveragePooling2D()(h)
    ...     return keras.Model(inputs, keras.layers.Dense(10)(h))
    >>> result = tfedge.tune(build, (x, y), budget=tfedge.Budget(max_size_bytes=8_000),
    ...                      loss=keras.losses.SparseCategoricalCrossentropy(True),
    ...                      max_trials=6)  # doctest: +SKIP
    """
    start = time.time()
    try:
        import keras_tuner as kt
    except ImportError as err:
        raise ImportError("tfedge.tune needs keras-tuner (and tensorboard, which it imports): "
                          "pip install 'tfedge[tune]'") from err
    from tfedge._keras import keras
    from keras_tuner.src.distribute import utils as dist_utils

    budget = budget or Budget()
    space = space or SearchSpace()
    if oracle not in ORACLES:
        raise ValueError(f"Unknown oracle {oracle!r}; use one of {', '.join(ORACLES)}.")
    if latency_method not in ("macs", "instructions"):
        raise ValueError(f"latency_method={latency_method!r}; use 'macs' (fast estimate) or "
                         "'instructions' (emulated under qemu).")
    if int(epochs) != epochs or epochs < 1:
        raise ValueError(f"epochs={epochs} must be a positive whole number.")
    if max_trials < 1:
        raise ValueError(f"max_trials={max_trials} must be at least 1.")
    if any(space.distill) and teacher is None:
        raise ValueError("The search space has distill=True but no teacher= was given.")
    if any(space.quantize) or any(space.distill):
        _check_wrap_supports(quantize=any(space.quantize), distill=any(space.distill))
    check_measurable(budget)
    if compile_fn is None:
        if loss is None:
            raise ValueError("tune needs loss= (e.g. keras.losses.SparseCategoricalCrossentropy"
                             "(from_logits=True)) or compile_fn=.")
        compile_fn = _default_compile(optimizer, loss, learning_rate)

    x, y = _as_xy(data, "data")
    if validation_data is None:
        if not 0.0 < validation_split < 1.0:
            raise ValueError("Give validation_data=(x, y), or validation_split in (0, 1).")
        n_val = max(1, int(round(len(x) * validation_split)))
        x, y, x_val, y_val = x[:-n_val], y[:-n_val], x[-n_val:], y[-n_val:]
    else:
        x_val, y_val = _as_xy(validation_data, "validation_data")

    if isinstance(build_fn, keras.Model):
        template = build_fn

        def make_model(width, input_shape):
            return scale_model(template, width, input_shape)
        name = template.name
    elif callable(build_fn):
        def make_model(width, input_shape):
            model = build_fn(width=width, input_shape=input_shape)
            if not isinstance(model, keras.Model):
                raise ValueError(f"build_fn returned {type(model).__name__}, not a tf_keras "
                                 "model (build it with tfedge.keras / tf.keras after "
                                 "`import tfedge`).")
            return model
        name = getattr(build_fn, "__name__", "model")
    else:
        raise ValueError("build_fn must be a tf_keras model or a function "
                         "build_fn(width, input_shape) -> model.")

    hp = kt.HyperParameters()
    space.declare(hp)
    pipeline = dict(make_model=make_model, compile_fn=compile_fn, data=(x, y),
                    validation_data=(x_val, y_val), batch_size=batch_size, teacher=teacher,
                    num_calibration=num_calibration_samples)
    with _quiet_tuner(verbose):
        tuner = _tuner_class()(
            _make_oracle(oracle, hp=hp, max_trials=max_trials, epochs=epochs, seed=seed),
            pipeline=pipeline, budget=budget, epochs=int(epochs), seed=seed,
            latency_method=latency_method,
            directory=directory, project_name=project_name, overwrite=overwrite,
            distribution_strategy=distribution_strategy)
    role = ("single" if not dist_utils.has_chief_oracle() else
            "chief" if dist_utils.is_chief_oracle() else "worker")
    logging.info("tfedge tune: %s, %s oracle, %s trials, budget %s", role, oracle,
                 max_trials if oracle != "hyperband" else "hyperband", _budget_text(budget))
    with _quiet_tuner(verbose):
        tuner.search(verbose=verbose)

    if role == "worker":
        trials = []
        for trial_id in tuner.ran:
            path = os.path.join(tuner.get_trial_dir(trial_id), TRIAL_FILENAME)
            if os.path.exists(path):
                with open(path) as f:
                    saved = json.load(f)
                saved.pop("feasible", None)
                trials.append(TrialRecord(**saved))
        return TuneResult(trials, [], None, budget, ran=list(tuner.ran), role=role,
                          seconds=time.time() - start)
    return _report(_collect(tuner), budget, output_dir or tuner.project_dir, plot=plot,
                   name=name, ran=list(tuner.ran), role=role, seconds=time.time() - start)


@contextlib.contextmanager
def _quiet_tuner(verbose: int):
    """With verbose=0, keeps keras-tuner's prints out of stdout and its failed
    trials' tracebacks out of stderr (tfedge logs a one-line reason instead)."""
    if verbose:
        yield
        return
    from keras_tuner.src import config as kt_config

    debug, kt_config.DEBUG = kt_config.DEBUG, False
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            # The Bayesian oracle's Gaussian process warns on every fit of few points.
            warnings.filterwarnings("ignore", module="sklearn.gaussian_process")
            yield
    finally:
        kt_config.DEBUG = debug


def _check_wrap_supports(*, quantize: bool, distill: bool) -> None:
    """Fails fast if the search asks for QAT / distillation this wrap lacks."""
    import inspect

    from tfedge.wrap import wrap

    params = inspect.signature(wrap).parameters
    missing = [name for name, wanted in (("quantize", quantize), ("teacher", distill))
               if wanted and name not in params]
    if missing:
        raise TFEdgeError(
            f"The search space asks for {' and '.join(missing)}, but this tfedge.wrap has no "
            f"{', '.join(m + '=' for m in missing)} option yet. Use quantize=[False] and "
            "distill=[False] in the SearchSpace.")


# ----------------------------------------------------------------------------
# Command-line helpers
# ----------------------------------------------------------------------------
def load_builder(spec: str) -> Callable[..., Any]:
    """``"path/to/file.py:function"`` or ``"package.module:function"`` -> the function.

    Raises:
        ValueError: malformed spec, missing file, module or function.
    """
    import importlib
    import importlib.util

    if ":" not in spec:
        raise ValueError(f"--builder {spec!r} must be FILE.py:FUNCTION or MODULE:FUNCTION, "
                         "e.g. models.py:build (the function takes width and input_shape).")
    where, name = spec.rsplit(":", 1)
    if where.endswith(".py"):
        if not os.path.exists(where):
            raise ValueError(f"--builder file {where!r} does not exist.")
        module_spec = importlib.util.spec_from_file_location(
            os.path.splitext(os.path.basename(where))[0], where)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as err:
            raise ValueError(f"--builder module {where!r} cannot be imported: {err}") from err
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ValueError(f"--builder: {where!r} has no function {name!r}.")
    return fn


def load_arrays(spec: str) -> tuple[tuple[np.ndarray, np.ndarray],
                                    tuple[np.ndarray, np.ndarray] | None]:
    """``"digits"`` or an ``.npz`` with ``x_train, y_train`` (and ``x_val, y_val``).

    Returns:
        ``((x, y), (x_val, y_val) or None)``. For ``digits`` the validation
        pair is the last 20% of scikit-learn's training split (the test split
        is left untouched).

    Raises:
        ValueError: unknown name, missing file or arrays.
    """
    if spec == "digits":
        from tfedge.data import load_digits

        (x, y), _ = load_digits()
        n_val = len(x) // 5
        return (x[:-n_val], y[:-n_val]), (x[-n_val:], y[-n_val:])
    if not spec.endswith(".npz") or not os.path.exists(spec):
        raise ValueError(f"--data {spec!r}: give 'digits' or an existing .npz file holding "
                         "x_train and y_train (and optionally x_val and y_val).")
    with np.load(spec) as arrays:
        missing = [k for k in ("x_train", "y_train") if k not in arrays]
        if missing:
            raise ValueError(f"{spec} lacks {', '.join(missing)}; it has "
                             f"{', '.join(arrays.files)}.")
        val = (arrays["x_val"], arrays["y_val"]) if "x_val" in arrays else None
        return (arrays["x_train"], arrays["y_train"]), val
