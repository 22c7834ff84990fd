"""Below 8 bits through the LiteRT Quantizer: w4a8, mixed precision to a budget, TFLM."""

import logging as std_logging

import numpy as np
import pytest

import tfedge
from tfedge import cost
from tfedge.artifact import infer_mode
from tfedge.errors import VerificationError


def _accuracy(artifact, x, y):
    from tfedge import TFLiteRunner

    return float(np.mean(TFLiteRunner(artifact.content).predict(x).argmax(1) == y))


def _layer_names(model, kind):
    """Names of the model's layers of a Keras class (they depend on what the session built)."""
    return [layer.name for layer in model.layers if type(layer).__name__ == kind]


@pytest.fixture(scope="module")
def w4a8(trained_digits_cnn, digits):
    (x_train, _), (x_test, y_test) = digits
    return tfedge.convert(trained_digits_cnn, x_train[:300], mode="w4a8",
                          eval_data=(x_test, y_test))


def test_w4a8_is_full_integer_smaller_and_as_accurate_as_int8(w4a8, digits_int8, digits,
                                                               tmp_path, capsys):
    _, (x_test, y_test) = digits
    assert w4a8.is_full_integer
    assert [t.dtype for t in w4a8.inputs + w4a8.outputs] == ["INT8", "INT8"]
    assert w4a8.size_bytes <= 0.6 * digits_int8.size_bytes
    int8_acc, w4a8_acc = _accuracy(digits_int8, x_test, y_test), _accuracy(w4a8, x_test, y_test)
    assert w4a8_acc >= int8_acc - 0.015
    # runs, and computes correctly, with XNNPACK and with LiteRT's built-in kernels
    assert all(r["ok"] and r["correct"] for r in w4a8.details["runtimes"].values())
    assert w4a8.runtime_settings()["op_resolver"] == "auto"
    # the card records each layer's bit width; the bytes are counted packed
    card = w4a8.card(name="digits")
    assert {(r["op"].split()[1], r["weight_bits"]) for r in card["layer_bits"]} == {
        ("CONV_2D", 4), ("FULLY_CONNECTED", 4)}
    assert cost.model_cost(w4a8).param_bytes < 0.6 * cost.model_cost(digits_int8).param_bytes
    path = w4a8.save(tmp_path / "w4a8.tflite")
    loaded = tfedge.load(path)
    assert loaded.mode == "w4a8" == infer_mode(loaded.flatbuffer)
    from tfedge.cli import main

    assert main(["inspect", path]) == 0
    printed = capsys.readouterr().out
    assert "w4a8 (full integer" in printed and "INT4" in printed


def test_mixed_precision_budget_and_manual_bits(trained_digits_cnn, digits, digits_int8, caplog):
    (x_train, _), (x_test, y_test) = digits
    budget = int(0.75 * digits_int8.size_bytes)
    art = tfedge.convert(trained_digits_cnn, x_train[:300], max_size_bytes=budget,
                         eval_data=(x_test, y_test))
    report = art.details["mixed_precision"]
    assert art.mode == "mixed_precision" and report["reached"] and art.size_bytes <= budget
    assert art.is_full_integer
    assert art.validation.accuracy_drop <= 0.015

    within = tfedge.convert(trained_digits_cnn, x_train[:300], mode="mixed_precision",
                            tolerance=0.01, eval_data=(x_test, y_test))
    report = within.details["mixed_precision"]
    assert report["reached"] and report["final_loss"] <= 0.01
    assert within.size_bytes < report["int8_bytes"]  # some layers went to 4 bits

    hidden = _layer_names(trained_digits_cnn, "Dense")[0]  # "dense" (or dense_1, ...)
    manual = tfedge.convert(trained_digits_cnn, x_train[:300], bits={hidden: 4})
    by_layer = {r["layer"].split("/")[1] if "/" in r["layer"] else r["layer"]: r["weight_bits"]
                for r in manual.flatbuffer.layer_bits()}
    assert by_layer[hidden] == 4 and sorted(by_layer.values()).count(4) == 1

    with pytest.raises(ValueError, match="no weight layer 'dense_9'"):
        tfedge.convert(trained_digits_cnn, x_train[:300], bits={"dense_9": 4})


def test_unreachable_budget_says_so_and_returns_the_best_found(trained_digits_cnn, digits,
                                                               w4a8, caplog):
    (x_train, _), (x_test, y_test) = digits
    with caplog.at_level(std_logging.WARNING):
        art = tfedge.convert(trained_digits_cnn, x_train[:300], max_size_bytes=2000,
                             eval_data=(x_test, y_test))
    report = art.details["mixed_precision"]
    assert not report["reached"]
    assert report["shortfall_bytes"] == art.size_bytes - 2000 > 0
    # the best found is the smallest model: every int4-capable layer at 4 bits
    assert art.size_bytes <= w4a8.size_bytes
    assert f"not reachable: best found {art.size_bytes:,} bytes" in caplog.text
    assert "not reachable" in art.card(name="digits")["model"]["conversion"][
        "mixed_precision"]["message"]


def test_export_micro_refuses_w4a8_with_tflms_reason(w4a8, trained_digits_cnn, digits,
                                                     tmp_path):
    (x_train, _), (x_test, _) = digits
    with pytest.raises(VerificationError) as err:
        tfedge.export_micro(w4a8, tmp_path / "micro", sample_inputs=x_test[:4])
    message = str(err.value)
    assert "fully_connected_common.cc:" in message
    assert "int4 filter with int8 input in FULLY_CONNECTED" in message
    assert "mode='int8'" in message
    assert not (tmp_path / "micro" / "model_data.cc").exists()

    # int4 CONV_2D filters do run in TFLM (only FULLY_CONNECTED refuses them)
    conv4 = tfedge.convert(trained_digits_cnn, x_train[:300],
                           bits={name: 4 for name in _layer_names(trained_digits_cnn, "Conv2D")})
    assert {r["weight_dtype"] for r in conv4.flatbuffer.layer_bits()} == {"INT4", "INT8"}
    bundle = tfedge.export_micro(conv4, tmp_path / "conv4", sample_inputs=x_test[:8], max_diff=1)
    assert bundle.arena_bytes > 0


def test_two_output_model_is_compared_on_both_outputs(digits, tmp_path):
    """A detector-like model (class logits + box-like numbers): no top-1 to agree on, so the
    runtimes, the mixed-precision loss and the validation cover both outputs by RMSE."""
    from tfedge import keras

    (x_train, y_train), (x_test, _) = digits
    # the second target: each image quadrant's mean ink (real numbers from the real images)
    quadrants = np.stack([x_train[:, r:r + 4, c:c + 4, 0].mean((1, 2))
                          for r in (0, 4) for c in (0, 4)], 1)
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1), name="image")
    h = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(inputs)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(64, activation="relu")(h)
    model = keras.Model(inputs, [keras.layers.Dense(4, name="boxes")(h),
                                 keras.layers.Dense(10, name="scores")(h)], name="two_heads")
    model.compile("adam", [keras.losses.MeanSquaredError(),
                           keras.losses.SparseCategoricalCrossentropy(from_logits=True)])
    model.fit(x_train, [quadrants, y_train], epochs=5, batch_size=32, verbose=0)

    w4a8 = tfedge.convert(model, x_train[:200], mode="w4a8", eval_data=x_test[:100])
    for row in w4a8.details["runtimes"].values():
        assert row["ok"] and row["correct"] and row["top1_agreement"] is None
        assert 0 < row["relative_rmse"] < 1
    assert set(w4a8.validation.per_output) == {"boxes", "scores"}
    # a SavedModel: the float references come from its traced signature, batch by batch
    model.save(tmp_path / "saved", save_format="tf")
    from_dir = tfedge.convert(str(tmp_path / "saved"), x_train[:200], mode="w4a8",
                              eval_data=x_test[:100])
    assert from_dir.validation.per_output["boxes"]["snr_db"] == pytest.approx(
        w4a8.validation.per_output["boxes"]["snr_db"], abs=0.5)

    int8 = tfedge.convert(model, x_train[:200], mode="litert_int8")
    budget = int(0.75 * int8.size_bytes)
    mixed = tfedge.convert(model, x_train[:200], max_size_bytes=budget, eval_data=x_test[:100])
    report = mixed.details["mixed_precision"]
    assert report["metric"] == "relative output RMSE (mean of 2 outputs)"
    assert report["reached"] and mixed.size_bytes <= budget
    assert 0 < report["int8_loss"] <= report["final_loss"]


def test_lowbit_modes_check_calibration_like_int8(trained_digits_cnn, digits):
    """The low-bit dispatch runs the int8 path's num_samples and calibration-range checks."""
    (x_train, _), (x_test, y_test) = digits
    for bad in (0, -5, 2.5, True):
        with pytest.raises(ValueError, match=rf"num_samples={bad!r}"):
            tfedge.convert(trained_digits_cnn, x_train[:300], mode="w4a8", num_samples=bad)
    # 0..255 pixels for a model trained on 0..1: strict raises, as it does for int8
    pixels = np.round(x_train[:300] * 255)
    for mode in ("int8", "w4a8", "litert_int8"):
        with pytest.raises(ValueError, match="raw 8-bit pixels"):
            tfedge.convert(trained_digits_cnn, pixels, mode=mode, strict=True)
    with pytest.raises(ValueError, match="outside the range of representative_data"):
        tfedge.convert(trained_digits_cnn, x_train[:300] * 0.1, max_size_bytes=10**6,
                       eval_data=(x_test, y_test), strict=True)


def test_per_tensor_weights_drop_the_per_channel_parameters(trained_digits_cnn, digits, w4a8):
    """per_channel=False: one scale per tensor, a smaller file; per_channel='auto' lets mixed
    precision reach a budget that per-channel int4 everywhere cannot."""
    (x_train, _), (x_test, y_test) = digits
    tensorwise = tfedge.convert(trained_digits_cnn, x_train[:300], mode="w4a8", per_channel=False)
    assert {r["granularity"] for r in tensorwise.flatbuffer.layer_bits()} == {"per-tensor"}
    ours, theirs = tensorwise.flatbuffer.byte_breakdown(), w4a8.flatbuffer.byte_breakdown()
    assert ours["weights_total"] == theirs["weights_total"]
    assert ours["quant_params_of_weights"] < theirs["quant_params_of_weights"]
    assert tensorwise.size_bytes < w4a8.size_bytes

    budget = w4a8.size_bytes - 2000  # below every per-channel choice
    art = tfedge.convert(trained_digits_cnn, x_train[:300], max_size_bytes=budget,
                         per_channel="auto", eval_data=(x_test, y_test))
    report = art.details["mixed_precision"]
    assert report["reached"] and art.size_bytes <= budget
    assert {"4t", "8t"} & {r["bits"] for r in report["layers"]}
    with pytest.raises(ValueError, match="per_channel='auto'"):
        tfedge.convert(trained_digits_cnn, x_train[:300], mode="w4a8", per_channel="auto")
