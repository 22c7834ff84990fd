"""Knowledge distillation: a frozen teacher's soft targets train the student.

The loss is Hinton et al.'s, as in the Keras distillation example::

    loss = alpha * hard + (1 - alpha) * soft + feature_weight * feature

* ``hard``: the loss given to ``compile`` (labels vs the student's output);
* ``soft``: KL(softmax(teacher / T) || softmax(student / T)) * T**2, the
  mean over the batch (the T**2 keeps its gradients on the scale of ``hard``);
  a model with several outputs names one loss per output (``outputs=``):
  ``"kl"`` (that softmax KL), ``"bce"`` (sigmoid soft targets: the binary KL
  between sigmoid(teacher / T) and sigmoid(student / T) per element, summed
  over the last axis, times T**2), ``"mse"`` (regression outputs such as box
  offsets: mean squared error, no temperature) or ``None`` (no soft loss for
  that output); ``soft`` is then the weighted sum of the per-output terms;
  ``output_masks`` restricts an output's term to the positions the teacher
  scores as positive in another output (a detector's box regression only
  on the anchors the teacher detects: the background boxes are noise);
* ``feature`` (optional): the mean squared error between named intermediate
  layers of the student and the teacher, summed over the pairs; a learned
  1x1 projection (a bias-free Dense on the channel axis) maps the student's
  channels to the teacher's when their widths differ.

The teacher only runs in inference mode and its variables are never handed
to the optimizer, so its weights (BatchNorm statistics too) do not change.
:class:`Distillation` is what ``tfedge.wrap(student, teacher=...)`` uses; it
follows the student through pruning and QAT, which rename and rebuild its
layers.

Example:

>>> DistillConfig(temperature=4.0, alpha=0.1).get_config()["temperature"]
4.0
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import tensorflow as tf

from tfedge._config import PhaseConfig
from tfedge._keras import keras
from tfedge.errors import UnsupportedModelError

# Prefixes tfmot gives a wrapped layer's name (pruning, clustering, QAT).
_WRAPPER_PREFIXES = ("prune_low_magnitude_", "cluster_", "quant_")


@dataclasses.dataclass(frozen=True, repr=False)
class DistillConfig(PhaseConfig):
    """How the student learns from the teacher.

    Args:
        temperature: softmax temperature T of the soft targets (> 0).
        alpha: weight of the hard-label loss, in [0, 1]; the soft-target
            loss gets ``1 - alpha``.
        features: optional feature matching: ``{student layer name: teacher
            layer name}`` or a list of such pairs. The two outputs must have
            the same shape except the last (channel) axis.
        feature_weight: weight of the feature-matching loss.
        from_logits: whether student and teacher output logits (True) or
            probabilities (False: their logarithm is used as logits, for
            ``"bce"`` their log-odds).
        outputs: the soft loss per model output, ``{output name or index:
            "kl" | "bce" | "mse" | None}``. Unnamed outputs get no soft loss.
            Default: a single-output model uses ``"kl"``; a model with
            several outputs must name them (there is no safe guess).
        output_weights: optional ``{output name or index: weight}`` of the
            per-output soft terms (default 1 each).
        output_masks: optional ``{output: mask output}`` (names or indices):
            that output's soft term is the mean over only the positions
            (every axis but the last) where the teacher's mask output, read
            as sigmoid scores (``from_logits=True``) or probabilities, is
            above ``mask_threshold`` in some channel; 0 for a batch with no
            such position. The two outputs must agree on every axis but the
            last. E.g. ``{"boxes": "scores"}``: box targets from the anchors
            the teacher detects, not from the background.
        mask_threshold: the score above which a position counts, in (0, 1).

    Raises:
        ValueError: for a temperature that is not positive, alpha outside
            [0, 1], a negative feature weight, malformed ``features``, a loss
            in ``outputs`` that is not one of the choices or a negative
            output weight, a malformed ``output_masks`` or a
            ``mask_threshold`` outside (0, 1).

    Example:

    >>> DistillConfig(temperature=2.0, alpha=0.5, features={"conv": "t_conv"}).features
    [('conv', 't_conv')]
    >>> DistillConfig(outputs={"boxes": "mse", "scores": "bce"}).outputs
    {'boxes': 'mse', 'scores': 'bce'}
    >>> DistillConfig(outputs={"boxes": "mse", "scores": "bce"},
    ...               output_masks={"boxes": "scores"}).output_masks
    {'boxes': 'scores'}
    """

    ARGUMENT = "distill"
    NONE_IS_DEFAULT = True  # distillation is on when wrap has a teacher

    temperature: float = 4.0
    alpha: float = 0.1
    _: dataclasses.KW_ONLY
    features: dict[str, str] | list[tuple[str, str]] | None = None
    feature_weight: float = 1.0
    from_logits: bool = True
    outputs: dict[str | int, str | None] | None = None
    output_weights: dict[str | int, float] | None = None
    output_masks: dict[str | int, str | int] | None = None
    mask_threshold: float = 0.5

    def _normalize(self) -> None:
        self._set("temperature", float(self.temperature))
        self._set("alpha", float(self.alpha))
        features = self.features
        if isinstance(features, dict):
            features = list(features.items())
        try:
            self._set("features", [(str(s), str(t)) for s, t in (features or [])])
        except (TypeError, ValueError) as err:
            raise ValueError("features must be {student layer: teacher layer} or a list of "
                             "(student layer, teacher layer) pairs.") from err
        self._set("feature_weight", float(self.feature_weight))
        self._set("from_logits", bool(self.from_logits))
        self._set("mask_threshold", float(self.mask_threshold))
        for field in ("outputs", "output_weights", "output_masks"):
            value = getattr(self, field)
            if value is None:
                continue
            if not isinstance(value, dict):
                raise ValueError(f"{field} must be a dict {{output name or index: ...}}, got "
                                 f"{type(value).__name__}.")
            self._set(field, {_output_key(k): v for k, v in value.items()})
        if self.outputs is not None:
            self._set("outputs", {k: (None if v is None else str(v).lower())
                                  for k, v in self.outputs.items()})
        if self.output_weights is not None:
            self._set("output_weights", {k: float(v) for k, v in self.output_weights.items()})
        if self.output_masks is not None:
            self._set("output_masks", {k: _output_key(v) for k, v in self.output_masks.items()})

    def _validate(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"temperature={self.temperature:g} must be positive (typical: "
                             "2 to 8).")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha={self.alpha:g} must be in [0, 1]: it weighs the "
                             "hard-label loss against the soft targets (1 - alpha).")
        if self.feature_weight < 0:
            raise ValueError(f"feature_weight={self.feature_weight:g} must be >= 0.")
        for key, loss in (self.outputs or {}).items():
            if loss not in OUTPUT_LOSSES:
                raise ValueError(
                    f"outputs[{key!r}]={loss!r} is not a soft loss: pick one of "
                    f"{', '.join(repr(c) for c in OUTPUT_LOSSES)} (kl: softmax classes, bce: "
                    "sigmoid scores, mse: regression such as boxes, None: no soft loss).")
        for key, weight in (self.output_weights or {}).items():
            if weight < 0:
                raise ValueError(f"output_weights[{key!r}]={weight:g} must be >= 0.")
        if not 0.0 < self.mask_threshold < 1.0:
            raise ValueError(f"mask_threshold={self.mask_threshold:g} must be in (0, 1): it "
                             "is a sigmoid score, e.g. 0.5.")
        for key, mask in (self.output_masks or {}).items():
            if key == mask:
                raise ValueError(f"output_masks[{key!r}] masks an output by itself: name "
                                 "the score output, e.g. output_masks={'boxes': 'scores'}.")

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config["features"] = [list(p) for p in self.features]
        for field in ("outputs", "output_weights", "output_masks"):
            if config[field] is not None:
                config[field] = dict(config[field])
        return config


# The soft losses an output can use (DistillConfig(outputs=...)).
OUTPUT_LOSSES = ("kl", "bce", "mse", None)


def _logit(p: float) -> float:
    return math.log(p) - math.log1p(-p)


def _output_key(key: Any) -> str | int:
    if isinstance(key, bool) or not isinstance(key, (str, int)):
        raise ValueError(f"An output is named by its name (str) or index (int), got {key!r}.")
    return key


def sigmoid_target_loss(teacher_logits: Any, student_logits: Any, temperature: float
                        ) -> tf.Tensor:
    """Binary KL(sigmoid(teacher / T) || sigmoid(student / T)) * T**2.

    Per element, summed over the last axis, the mean over the other axes:
    the sigmoid counterpart of :func:`soft_target_loss` for independent
    per-class scores (multi-label heads, detectors' class logits). It is the
    cross-entropy against the teacher's probabilities minus their entropy,
    so it is 0 when the student matches the teacher.

    Args:
        teacher_logits: teacher logits, ``(batch, ..., classes)``.
        student_logits: student logits, same shape.
        temperature: the temperature T.

    Returns:
        A scalar tensor.
    """
    return tf.reduce_mean(_sigmoid_kl(teacher_logits, student_logits, temperature))


def _sigmoid_kl(teacher_logits: Any, student_logits: Any, temperature: float) -> tf.Tensor:
    """:func:`sigmoid_target_loss` per position (every axis but the last)."""
    t = tf.cast(teacher_logits, tf.float32) / temperature
    s = tf.cast(student_logits, tf.float32) / temperature
    p = tf.sigmoid(t)
    kl = (tf.nn.sigmoid_cross_entropy_with_logits(labels=p, logits=s)
          - tf.nn.sigmoid_cross_entropy_with_logits(labels=p, logits=t))
    return tf.reduce_sum(kl, axis=-1) * (temperature ** 2)


def soft_target_loss(teacher_logits: Any, student_logits: Any, temperature: float) -> tf.Tensor:
    """KL(softmax(teacher / T) || softmax(student / T)) * T**2, batch mean.

    Args:
        teacher_logits: teacher outputs, ``(batch, classes)``.
        student_logits: student outputs, same shape.
        temperature: the softmax temperature T.

    Returns:
        A scalar tensor.
    """
    return tf.reduce_mean(_softmax_kl(teacher_logits, student_logits, temperature))


def _softmax_kl(teacher_logits: Any, student_logits: Any, temperature: float) -> tf.Tensor:
    """:func:`soft_target_loss` per position (every axis but the last)."""
    t = tf.cast(teacher_logits, tf.float32) / temperature
    s = tf.cast(student_logits, tf.float32) / temperature
    log_p_teacher = tf.nn.log_softmax(t, axis=-1)
    kl = tf.reduce_sum(tf.exp(log_p_teacher) * (log_p_teacher - tf.nn.log_softmax(s, axis=-1)),
                       axis=-1)
    return kl * (temperature ** 2)


def _find_layer(model: Any, name: str) -> Any:
    for candidate in (name, *(p + name for p in _WRAPPER_PREFIXES),
                      *("quant_" + p + name for p in _WRAPPER_PREFIXES)):
        try:
            return model.get_layer(candidate)
        except ValueError:
            continue
    raise ValueError(name)


def _feature_model(model: Any, names: list[str], role: str) -> Any:
    """A model giving ``model``'s outputs followed by the named layers' outputs."""
    outputs = list(model.outputs)
    for name in names:
        try:
            layer = _find_layer(model, name)
        except ValueError:
            raise ValueError(
                f"The {role} has no layer named {name!r} for feature matching (top-level "
                f"layers: {', '.join(l.name for l in model.layers)}). If QAT merged it into "
                "the previous layer (an activation after Conv+BatchNorm), match that "
                "layer's name instead.") from None
        outputs.append(layer.output)
    return keras.Model(model.inputs, outputs, name=f"{model.name}_features")


def resolve_outputs(config: DistillConfig, output_names: list[str]
                    ) -> list[tuple[int, str, str, float]]:
    """``(index, name, loss, weight)`` of each output that gets a soft loss.

    Args:
        config: the :class:`DistillConfig`.
        output_names: the teacher's output names, in order.

    Returns:
        One tuple per output with a soft loss, in output order.

    Raises:
        ValueError: several outputs and no ``outputs=``, or a key that names
            no output.
    """
    n = len(output_names)

    def index(key: str | int, field: str) -> int:
        return _output_index(key, output_names, field)

    if config.outputs is None:
        if n != 1:
            raise ValueError(
                f"The models have {n} outputs {output_names}: say which soft loss each one "
                f"gets with DistillConfig(outputs={{name or index: loss}}), loss one of "
                f"{', '.join(repr(c) for c in OUTPUT_LOSSES)} (kl: softmax classes, bce: "
                "sigmoid scores, mse: regression such as boxes, None: no soft loss), e.g. "
                "outputs={'boxes': 'mse', 'scores': 'bce'}.")
        losses = {0: "kl"}
    else:
        losses = {}
        for key, loss in config.outputs.items():
            i = index(key, "outputs")
            if i in losses:
                raise ValueError(f"outputs names output {output_names[i]!r} twice (by name "
                                 "and by index): keep one.")
            losses[i] = loss
    weights = {index(k, "output_weights"): w for k, w in (config.output_weights or {}).items()}
    return [(i, output_names[i], losses[i], weights.get(i, 1.0))
            for i in range(n) if losses.get(i) is not None]


def _output_index(key: str | int, output_names: list[str], field: str) -> int:
    """The index of the output ``key`` (a name or an index) names."""
    n = len(output_names)
    if isinstance(key, int):
        if not -n <= key < n:
            raise ValueError(f"{field}[{key}]: the teacher has {n} output(s), indices "
                             f"0..{n - 1}.")
        return key % n
    if key not in output_names:
        raise ValueError(f"{field}[{key!r}] names no output: the teacher's outputs are "
                         f"{output_names} (or use their indices 0..{n - 1}).")
    return output_names.index(key)


def resolve_masks(config: DistillConfig, teacher: Any) -> dict[int, int]:
    """``{output index: mask output index}`` of ``config.output_masks``.

    Raises:
        ValueError: a key that names no output, or two outputs whose shapes
            differ in more than the last axis.
    """
    names = list(teacher.output_names)
    masks = {}
    for key, mask in (config.output_masks or {}).items():
        i = _output_index(key, names, "output_masks")
        j = _output_index(mask, names, f"output_masks[{key!r}]: its value, so")
        a, b = tuple(teacher.outputs[i].shape[1:-1]), tuple(teacher.outputs[j].shape[1:-1])
        if a != b:
            raise ValueError(f"output_masks[{key!r}]={mask!r}: the outputs' positions differ "
                             f"({names[i]!r} {a}, {names[j]!r} {b}); the mask output must "
                             "score the same positions (all axes but the last agree).")
        masks[i] = j
    return masks


class Distillation:
    """The teacher, the loss terms and the projections of one distillation.

    A plain object (not a Keras layer) so the teacher's variables are never
    tracked as the student's: they cannot reach the optimizer.

    Args:
        teacher: a trained tf_keras model (functional or Sequential when
            ``features`` are matched). It is not changed.
        config: the :class:`DistillConfig`.
        student: the student network (plain, or wrapped by tfmot).

    Raises:
        UnsupportedModelError: the teacher is not a tf_keras model.
        ValueError: teacher and student outputs differ in number or shape,
            several outputs without ``outputs=`` (or naming no output), a
            named layer is missing, feature maps differ in shape, or
            ``from_logits`` does not match a softmax / sigmoid output.
    """

    def __init__(self, teacher: Any, config: DistillConfig, student: Any):
        if not isinstance(teacher, keras.Model):
            raise UnsupportedModelError(
                f"teacher must be a trained tf_keras model, got {type(teacher).__name__}. "
                "Load or build it with tf_keras (`tf.keras` after `import tfedge`).")
        self.teacher = teacher
        self.config = config
        self.num_outputs = len(teacher.outputs)
        if len(student.outputs) != self.num_outputs:
            raise ValueError(f"The teacher has {self.num_outputs} output(s) and the student "
                             f"{len(student.outputs)}: distillation pairs them in order, so "
                             "both need the same outputs.")
        names = list(teacher.output_names)
        for i, (t_out, s_out) in enumerate(zip(teacher.outputs, student.outputs)):
            t_shape, s_shape = tuple(t_out.shape[1:]), tuple(s_out.shape[1:])
            if t_shape != s_shape:
                raise ValueError(
                    f"The teacher's output {names[i]!r} {t_shape} and the student's "
                    f"{s_shape} differ: distillation needs the same classes (boxes, ...) "
                    "in the same order.")
        self.soft_outputs = resolve_outputs(config, names)
        self.masks = resolve_masks(config, teacher)
        if config.from_logits:
            for i, _, loss, _ in self.soft_outputs:
                if loss == "mse":
                    continue
                for role, model in (("teacher", teacher), ("student", student)):
                    layer = (model.layers[-1] if self.num_outputs == 1
                             else model.outputs[i]._keras_history.layer)
                    activation = getattr(layer, "activation", None)
                    if getattr(activation, "__name__", "") in ("softmax", "sigmoid"):
                        raise ValueError(
                            f"The {role}'s output {names[i]!r} ends in a "
                            f"{activation.__name__} but DistillConfig(from_logits=True). Pass "
                            "from_logits=False, or (better) end both models in logits.")
        self._teacher_model = teacher
        if config.features:
            self._teacher_model = _feature_model(teacher, [t for _, t in config.features],
                                                 "teacher")
        self.projections: dict[str, Any] = {}
        self._student_model = None
        self.bind(student)

    def bind(self, student: Any) -> None:
        """Follows the student to a new network (after a phase change)."""
        if not self.config.features:
            self._student_model = student
            return
        self._student_model = _feature_model(student, [s for s, _ in self.config.features],
                                              "student")
        n = self.num_outputs
        teacher_shapes = [tuple(t.shape[1:]) for t in self._teacher_model.outputs[n:]]
        for (s_name, t_name), s_out, t_shape in zip(
                self.config.features, self._student_model.outputs[n:], teacher_shapes):
            s_shape = tuple(s_out.shape[1:])
            if s_shape[:-1] != t_shape[:-1]:
                raise ValueError(
                    f"Feature maps {s_name!r} {s_shape} (student) and {t_name!r} {t_shape} "
                    "(teacher) differ in more than the channel axis: pick layers of the "
                    "same resolution.")
            if s_shape[-1] != t_shape[-1] and s_name not in self.projections:
                projection = keras.layers.Dense(t_shape[-1], use_bias=False,
                                                name=f"distill_projection_{s_name}")
                projection.build((None, s_shape[-1]))
                self.projections[s_name] = projection

    @property
    def trainable_variables(self) -> list[tf.Variable]:
        """The projections' variables (trained with the student)."""
        return [v for p in self.projections.values() for v in p.trainable_variables]

    @property
    def term_names(self) -> list[str]:
        """The loss terms reported besides ``loss`` and ``hard_loss``."""
        names = ["soft_loss"]
        if self.num_outputs > 1:
            names += [f"soft_loss_{name}" for _, name, _, _ in self.soft_outputs]
        if self.config.features:
            names.append("feature_loss")
        return names

    def student_forward(self, x: Any, training: bool) -> tuple[Any, list[Any]]:
        """(student output(s), student features) for a batch."""
        outputs = self._student_model(x, training=training)
        if not self.config.features:
            return outputs, []
        n = self.num_outputs
        return (outputs[0] if n == 1 else list(outputs[:n])), list(outputs[n:])

    def _logits(self, values: Any, loss: str = "kl") -> tf.Tensor:
        values = tf.cast(values, tf.float32)
        if self.config.from_logits or loss == "mse":
            return values
        if loss == "bce":
            values = tf.clip_by_value(values, 1e-7, 1.0 - 1e-7)
            return tf.math.log(values) - tf.math.log1p(-values)
        return tf.math.log(tf.clip_by_value(values, 1e-7, 1.0))

    def _soft(self, loss: str, teacher_output: Any, student_output: Any,
              mask_output: Any = None) -> tf.Tensor:
        t, s = self._logits(teacher_output, loss), self._logits(student_output, loss)
        if loss == "kl":
            per_position = _softmax_kl(t, s, self.config.temperature)
        elif loss == "bce":
            per_position = _sigmoid_kl(t, s, self.config.temperature)
        else:
            per_position = tf.reduce_mean(tf.square(s - t), axis=-1)
        if mask_output is None:
            return tf.reduce_mean(per_position)
        scores = self._logits(mask_output, "bce")
        mask = tf.cast(tf.reduce_max(scores, axis=-1) > _logit(self.config.mask_threshold),
                       tf.float32)
        return tf.reduce_sum(per_position * mask) / tf.maximum(tf.reduce_sum(mask), 1.0)

    def loss_terms(self, x: Any, student_output: Any, student_features: list[Any]
                   ) -> dict[str, tf.Tensor]:
        """The soft-target and feature-matching terms for a batch.

        Args:
            x: the batch's inputs (the teacher runs on them, in inference mode).
            student_output: the student's output on ``x`` (a list with
                several outputs).
            student_features: the student's named features (may be empty).

        Returns:
            ``{"soft_loss": ..., "feature_loss": ...}`` (the latter only when
            features are matched); with several outputs also
            ``soft_loss_<output name>`` per output with a soft loss, unweighted,
            and ``soft_loss`` their weighted sum. Scalar tensors.
        """
        teacher = self._teacher_model(x, training=False)
        n = self.num_outputs
        if self.config.features:
            teacher_outputs, teacher_features = list(teacher[:n]), teacher[n:]
        else:
            teacher_outputs, teacher_features = tf.nest.flatten(teacher), []
        student_outputs = tf.nest.flatten(student_output)
        soft = tf.constant(0.0)
        terms = {}
        for i, name, loss, weight in self.soft_outputs:
            mask = (tf.stop_gradient(teacher_outputs[self.masks[i]]) if i in self.masks
                    else None)
            term = self._soft(loss, tf.stop_gradient(teacher_outputs[i]), student_outputs[i],
                              mask)
            if n > 1:
                terms[f"soft_loss_{name}"] = term
            soft += weight * term
        terms["soft_loss"] = soft
        if self.config.features:
            feature = tf.constant(0.0)
            for (s_name, _), s_feat, t_feat in zip(self.config.features, student_features,
                                                   teacher_features):
                s_feat = tf.cast(s_feat, tf.float32)
                if s_name in self.projections:
                    s_feat = self.projections[s_name](s_feat)
                feature += tf.reduce_mean(tf.square(s_feat - tf.stop_gradient(
                    tf.cast(t_feat, tf.float32))))
            terms["feature_loss"] = feature
        return terms

    def total(self, hard_loss: Any, terms: dict[str, tf.Tensor]) -> tf.Tensor:
        """alpha * hard + (1 - alpha) * soft + feature_weight * feature."""
        total = self.config.alpha * hard_loss + (1.0 - self.config.alpha) * terms["soft_loss"]
        if "feature_loss" in terms:
            total += self.config.feature_weight * terms["feature_loss"]
        return total
