"""wrap: never mutates the user's model, injects its own callbacks, rejects bad input clearly."""

import numpy as np
import pytest

import tfedge
from tfedge import keras
from tfedge.errors import UnsupportedModelError

from tests.helpers import compile_for_digits


def _snapshot(model):
    return ([w.copy() for w in model.get_weights()],
            [type(layer) for layer in model.layers], [layer.name for layer in model.layers])


def test_user_model_unchanged_after_wrap_and_fit(make_digits_cnn, digits):
    (x, y), _ = digits
    model = make_digits_cnn()
    weights, classes, names = _snapshot(model)
    wrapped = compile_for_digits(tfedge.wrap(model, prune=0.5))
    wrapped.fit(x[:256], y[:256], epochs=2, batch_size=32, verbose=0)
    after_weights, after_classes, after_names = _snapshot(model)
    assert after_classes == classes and after_names == names
    assert all(np.array_equal(a, b) for a, b in zip(weights, after_weights))
    # ... while the wrapped copy did train.
    trained = wrapped.finish().get_weights()
    assert not all(np.array_equal(a, b) for a, b in zip(weights, trained))


def test_fit_without_callbacks_reaches_target_sparsity(make_digits_cnn, digits):
    (x, y), _ = digits
    wrapped = compile_for_digits(tfedge.wrap(make_digits_cnn(), prune=tfedge.PruneConfig(0.6)))
    wrapped.fit(x[:320], y[:320], epochs=3, batch_size=32, verbose=0)  # no callbacks passed
    report = tfedge.sparsity_report(wrapped.finish())
    for row in report.rows:
        assert row["sparsity"] == pytest.approx(0.6, abs=0.01), row


def test_user_update_pruning_step_is_not_added_twice(make_digits_cnn):
    import tensorflow_model_optimization as tfmot

    wrapped = tfedge.wrap(make_digits_cnn(), prune=0.5)
    ours = wrapped.optimization_callbacks()
    assert sum(isinstance(cb, tfmot.sparsity.keras.UpdatePruningStep) for cb in ours) == 1


def test_finish_returns_plain_model_with_original_name(make_digits_cnn):
    model = make_digits_cnn(name="my_net")
    plain = tfedge.wrap(model, prune=0.5).finish()
    assert plain.name == "my_net"
    assert [type(layer) for layer in plain.layers] == [type(layer) for layer in model.layers]


def test_layer_selection_by_names_and_predicate(make_digits_cnn):
    model = make_digits_cnn()
    wrapped = tfedge.wrap(model, prune=tfedge.PruneConfig(0.5, layers=["logits"]))
    pruned = [l.name for l in wrapped.network.layers if type(l).__name__ == "PruneLowMagnitude"]
    assert pruned == ["prune_low_magnitude_logits"]
    only_dense = tfedge.PruneConfig(0.5, layers=lambda layer: isinstance(layer, keras.layers.Dense))
    wrapped = tfedge.wrap(model, prune=only_dense)
    inner = [l.layer for l in wrapped.network.layers if type(l).__name__ == "PruneLowMagnitude"]
    assert inner and all(isinstance(l, keras.layers.Dense) for l in inner)


def test_nested_model_layers_are_pruned(digits):
    (x, y), _ = digits
    keras.utils.set_random_seed(0)
    block = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(8, 3, activation="relu"),
                              keras.layers.Flatten()], name="backbone")
    inputs = keras.Input((8, 8, 1))
    outputs = keras.layers.Dense(10)(block(inputs))
    model = keras.Model(inputs, outputs)
    wrapped = compile_for_digits(tfedge.wrap(model, prune=0.5))
    wrapped.fit(x[:256], y[:256], epochs=2, batch_size=32, verbose=0)
    report = tfedge.sparsity_report(wrapped.finish())
    assert len(report.rows) == 2  # the nested Conv2D and the outer Dense
    for row in report.rows:
        assert row["sparsity"] == pytest.approx(0.5, abs=0.01), row


def test_unknown_layer_name_lists_prunable_layers(make_digits_cnn):
    with pytest.raises(ValueError, match=r"No layer named 'nope'.*Prunable layers: .*logits"):
        tfedge.wrap(make_digits_cnn(), prune=tfedge.PruneConfig(0.5, layers=["nope"]))


def test_unprunable_layer_name_is_rejected(make_digits_cnn):
    model = make_digits_cnn()
    flatten = next(l.name for l in model.layers if isinstance(l, keras.layers.Flatten))
    with pytest.raises(ValueError, match=f"'{flatten}'.*cannot be pruned"):
        tfedge.wrap(model, prune=tfedge.PruneConfig(0.5, layers=[flatten]))


def test_nothing_prunable_is_rejected():
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.MaxPooling2D(),
                              keras.layers.Flatten()])
    with pytest.raises(ValueError, match="Nothing to prune"):
        tfedge.wrap(model, prune=0.5)


def test_subclassed_model_gets_a_clear_error():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(10)

        def call(self, x):
            return self.dense(x)

    net = Net()
    net(np.zeros((1, 4), np.float32))
    with pytest.raises(UnsupportedModelError, match="functional API"):
        tfedge.wrap(net, prune=0.5)


def test_unbuilt_model_gets_a_clear_error():
    model = keras.Sequential([keras.layers.Dense(10)])
    with pytest.raises(UnsupportedModelError, match="not built"):
        tfedge.wrap(model, prune=0.5)


def test_epoch_schedule_without_known_length_says_what_to_pass(make_digits_cnn, digits):
    import tensorflow as tf

    (x, y), _ = digits
    # filter() makes the length unknown: Keras itself reports steps=None.
    data = tf.data.Dataset.from_tensor_slices((x[:64], y[:64])).filter(lambda a, b: True).batch(32)
    wrapped = compile_for_digits(tfedge.wrap(make_digits_cnn(),
                                             prune=tfedge.PruneConfig(0.5, end_epoch=1)))
    with pytest.raises(ValueError, match="steps_per_epoch"):
        wrapped.fit(data, epochs=1, verbose=0)


def _two_output_model():
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    h = keras.layers.GlobalAveragePooling2D()(h)
    boxes = keras.layers.Dense(4, name="boxes")(h)
    scores = keras.layers.Dense(3, name="scores")(h)
    return keras.Model(inputs, [boxes, scores])


def test_dict_losses_and_targets_by_output_name_through_every_phase():
    """compile(loss={"boxes": ...}) as on the user's model, across prune -> QAT (which renames
    the output layers quant_boxes / quant_scores) and with distillation."""
    model = _two_output_model()
    rng = np.random.default_rng(0)
    x = rng.random((64, 8, 8, 1), np.float32)
    y = {"boxes": rng.random((64, 4), np.float32),
         "scores": rng.integers(0, 2, (64, 3)).astype(np.float32)}
    losses = {"boxes": "mse", "scores": keras.losses.BinaryCrossentropy(from_logits=True)}
    cases = {  # the history keys each must log: per output, or the distillation's terms
        "prune then QAT": (tfedge.wrap(model, prune=tfedge.PruneConfig(0.5, end_epoch=1),
                                       quantize=tfedge.QATConfig(start_epoch=1)),
                           {"boxes_loss", "scores_loss"}),
        "distilled": (tfedge.wrap(keras.models.clone_model(model), teacher=model,
                                  distill=tfedge.DistillConfig(
                                      outputs={"boxes": "mse", "scores": "bce"})),
                      {"hard_loss", "soft_loss_boxes", "soft_loss_scores"}),
    }
    finals = {}
    for case, (edge, keys) in cases.items():
        assert edge.output_names == ["boxes", "scores"], case
        edge.compile("adam", losses, metrics={"boxes": ["mae"]})
        history = edge.fit(x, y, batch_size=32, epochs=2, verbose=0)
        assert keys | {"loss", "boxes_mae"} <= set(history.history), case
        assert all(np.isfinite(history.history["loss"])), case
        finals[case] = edge.finish()
        assert finals[case].output_names == ["boxes", "scores"], case
    # and the int8 file's signature outputs carry them too
    qat = finals["prune then QAT"]
    report = tfedge.validate(tfedge.convert(qat, x[:32]), qat, x)
    assert set(report.per_output) == {"boxes", "scores"}
