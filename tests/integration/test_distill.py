"""Distillation: the loss is the textbook one, the teacher stays frozen, the soft term falls."""

import numpy as np
import pytest

import tfedge
from tfedge import keras
from tfedge.distill import DistillConfig, soft_target_loss

from tests.helpers import compile_for_digits


def _net(width, name):
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(width, 3, padding="same", activation="relu", name="c1")(inputs)
    h = keras.layers.Conv2D(2 * width, 3, strides=2, padding="same", activation="relu",
                            name="c2")(h)
    h = keras.layers.Flatten(name="flat")(h)
    h = keras.layers.Dense(4 * width, activation="relu", name="d1")(h)
    return keras.Model(inputs, keras.layers.Dense(10, name="logits")(h), name=name)


@pytest.fixture(scope="module")
def teacher(digits):
    (x, y), _ = digits
    keras.utils.set_random_seed(0)
    model = compile_for_digits(_net(16, "teacher"))
    model.fit(x, y, epochs=8, batch_size=32, verbose=0)
    return model


def _log_softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def test_loss_terms_equal_a_hand_computation(teacher, digits):
    (x, y), _ = digits
    x, y = x[:64], y[:64]
    keras.utils.set_random_seed(3)
    student = _net(4, "student")
    temperature, alpha = 3.0, 0.3
    edge = compile_for_digits(tfedge.wrap(student, teacher=teacher,
                                          distill=DistillConfig(temperature, alpha)))
    got = edge.test_on_batch(x, y, return_dict=True)

    t = teacher.predict(x, verbose=0).astype(np.float64)
    s = student.predict(x, verbose=0).astype(np.float64)  # the copy has the same weights
    log_pt, log_ps = _log_softmax(t / temperature), _log_softmax(s / temperature)
    soft = np.mean(np.sum(np.exp(log_pt) * (log_pt - log_ps), axis=1)) * temperature ** 2
    hard = -np.mean(_log_softmax(s)[np.arange(len(y)), y])
    assert got["soft_loss"] == pytest.approx(soft, rel=1e-4)
    assert got["hard_loss"] == pytest.approx(hard, rel=1e-4)
    assert got["loss"] == pytest.approx(alpha * hard + (1 - alpha) * soft, rel=1e-4)
    assert float(soft_target_loss(t, s, temperature)) == pytest.approx(soft, rel=1e-4)
    assert float(soft_target_loss(t, t, temperature)) == pytest.approx(0.0, abs=1e-6)


def test_teacher_frozen_and_soft_target_term_falls(teacher, digits):
    (x, y), (x_test, y_test) = digits
    before = [w.copy() for w in teacher.get_weights()]
    trainable = teacher.trainable
    keras.utils.set_random_seed(4)
    edge = compile_for_digits(tfedge.wrap(_net(4, "student"), teacher=teacher))
    history = edge.fit(x, y, epochs=4, batch_size=32, verbose=0, validation_data=(x_test, y_test))
    soft = history.history["soft_loss"]
    assert soft[-1] < 0.7 * soft[0], soft
    assert history.history["val_soft_loss"][-1] < history.history["val_soft_loss"][0]
    assert {"loss", "hard_loss", "soft_loss", "accuracy"} <= set(history.history)
    assert all(np.array_equal(a, b) for a, b in zip(before, teacher.get_weights()))
    assert teacher.trainable == trainable
    assert not any(v is w for v in edge.trainable_variables for w in teacher.variables)
    plain = edge.finish()
    assert plain.name == "student" and plain.count_params() < teacher.count_params()


def test_feature_matching_learns_a_projection(teacher, digits):
    (x, y), _ = digits
    keras.utils.set_random_seed(5)
    config = DistillConfig(features={"c2": "c2"}, feature_weight=2.0)
    edge = compile_for_digits(tfedge.wrap(_net(4, "student"), teacher=teacher, distill=config))
    projection = edge._distillation.projections["c2"]
    assert projection.kernel.shape == (8, 32)  # student c2 has 8 channels, teacher c2 32
    start = projection.kernel.numpy().copy()
    got = edge.test_on_batch(x[:64], y[:64], return_dict=True)
    terms = got["hard_loss"] * 0.1 + got["soft_loss"] * 0.9 + 2.0 * got["feature_loss"]
    assert got["loss"] == pytest.approx(terms, rel=1e-4)
    history = edge.fit(x, y, epochs=3, batch_size=32, verbose=0)
    assert history.history["feature_loss"][-1] < history.history["feature_loss"][0]
    assert not np.allclose(start, projection.kernel.numpy())
    assert all(l.name != projection.name for l in edge.finish().layers)


def test_distillation_with_pruning_and_qat(teacher, digits):
    (x, y), (x_test, y_test) = digits
    keras.utils.set_random_seed(6)
    edge = compile_for_digits(tfedge.wrap(
        _net(8, "student"), teacher=teacher, distill=DistillConfig(features={"c2": "c2"}),
        prune=tfedge.PruneConfig(0.5, end_epoch=2), quantize=True))
    history = edge.fit(x[:768], y[:768], epochs=3, batch_size=32, verbose=0)
    assert edge.phase == "quantize" and len(history.history["soft_loss"]) == 3
    assert history.history["soft_loss"][-1] < history.history["soft_loss"][0]
    plain = edge.finish()
    artifact = tfedge.convert(plain)
    for row in artifact.flatbuffer.weight_sparsity():
        assert row["sparsity"] >= 0.49, row
    assert tfedge.validate(artifact, plain, x_test, y_test).agreement >= 0.98


def test_clear_errors(teacher):
    student = _net(4, "student")
    with pytest.raises(ValueError, match="without a teacher"):
        tfedge.wrap(student, distill=DistillConfig())
    inputs = keras.Input((8, 8, 1))
    five = keras.Model(inputs, keras.layers.Dense(5)(keras.layers.Flatten()(inputs)))
    with pytest.raises(ValueError, match="same classes"):
        tfedge.wrap(student, teacher=five)
    probs = keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(
        keras.layers.Flatten()(inputs)))
    with pytest.raises(ValueError, match="from_logits=False"):
        tfedge.wrap(student, teacher=probs)
    with pytest.raises(ValueError, match="no layer named 'nope'"):
        tfedge.wrap(student, teacher=teacher, distill=DistillConfig(features={"nope": "c2"}))
    with pytest.raises(ValueError, match="channel axis"):
        tfedge.wrap(student, teacher=teacher, distill=DistillConfig(features={"c1": "c2"}))
    for bad in ({"temperature": 0}, {"alpha": 1.5}, {"feature_weight": -1}):
        with pytest.raises(ValueError):
            DistillConfig(**bad)


def test_config_round_trip():
    config = DistillConfig(2.0, 0.5, features=[("a", "b")], feature_weight=0.5, from_logits=False)
    assert DistillConfig.from_config(config.get_config()).get_config() == config.get_config()
