"""One trial of a search: the real pipeline, its measurements, and keras-tuner's Tuner.

:func:`run_pipeline` builds, wraps, trains, finishes, converts to int8 and
validates one candidate; the measurements that belong to other stages
(latency estimate, tensor arena) are asked of those stages. ``EdgeTuner``
(:func:`tuner_class`) is keras-tuner's documented extension point: a
``Tuner`` whose ``run_trial`` runs that pipeline and returns the metrics.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
import zlib
from typing import Any, Callable

import numpy as np
from absl import logging

from tfedge import devices, micro
from tfedge import prune as prune_lib
from tfedge._bench import estimate_latency
from tfedge._convert import convert
from tfedge._keras import keras
from tfedge._validate import validate
from tfedge._wrap import wrap
from tfedge.distill import DistillConfig
from tfedge.lowrank import LowRankConfig
from tfedge.quantize import QATConfig
from tfedge._tune.scaling import resize_images
from tfedge._tune.space import Budget, TrialSettings, score
from tfedge.artifact import load
from tfedge.errors import TFEdgeError, VerificationError
from tfedge.report import write_json

TRIAL_FILENAME = "tfedge_trial.json"
MODEL_FILENAME = "model.tflite"


def _latency_ms(artifact: Any, target: str, method: str = "macs") -> float:
    """Estimated single-thread latency on ``target``, from the benchmark harness.

    ``method="macs"`` is the harness's fast estimate (MACs over the device's
    calibrated MAC rate); ``"instructions"`` emulates one inference under
    qemu (exact instruction count / IPC / clock), seconds to minutes a trial.
    """
    return float(estimate_latency(artifact, target, method=method).latency_ms)


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

        devices.get_profile(budget.target)
    if budget.measures_arena:

        if micro.tflm_version() is None:
            raise TFEdgeError("An arena budget (Budget(max_arena_bytes=...)) is measured in "
                              "TensorFlow Lite for Microcontrollers: pip install tflite-micro")



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
    x, y = data
    x_val, y_val = validation_data
    x = resize_images(x, settings.resolution)
    x_val = resize_images(x_val, settings.resolution)
    epochs = settings.epochs or 1
    scope = strategy.scope() if strategy is not None else contextlib.nullcontext()
    with scope:
        model = make_model(settings.width, tuple(x.shape[1:]))
        options = _wrap_options(settings, epochs, teacher, tuple(x.shape[1:]))
        trainee = wrap(model, **options) if options else model
        compile_fn(trainee)
    trainee.fit(x, y, epochs=epochs, batch_size=batch_size, verbose=0)
    plain = trainee.finish() if hasattr(trainee, "finish") else trainee
    artifact = convert(plain, representative_data=x[:num_calibration])
    report = validate(artifact, plain, x_val, y_val)
    return artifact, report, plain


def _wrap_options(settings: TrialSettings, epochs: int, teacher: Any,
                  input_shape: tuple[int, ...]) -> dict[str, Any]:
    """``tfedge.wrap`` arguments for one trial's settings.

    Pruning (of weights, or of channels over ``channel_end``) ramps to its
    final sparsity over ``prune_end`` of the epochs; low-rank factorization
    happens before the first epoch, the following ones fine-tune.
    With QAT too, pruning must end before the last epoch, and QAT
    (sparsity-preserving) fine-tunes from the epoch pruning ends.

    Raises:
        ValueError: settings that cannot run in ``epochs`` epochs, or a
            teacher whose input differs from this trial's by more than size.
    """

    options: dict[str, Any] = {}
    pruned = settings.final_sparsity > 0 or settings.channel_fraction > 0
    prune_end = (settings.prune_end if settings.final_sparsity > 0
                 else settings.channel_end) * epochs
    if pruned and settings.quantize:
        if epochs < 2:
            raise ValueError("Pruning followed by QAT needs at least 2 epochs (one to prune, "
                             "one to fine-tune quantization-aware); raise epochs.")
        prune_end = min(math.ceil(prune_end), epochs - 1)
    if settings.final_sparsity > 0:
        options["prune"] = prune_lib.PruneConfig(settings.final_sparsity,
                                                 end_epoch=max(prune_end, 1e-6))
    elif settings.channel_fraction > 0:  # finish() rebuilds the narrower model
        options["prune"] = prune_lib.PruneConfig(settings.channel_fraction, structure="channel",
                                                 end_epoch=max(prune_end, 1e-6))
    if settings.rank_energy > 0 or settings.rank_macs > 0:  # factorized before epoch 0
        options["factorize"] = (LowRankConfig(energy=settings.rank_energy)
                                if settings.rank_energy > 0 else
                                LowRankConfig(macs=settings.rank_macs))
    if settings.quantize:

        options["quantize"] = QATConfig(
            start_epoch=int(prune_end) if pruned else 0)
    if settings.distill:
        if teacher is None:
            raise ValueError("distill=True needs teacher= (a trained tf_keras model).")

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


def tuner_class():
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
                write_json(os.path.join(trial_dir, TRIAL_FILENAME), record.to_dict())
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
            write_json(os.path.join(trial_dir, TRIAL_FILENAME), record.to_dict())
            logging.info("tfedge tune: trial %s: int8 accuracy %.4f, %d bytes, %s",
                         trial.trial_id, metrics["accuracy"], metrics["size_bytes"],
                         "feasible" if not record.violations else
                         "infeasible (" + ", ".join(record.violations) + ")")
            return metrics

        def save_model(self, trial_id, model, step=0):  # the trial saved its .tflite
            pass

        def load_model(self, trial):
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


