"""Knowledge distillation: a frozen teacher's soft targets train the student.

The loss is Hinton et al.'s, as in the Keras distillation example::

    loss = alpha * hard + (1 - alpha) * soft + feature_weight * feature

* ``hard``: the loss given to ``compile`` (labels vs the student's output);
* ``soft``: KL(softmax(teacher / T) || softmax(student / T)) * T**2, the
  mean over the batch (the T**2 keeps its gradients on the scale of ``hard``);
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
            probabilities (False: their logarithm is used as logits).

    Raises:
        ValueError: for a temperature that is not positive, alpha outside
            [0, 1], a negative feature weight or malformed ``features``.

    Example:

    >>> DistillConfig(temperature=2.0, alpha=0.5, features={"conv": "t_conv"}).features
    [('conv', 't_conv')]
    """

    ARGUMENT = "distill"
    NONE_IS_DEFAULT = True  # distillation is on when wrap has a teacher

    temperature: float = 4.0
    alpha: float = 0.1
    _: dataclasses.KW_ONLY
    features: dict[str, str] | list[tuple[str, str]] | None = None
    feature_weight: float = 1.0
    from_logits: bool = True

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

    def _validate(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"temperature={self.temperature:g} must be positive (typical: "
                             "2 to 8).")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha={self.alpha:g} must be in [0, 1]: it weighs the "
                             "hard-label loss against the soft targets (1 - alpha).")
        if self.feature_weight < 0:
            raise ValueError(f"feature_weight={self.feature_weight:g} must be >= 0.")

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config["features"] = [list(p) for p in self.features]
        return config


def soft_target_loss(teacher_logits: Any, student_logits: Any, temperature: float) -> tf.Tensor:
    """KL(softmax(teacher / T) || softmax(student / T)) * T**2, batch mean.

    Args:
        teacher_logits: teacher outputs, ``(batch, classes)``.
        student_logits: student outputs, same shape.
        temperature: the softmax temperature T.

    Returns:
        A scalar tensor.
    """
    t = tf.cast(teacher_logits, tf.float32) / temperature
    s = tf.cast(student_logits, tf.float32) / temperature
    log_p_teacher = tf.nn.log_softmax(t, axis=-1)
    kl = tf.reduce_sum(tf.exp(log_p_teacher) * (log_p_teacher - tf.nn.log_softmax(s, axis=-1)),
                       axis=-1)
    return tf.reduce_mean(kl) * (temperature ** 2)


def _find_layer(model: Any, name: str) -> Any:
    for candidate in (name, *(p + name for p in _WRAPPER_PREFIXES),
                      *("quant_" + p + name for p in _WRAPPER_PREFIXES)):
        try:
            return model.get_layer(candidate)
        except ValueError:
            continue
    raise ValueError(name)


def _feature_model(model: Any, names: list[str], role: str) -> Any:
    """A model giving ``model``'s output followed by the named layers' outputs."""
    outputs = [model.outputs[0]]
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
        ValueError: teacher and student outputs differ in shape, a named
            layer is missing, feature maps differ in shape, or
            ``from_logits`` does not match a softmax output.
    """

    def __init__(self, teacher: Any, config: DistillConfig, student: Any):
        if not isinstance(teacher, keras.Model):
            raise UnsupportedModelError(
                f"teacher must be a trained tf_keras model, got {type(teacher).__name__}. "
                "Load or build it with tf_keras (`tf.keras` after `import tfedge`).")
        self.teacher = teacher
        self.config = config
        t_shape, s_shape = tuple(teacher.outputs[0].shape[1:]), tuple(student.outputs[0].shape[1:])
        if t_shape != s_shape:
            raise ValueError(f"The teacher's output {t_shape} and the student's {s_shape} "
                             "differ: distillation needs the same classes in the same order.")
        if config.from_logits:
            for role, model in (("teacher", teacher), ("student", student)):
                activation = getattr(model.layers[-1], "activation", None)
                if getattr(activation, "__name__", "") == "softmax":
                    raise ValueError(
                        f"The {role} ends in a softmax but DistillConfig(from_logits=True). "
                        "Pass from_logits=False, or (better) end both models in logits.")
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
        teacher_shapes = [tuple(t.shape[1:]) for t in self._teacher_model.outputs[1:]]
        for (s_name, t_name), s_out, t_shape in zip(
                self.config.features, self._student_model.outputs[1:], teacher_shapes):
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

    def student_forward(self, x: Any, training: bool) -> tuple[Any, list[Any]]:
        """(student output, student features) for a batch."""
        if not self.config.features:
            return self._student_model(x, training=training), []
        outputs = self._student_model(x, training=training)
        return outputs[0], list(outputs[1:])

    def _logits(self, values: Any) -> tf.Tensor:
        values = tf.cast(values, tf.float32)
        if self.config.from_logits:
            return values
        return tf.math.log(tf.clip_by_value(values, 1e-7, 1.0))

    def loss_terms(self, x: Any, student_output: Any, student_features: list[Any]
                   ) -> dict[str, tf.Tensor]:
        """The soft-target and feature-matching terms for a batch.

        Args:
            x: the batch's inputs (the teacher runs on them, in inference mode).
            student_output: the student's output on ``x``.
            student_features: the student's named features (may be empty).

        Returns:
            ``{"soft_loss": ..., "feature_loss": ...}`` (the latter only when
            features are matched); scalar tensors, unweighted.
        """
        teacher = self._teacher_model(x, training=False)
        if self.config.features:
            teacher_output, teacher_features = teacher[0], teacher[1:]
        else:
            teacher_output, teacher_features = teacher, []
        teacher_output = tf.stop_gradient(teacher_output)
        terms = {"soft_loss": soft_target_loss(self._logits(teacher_output),
                                               self._logits(student_output),
                                               self.config.temperature)}
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
