"""Distillation of a model with several outputs: one soft loss per output (kl, bce, mse)."""

import numpy as np
import pytest

import tfedge
from tfedge import keras
from tfedge.distill import DistillConfig, sigmoid_target_loss

OUTPUTS = {"boxes": "mse", "scores": "bce"}


def _two_heads(width, name):
    """Digits -> ("boxes": 4 regression numbers, "scores": 10 class logits, sigmoid-trained)."""
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(width, 3, padding="same", activation="relu", name="c1")(inputs)
    h = keras.layers.Conv2D(2 * width, 3, strides=2, padding="same", activation="relu",
                            name="c2")(h)
    h = keras.layers.Flatten(name="flat")(h)
    h = keras.layers.Dense(4 * width, activation="relu", name="d1")(h)
    boxes = keras.layers.Dense(4, name="boxes")(h)
    scores = keras.layers.Dense(10, name="scores")(h)
    return keras.Model(inputs, [boxes, scores], name=name)


def _targets(x, y):
    """Box-like numbers: the mean intensity of the image's four quadrants; one-hot classes."""
    q = np.stack([x[:, :4, :4].mean((1, 2, 3)), x[:, :4, 4:].mean((1, 2, 3)),
                  x[:, 4:, :4].mean((1, 2, 3)), x[:, 4:, 4:].mean((1, 2, 3))], -1)
    return q.astype(np.float32), np.eye(10, dtype=np.float32)[y]


def _compile(model):
    model.compile(optimizer=keras.optimizers.Adam(2e-3),
                  loss=[keras.losses.MeanSquaredError(),
                        keras.losses.BinaryCrossentropy(from_logits=True)])
    return model


@pytest.fixture(scope="module")
def teacher(digits):
    (x, y), _ = digits
    keras.utils.set_random_seed(0)
    model = _compile(_two_heads(16, "teacher"))
    model.fit(x, _targets(x, y), epochs=6, batch_size=32, verbose=0)
    return model


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def test_terms_per_output_equal_a_hand_computation(teacher, digits):
    (x, y), _ = digits
    x, y = x[:64], y[:64]
    keras.utils.set_random_seed(3)
    student = _two_heads(4, "student")
    temperature, alpha = 2.0, 0.3
    config = DistillConfig(temperature, alpha, outputs=OUTPUTS, output_weights={1: 2.0})
    edge = _compile(tfedge.wrap(student, teacher=teacher, distill=config))
    got = edge.test_on_batch(x, _targets(x, y), return_dict=True)

    t_boxes, t_scores = [o.astype(np.float64) for o in teacher.predict(x, verbose=0)]
    s_boxes, s_scores = [o.astype(np.float64) for o in student.predict(x, verbose=0)]
    mse = np.mean((s_boxes - t_boxes) ** 2)
    p, q = _sigmoid(t_scores / temperature), _sigmoid(s_scores / temperature)
    bkl = np.mean(np.sum(p * np.log(p / q) + (1 - p) * np.log((1 - p) / (1 - q)), -1))
    bkl *= temperature ** 2
    assert got["soft_loss_boxes"] == pytest.approx(mse, rel=1e-4)
    assert got["soft_loss_scores"] == pytest.approx(bkl, rel=1e-3)
    assert got["soft_loss"] == pytest.approx(mse + 2.0 * bkl, rel=1e-3)
    assert got["loss"] == pytest.approx(alpha * got["hard_loss"] + (1 - alpha) * got["soft_loss"],
                                        rel=1e-4)
    assert float(sigmoid_target_loss(t_scores, t_scores, temperature)) == pytest.approx(
        0.0, abs=1e-5)


def test_output_masks_restrict_the_box_term_to_what_the_teacher_detects(teacher, digits):
    (x, y), _ = digits
    x, y = x[:64], y[:64]
    keras.utils.set_random_seed(3)
    student = _two_heads(4, "student")
    t_boxes, t_scores = [o.astype(np.float64) for o in teacher.predict(x, verbose=0)]
    confidence = _sigmoid(t_scores).max(-1)
    threshold = float(np.median(confidence))  # half the samples count
    config = DistillConfig(2.0, 0.3, outputs=OUTPUTS, output_masks={"boxes": "scores"},
                           mask_threshold=threshold)
    edge = _compile(tfedge.wrap(student, teacher=teacher, distill=config))
    got = edge.test_on_batch(x, _targets(x, y), return_dict=True)

    s_boxes = student.predict(x, verbose=0)[0].astype(np.float64)
    positive = confidence > threshold
    assert 0 < positive.sum() < len(x)
    per_sample = np.mean((s_boxes - t_boxes) ** 2, -1)
    assert got["soft_loss_boxes"] == pytest.approx(per_sample[positive].mean(), rel=1e-4)
    assert got["soft_loss_boxes"] != pytest.approx(per_sample.mean(), rel=1e-3)
    # a batch with no position above the threshold: the term is 0, not a division by zero
    none = _compile(tfedge.wrap(student, teacher=teacher, distill=DistillConfig(
        outputs=OUTPUTS, output_masks={0: 1}, mask_threshold=threshold)))
    low = ~positive
    got = none.test_on_batch(x[low], _targets(x[low], y[low]), return_dict=True)
    assert got["soft_loss_boxes"] == 0.0 and got["soft_loss_scores"] > 0


def test_student_moves_toward_the_teacher_on_both_outputs(teacher, digits):
    (x, y), (x_test, y_test) = digits
    keras.utils.set_random_seed(1)
    edge = _compile(tfedge.wrap(_two_heads(4, "student"), teacher=teacher,
                                distill=DistillConfig(alpha=0.0, outputs=OUTPUTS,
                                                      output_weights={"boxes": 20.0})))
    targets = _targets(x_test, y_test)
    before = edge.evaluate(x_test, targets, verbose=0, return_dict=True)
    history = edge.fit(x, _targets(x, y), epochs=4, batch_size=32, verbose=0)
    after = edge.evaluate(x_test, targets, verbose=0, return_dict=True)
    assert {"soft_loss_boxes", "soft_loss_scores"} <= set(history.history)
    assert after["soft_loss_boxes"] < 0.5 * before["soft_loss_boxes"]
    assert after["soft_loss_scores"] < 0.5 * before["soft_loss_scores"]


def test_none_skips_an_output(teacher, digits):
    (x, y), _ = digits
    edge = _compile(tfedge.wrap(_two_heads(4, "student"), teacher=teacher,
                                distill={"outputs": {"boxes": None, "scores": "kl"}}))
    got = edge.test_on_batch(x[:32], _targets(x[:32], y[:32]), return_dict=True)
    assert "soft_loss_boxes" not in got
    assert got["soft_loss"] == pytest.approx(got["soft_loss_scores"], rel=1e-6)


def test_channel_pruned_two_output_model_distils_from_itself(teacher, digits):
    (x, y), _ = digits
    edge = _compile(tfedge.wrap(teacher, prune=tfedge.PruneConfig(
        0.5, structure="channel", end_epoch=1), teacher="self",
        distill=DistillConfig(outputs=OUTPUTS)))
    history = edge.fit(x[:512], _targets(x[:512], y[:512]), epochs=2, batch_size=64, verbose=0)
    assert history.history["soft_loss_scores"][-1] > 0  # the masks moved it off the teacher
    pruned = edge.finish()
    assert pruned.count_params() < teacher.count_params()
    assert [tuple(o.shape) for o in pruned.outputs] == [tuple(o.shape) for o in teacher.outputs]


def test_config_round_trip():
    config = DistillConfig(3.0, 0.2, outputs={"boxes": "MSE", 1: "bce", "extra": None},
                           output_weights={"boxes": 0.5})
    assert config.outputs == {"boxes": "mse", 1: "bce", "extra": None}
    again = DistillConfig.from_config(config.get_config())
    assert again == config
    assert DistillConfig().get_config()["outputs"] is None
    masked = DistillConfig(outputs={"boxes": "mse"}, output_masks={"boxes": 1},
                           mask_threshold=0.3)
    assert DistillConfig.from_config(masked.get_config()) == masked
    assert masked.get_config()["output_masks"] == {"boxes": 1}


@pytest.mark.parametrize("kwargs, match", [
    ({"outputs": {"scores": "softmax"}}, "'kl', 'bce', 'mse', None"),
    ({"outputs": ["mse", "bce"]}, "must be a dict"),
    ({"outputs": {1.5: "mse"}}, "name .* or index"),
    ({"outputs": OUTPUTS, "output_weights": {"boxes": -1}}, "must be >= 0"),
    ({"outputs": OUTPUTS, "output_masks": {"boxes": "boxes"}}, "by itself"),
    ({"outputs": OUTPUTS, "output_masks": {"boxes": "scores"}, "mask_threshold": 1.0},
     r"in \(0, 1\)"),
    ({"outputs": OUTPUTS, "output_masks": ["scores"]}, "must be a dict"),
])
def test_bad_configs_name_the_fix(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DistillConfig(**kwargs)


def test_bad_pairings_name_the_fix(teacher):
    student = _two_heads(4, "student")
    with pytest.raises(ValueError, match=r"outputs=\{name or index: loss\}.*'bce'"):
        tfedge.wrap(student, teacher=teacher)
    with pytest.raises(ValueError, match="names no output.*'boxes', 'scores'"):
        tfedge.wrap(student, teacher=teacher, distill={"outputs": {"box": "mse"}})
    with pytest.raises(ValueError, match="indices 0..1"):
        tfedge.wrap(student, teacher=teacher, distill={"outputs": {2: "mse"}})
    with pytest.raises(ValueError, match="names no output"):
        tfedge.wrap(student, teacher=teacher, distill={"outputs": OUTPUTS,
                                                       "output_masks": {"boxes": "score"}})
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Flatten()(inputs)
    wrong = keras.Model(inputs, [keras.layers.Dense(4, name="boxes")(h),
                                 keras.layers.Dense(5, name="scores")(h)])
    with pytest.raises(ValueError, match=r"'scores' \(10,\) and the student's \(5,\)"):
        tfedge.wrap(wrong, teacher=teacher, distill={"outputs": OUTPUTS})
    single = keras.Model(inputs, keras.layers.Dense(10)(h))
    with pytest.raises(ValueError, match="2 output.*student 1"):
        tfedge.wrap(single, teacher=teacher, distill={"outputs": OUTPUTS})
    sigmoid = keras.Model(inputs, [keras.layers.Dense(4, name="boxes")(h),
                                   keras.layers.Dense(10, activation="sigmoid", name="s")(h)])
    with pytest.raises(ValueError, match="ends in a sigmoid.*from_logits=False"):
        tfedge.wrap(sigmoid, teacher=teacher, distill={"outputs": OUTPUTS})


def test_feature_matching_with_two_outputs(teacher, digits):
    (x, y), _ = digits
    edge = _compile(tfedge.wrap(_two_heads(4, "student"), teacher=teacher, distill=DistillConfig(
        outputs=OUTPUTS, features={"d1": "d1"}, feature_weight=0.5)))
    got = edge.test_on_batch(x[:32], _targets(x[:32], y[:32]), return_dict=True)
    assert got["feature_loss"] > 0
    assert got["loss"] == pytest.approx(0.1 * got["hard_loss"] + 0.9 * got["soft_loss"]
                                        + 0.5 * got["feature_loss"], rel=1e-4)
    assert got["soft_loss"] == pytest.approx(got["soft_loss_boxes"] + got["soft_loss_scores"],
                                             rel=1e-4)
