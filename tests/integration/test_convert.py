"""The converter stage: modes, inputs, sparse flatbuffers, float fallback, robustness."""

import hashlib
import json
import logging as std_logging
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

import tfedge
from tfedge import keras
from tfedge.card import card_path, read_model_card
from tfedge import artifact as artifact_module
from tfedge.artifact import TFLiteArtifact, load
from tfedge import source as source_module
from tfedge.errors import ConversionError, InvalidModelFileError, UnsupportedModelError
from tfedge.quant_debug import debug_quantization
from tfedge import TFLiteRunner

from tests.helpers import warning_messages

# mode, input/output type -> expected input, output and activation tensor types
MODE_CASES = [
    ("int8", None, "INT8", "INT8", "INT8"),
    ("int8", "uint8", "UINT8", "UINT8", "INT8"),
    ("int8", "float32", "FLOAT32", "FLOAT32", "INT8"),
    ("int16x8", None, "FLOAT32", "FLOAT32", "INT16"),
    ("float16", None, "FLOAT32", "FLOAT32", "FLOAT32"),
    ("dynamic_range", None, "FLOAT32", "FLOAT32", "FLOAT32"),
    ("float32", None, "FLOAT32", "FLOAT32", "FLOAT32"),
]
WEIGHT_TYPES = {"int8": "INT8", "int16x8": "INT8", "float16": "FLOAT16",
                "dynamic_range": "INT8", "float32": "FLOAT32"}


@pytest.mark.parametrize("mode,io_type,in_type,out_type,act_type", MODE_CASES,
                         ids=[f"{c[0]}-{c[1] or 'default'}" for c in MODE_CASES])
def test_each_mode_runs_in_litert_with_expected_types(trained_digits_cnn, digits, mode,
                                                      io_type, in_type, out_type, act_type,
                                                      tmp_path):
    (x_train, _), (x_test, y_test) = digits
    art = tfedge.convert(trained_digits_cnn, x_train[:200], mode=mode, input_type=io_type,
                         output_type=io_type)
    assert art.mode == mode and art.description.startswith(mode)
    assert art.inputs[0].dtype == in_type and art.outputs[0].dtype == out_type
    conv_out = [op for op in art.flatbuffer.ops if op.name == "CONV_2D"][0].outputs[0]
    assert art.flatbuffer.tensors[conv_out].dtype == act_type
    largest = max(art.flatbuffer.weight_sparsity(), key=lambda r: r["size"])
    assert largest["dtype"] == WEIGHT_TYPES[mode]  # (dynamic range skips tiny tensors)
    assert art.inputs[0].shape_signature[0] == 1  # fixed batch 1 by default
    assert art.signatures == {"serving_default": {"inputs": ["image"], "outputs": ["logits"]}}
    if mode in ("int8", "int16x8"):
        assert art.is_full_integer
    report = tfedge.validate(art, trained_digits_cnn, x_test, y_test)
    assert report.agreement >= 0.97, report
    assert art.runtime_settings()["op_resolver"] == "auto"
    assert load(art.save(tmp_path / "model.tflite")).mode == mode  # read back from the file


def test_dynamic_batch_on_request_and_card_beside_the_file(trained_digits_cnn, digits, tmp_path):
    (x_train, _), (x_test, y_test) = digits
    art = tfedge.convert(trained_digits_cnn, x_train[:200], batch_size=None,
                         eval_data=(x_test, y_test))
    assert art.inputs[0].shape_signature[0] == -1
    assert TFLiteRunner(art.content).dynamic_batch
    assert art.validation.agreement >= 0.97  # validated on eval_data, kept for the card
    path = art.save(tmp_path / "model.tflite")
    assert card_path(path) == str(tmp_path / "model_card.json")
    card = read_model_card(path)
    with open(path, "rb") as f:
        assert card["sha256"] == hashlib.sha256(f.read()).hexdigest()
    assert card["mode"] == "int8" and card["runtime"]["op_resolver"] == "auto"
    assert card["validation"]["agreement"] == art.validation.agreement
    assert card["io_quantization"][0]["dtype"] == "INT8"
    assert len(card["weight_sparsity"]) == 4 and card["tools"]["tensorflow"]


def test_keras_files_and_savedmodel_keep_signature_names(trained_digits_cnn, digits, tmp_path):
    (x_train, _), (x_test, _) = digits
    keras_file = str(tmp_path / "cnn.keras")
    h5_file = str(tmp_path / "cnn.h5")
    trained_digits_cnn.save(keras_file)
    trained_digits_cnn.save(h5_file)
    saved = str(tmp_path / "saved")
    spec = tf.TensorSpec([None, 8, 8, 1], tf.float32, name="pixels")
    serve = tf.function(lambda pixels: {"scores": trained_digits_cnn(pixels)},
                        input_signature=[spec])
    tf.saved_model.save(trained_digits_cnn, saved, signatures={"classify": serve})
    expected = trained_digits_cnn.predict(x_test[:20], verbose=0)
    for source, signatures in (
            (keras_file, {"serving_default": {"inputs": ["image"], "outputs": ["logits"]}}),
            (h5_file, {"serving_default": {"inputs": ["image"], "outputs": ["logits"]}}),
            (saved, {"classify": {"inputs": ["pixels"], "outputs": ["scores"]}})):
        art = tfedge.convert(source, mode="float32")
        assert art.signatures == signatures, source
        assert art.inputs[0].shape_signature == (1, 8, 8, 1)
        np.testing.assert_allclose(TFLiteRunner(art.content).predict(x_test[:20]), expected,
                                   atol=1e-4)
    tflite_file = tmp_path / "x.keras"  # judged by its bytes, not its name
    tflite_file.write_bytes(art.content)
    with pytest.raises(UnsupportedModelError, match="already a TFLite model"):
        tfedge.convert(str(tflite_file), mode="float32")
    with pytest.raises(UnsupportedModelError, match="saved_model.pb"):
        tfedge.convert(str(tmp_path), mode="float32")
    with pytest.raises(FileNotFoundError, match="No model"):
        tfedge.convert(str(tmp_path / "missing.keras"), mode="float32")


def _train_pruned_mlp(digits, sparsity):
    (x_train, y_train), _ = digits
    x = x_train.reshape(len(x_train), 64)
    keras.utils.set_random_seed(0)
    inputs = keras.Input((64,), name="features")
    h = keras.layers.Dense(512, activation="relu")(inputs)
    h = keras.layers.Dense(512, activation="relu")(h)
    model = keras.Model(inputs, keras.layers.Dense(10, name="logits")(h), name="mlp")
    wrapped = tfedge.wrap(model, prune=tfedge.PruneConfig(sparsity, end_epoch=1))
    wrapped.compile(keras.optimizers.Adam(1e-3),
                    keras.losses.SparseCategoricalCrossentropy(from_logits=True), ["accuracy"])
    wrapped.fit(x, y_train, epochs=2, batch_size=64, verbose=0)
    return wrapped.finish()


def test_sparse_flatbuffer_of_a_pruned_model(digits, caplog, tmp_path):
    (x_train, _), (x_test, y_test) = digits
    x_train, x_test = x_train.reshape(-1, 64), x_test.reshape(-1, 64)
    pruned = _train_pruned_mlp(digits, 0.9)
    dense = tfedge.convert(pruned, x_train[:300])
    with caplog.at_level(std_logging.WARNING):
        sparse = tfedge.convert(pruned, x_train[:300], sparse=True)
    facts = sparse.details["sparse"]
    assert facts["used"] and facts["dense_bytes"] == dense.size_bytes
    assert sparse.size_bytes <= 0.45 * dense.size_bytes, facts["summary"]
    assert all(r["encoding"] == "sparse" and r["sparsity"] >= 0.89 for r in facts["tensors"])
    # the measured trap: XNNPACK rejects it, so the artifact says what it needs ...
    assert sparse.runtime["op_resolver"] == "no_delegates"
    assert any("setUseXNNPACK(false)" in m for m in warning_messages(caplog))
    with pytest.raises(RuntimeError, match="no_delegates"):
        TFLiteRunner(sparse.content, op_resolver="auto")
    # ... and validation uses it; the outputs are those of the dense model, exactly
    report = tfedge.validate(sparse, pruned, x_test, y_test)
    assert report.op_resolver == "no_delegates" and report.agreement >= 0.97
    np.testing.assert_array_equal(
        TFLiteRunner(sparse.content).predict(x_test),
        TFLiteRunner(dense.content, op_resolver="no_delegates").predict(x_test))
    card = read_model_card(sparse.save(tmp_path / "mlp.tflite"))
    assert card["runtime"]["op_resolver"] == "no_delegates"
    assert [r["encoding"] for r in card["weight_sparsity"]] == ["sparse"] * 3


def test_sparsity_the_encoder_leaves_dense_is_reported(caplog):
    rng = np.random.default_rng(0)
    keras.utils.set_random_seed(0)
    inputs = keras.Input((64,))
    h = keras.layers.Dense(256, activation="relu", name="pruned")(inputs)
    h = keras.layers.Dense(256, activation="relu", name="lightly_pruned")(h)
    model = keras.Model(inputs, keras.layers.Dense(10, name="logits")(h))
    for name, sparsity in (("pruned", 0.9), ("lightly_pruned", 0.2)):
        layer = model.get_layer(name)
        kernel, bias = layer.get_weights()
        layer.set_weights([kernel * (rng.random(kernel.shape) >= sparsity), bias])
    x = rng.random((120, 64)).astype(np.float32)
    with caplog.at_level(std_logging.WARNING):
        art = tfedge.convert(model, x, sparse=True)
    facts = art.details["sparse"]
    assert facts["used"] and [r["encoding"] for r in facts["tensors"]] == \
        ["sparse", "dense", "dense"]
    assert [r["tensor"].split("/")[1] for r in facts["left_dense"]] == ["lightly_pruned"]
    assert any("left it dense" in m and "lightly_pruned" in m for m in warning_messages(caplog))


def test_sparse_encoding_litert_runs_wrongly_is_rejected(caplog):
    """float16 weights in 1x4 blocks: LiteRT 2.x returns NaN; the dense model is kept."""
    rng = np.random.default_rng(0)
    keras.utils.set_random_seed(0)
    inputs = keras.Input((64,))
    model = keras.Model(inputs, keras.layers.Dense(8)(
        keras.layers.Dense(512, activation="relu")(inputs)))
    for layer in model.layers[1:]:
        kernel, bias = layer.get_weights()
        blocks = rng.random((kernel.shape[0] // 4, kernel.shape[1])) >= 0.9
        layer.set_weights([kernel * np.repeat(blocks, 4, axis=0), bias])
    x = rng.random((32, 64)).astype(np.float32)
    with caplog.at_level(std_logging.WARNING):
        art = tfedge.convert(model, x, mode="float16", sparse=True)
    facts = art.details["sparse"]
    assert not facts["used"] and "NaN" in facts["reason"] and facts["ratio"] < 0.5
    assert not any(r["encoding"] == "sparse" for r in art.flatbuffer.weight_sparsity())
    assert any("sparse encoding rejected" in m for m in warning_messages(caplog))
    np.testing.assert_allclose(TFLiteRunner(art.content).predict(x), model.predict(x, verbose=0),
                               rtol=1e-2, atol=1e-2)


def _hostile_model(digits):
    """A digits MLP whose 'sharp_softplus' activation has a huge internal range (exp(8x))."""
    (x_train, y_train), _ = digits
    keras.utils.set_random_seed(0)
    inputs = keras.Input((64,), name="features")
    h = keras.layers.Dense(64, name="hidden")(inputs)
    h = keras.layers.Lambda(lambda v: tf.math.log(1.0 + tf.exp(8.0 * v)) / 8.0,
                            name="sharp_softplus")(h)
    h = keras.layers.Dense(32, activation="relu", name="dense2")(h)
    model = keras.Model(inputs, keras.layers.Dense(10, name="logits")(h), name="hostile")
    model.compile(keras.optimizers.Adam(1e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True), ["accuracy"])
    model.fit(x_train.reshape(-1, 64), y_train, epochs=10, batch_size=32, verbose=0)
    return model


def test_accuracy_aware_conversion_keeps_the_hostile_layer_in_float(digits):
    (x_train, _), (x_test, y_test) = digits
    x_train, x_test = x_train.reshape(-1, 64), x_test.reshape(-1, 64)
    model = _hostile_model(digits)
    report = debug_quantization(model, x_train[:300], (x_test, y_test))
    assert report.layers[0].layer == "sharp_softplus"
    assert report.layers[0].ops == ["EXP", "ADD", "LOG"]
    assert report.int8_loss > 0.2  # full int8 really is broken by that layer
    assert json.loads(report.to_json())["layers"][0]["layer"] == "sharp_softplus"
    assert "sharp_softplus" in str(report).splitlines()[3]

    art = tfedge.convert(model, x_train[:300], tolerance=0.01, eval_data=(x_test, y_test))
    fallback = art.details["float_fallback"]
    assert fallback["reached"] and fallback["kept_layers"] == ["sharp_softplus"]
    assert fallback["final_loss"] <= 0.01 < fallback["int8_loss"]
    assert fallback["size_cost_bytes"] == art.size_bytes - fallback["int8_bytes"]
    float_ops = {op.name for op in art.flatbuffer.float_ops()} - {"QUANTIZE", "DEQUANTIZE"}
    assert float_ops == {"EXP", "ADD", "LOG"}
    assert art.inputs[0].dtype == "INT8" and "kept in float: sharp_softplus" in art.description
    assert art.validation.accuracy_drop <= 0.01


def test_debug_statistics_only_skip_the_per_layer_models(digits):
    (x_train, _), (x_test, y_test) = digits
    model = _hostile_model(digits)
    report = debug_quantization(model, x_train[:100].reshape(-1, 64),
                                (x_test.reshape(-1, 64), y_test), output_effects=False)
    assert all(layer.output_loss is None for layer in report.layers)
    ratios = [layer.rmse_over_scale or 0.0 for layer in report.layers]
    assert ratios == sorted(ratios, reverse=True) and ratios[0] > 0.2
    assert report.int8_loss > 0.2  # the whole int8 model is still measured


def test_unreachable_tolerance_says_so_and_returns_the_best(digits, caplog):
    """Logits and a huge-range column share one int8 output tensor: no float layer helps."""
    (x_train, y_train), (x_test, y_test) = digits
    keras.utils.set_random_seed(0)
    inputs = keras.Input((64,), name="features")
    h = keras.layers.Dense(32, activation="relu", name="hidden")(inputs)
    logits = keras.layers.Dense(10, name="logits")(h)
    box = keras.layers.Lambda(lambda v: -1e4 * tf.sigmoid(v), name="box")(
        keras.layers.Dense(1, name="box_raw")(h))
    model = keras.Model(inputs, keras.layers.Concatenate(name="head")([logits, box]))
    trainer = keras.Model(inputs, logits)
    trainer.compile(keras.optimizers.Adam(3e-3),
                    keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    trainer.fit(x_train.reshape(-1, 64), y_train, epochs=5, batch_size=32, verbose=0)
    with caplog.at_level(std_logging.WARNING):
        art = tfedge.convert(model, x_train[:200].reshape(-1, 64), tolerance=0.02,
                             eval_data=(x_test.reshape(-1, 64), y_test))
    fallback = art.details["float_fallback"]
    assert not fallback["reached"] and fallback["final_loss"] > 0.02
    assert fallback["final_loss"] == min(a["loss"] for a in fallback["attempts"])
    assert art.outputs[0].dtype == "INT8"
    assert any("not reachable" in m and "output" in m for m in warning_messages(caplog))


# Runs LiteRT on every file given; only LiteRT is imported, to start fast.
_RUN_ALL = textwrap.dedent("""
    import sys
    import numpy as np
    from ai_edge_litert import interpreter as litert
    counts = {"ran": 0, "error": 0}
    for path in sys.argv[1:]:
        try:
            it = litert.Interpreter(model_path=path)
            it.allocate_tensors()
            d = it.get_input_details()[0]
            it.set_tensor(d["index"], np.zeros(d["shape"], d["dtype"]))
            it.invoke()
            counts["ran"] += 1
        except Exception:
            counts["error"] += 1
    print(counts)
""")


def _damaged_copies(content: bytes, n: int, seed: int = 0):
    """Truncations and bit flips of a valid flatbuffer."""
    rng = np.random.default_rng(seed)
    for k in range(n):
        v = bytearray(content)
        if k % 3 == 0:
            v = v[:int(rng.integers(8, len(v)))]
        else:
            for _ in range(int(rng.choice([1, 2, 8]))):
                i = int(rng.integers(8, len(v)))
                v[i] ^= 1 << int(rng.integers(8))
        yield bytes(v)


def test_corrupt_files_raise_clear_errors_and_never_crash(digits_int8, trained_digits_cnn,
                                                          digits, tmp_path):
    _, (x_test, _) = digits
    content = digits_int8.content
    cases = {"truncated": content[:len(content) // 2], "random": os.urandom(len(content)),
             "empty": b"", "foreign": b"PK\x03\x04" + os.urandom(200)}
    for name, data in cases.items():
        path = tmp_path / f"{name}.tflite"
        path.write_bytes(data)
        with pytest.raises(InvalidModelFileError, match="Not a|not a readable"):
            load(path)
        with pytest.raises(InvalidModelFileError):
            tfedge.validate(str(path), trained_digits_cnn, x_test[:4])
        with pytest.raises(InvalidModelFileError):
            TFLiteArtifact(data)
    with pytest.raises(InvalidModelFileError, match="directory"):
        load(tmp_path)
    # Damaged copies of a valid model: load() rejects each or accepts it (after a run in a
    # child process); LiteRT must then never die on the accepted ones, run in one process.
    accepted, rejected = [], 0
    for k, data in enumerate(_damaged_copies(content, 60)):
        path = tmp_path / f"damaged_{k}.tflite"
        path.write_bytes(data)
        try:
            load(path)
            accepted.append(str(path))
        except InvalidModelFileError:
            rejected += 1
    run = subprocess.run([sys.executable, "-c", _RUN_ALL, *accepted],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    counts = eval(run.stdout.strip().splitlines()[-1])  # noqa: S307 - our own dict
    assert counts["ran"] + counts["error"] == len(accepted) and rejected > 0


def test_a_model_that_crashes_litert_is_reported_not_fatal(digits_int8, tmp_path, monkeypatch):
    """What the child-process probe does when LiteRT dies on a file (simulated: SIGSEGV)."""
    path = tmp_path / "model.tflite"
    path.write_bytes(digits_int8.content + b"")  # same bytes, but no card: not vouched for
    monkeypatch.setattr(artifact_module, "_TRUSTED", set())
    monkeypatch.setattr(artifact_module, "_REJECTED", {})
    monkeypatch.setattr(artifact_module, "_PROBE_SCRIPT",
                        "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)")
    with pytest.raises(InvalidModelFileError, match="crashes on this model.*SIGSEGV"):
        load(path)
    with pytest.raises(InvalidModelFileError, match="crashes on this model.*SIGSEGV"):
        load(path)  # the rejection is remembered (by sha256): no second child
    artifact_module._REJECTED.clear()  # (below: other probe outcomes for the same bytes)
    assert load(path, probe=False).sha256 == digits_int8.sha256
    monkeypatch.setattr(artifact_module, "_PROBE_SCRIPT", "raise ImportError('no LiteRT')")
    assert load(path).sha256 == digits_int8.sha256  # a probe that cannot run: warned, loaded
    monkeypatch.setattr(artifact_module, "_PROBE_SCRIPT", "import sys; sys.exit(0)")
    assert load(path).sha256 == digits_int8.sha256


def test_cli_convert_writes_model_and_card(trained_digits_cnn, digits, tmp_path, capsys):
    from tfedge.cli import build_parser, main

    (x_train, _), (x_test, y_test) = digits
    model_file = str(tmp_path / "cnn.h5")
    trained_digits_cnn.save(model_file)
    np.save(tmp_path / "calib.npy", x_train[:200])
    np.savez(tmp_path / "eval.npz", x=x_test, y=y_test)
    out = tmp_path / "out" / "cnn.tflite"
    code = main(["convert", model_file, "--representative-data", str(tmp_path / "calib.npy"),
                 "--eval-data", str(tmp_path / "eval.npz"), "--output-type", "float32",
                 "-o", str(out)])
    printed = capsys.readouterr().out
    assert code == 0 and out.exists() and (tmp_path / "out" / "cnn_card.json").exists()
    assert "int8 (full integer" in printed and "top-1 agreement" in printed
    assert load(out).outputs[0].dtype == "FLOAT32"
    assert main(["convert", str(tmp_path / "calib.npy"), "-o", str(out)]) == 2
    assert "is a NumPy array (.npy), not a model" in capsys.readouterr().err
    convert_parser = build_parser()._subparsers._group_actions[0].choices["convert"]
    assert all(action.help for action in convert_parser._actions)


@pytest.mark.parametrize("input_name", ["class", None])
def test_input_named_like_a_python_keyword_keeps_its_signature(input_name):
    # ConvNeXtTiny's finished QAT model has an input tensor without a name: the
    # signature name became "None", tf.saved_model.save refused it as a keyword
    # argument, and the converter fell back to a path that writes no signature,
    # so validate could not run the file.
    inputs = keras.Input((4,), name=input_name or "x")
    model = keras.Model(inputs, keras.layers.Dense(3)(inputs))
    if input_name is None:
        model.inputs[0]._name = None  # what the rebuilt ConvNeXt has  # pylint: disable=protected-access
    x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    art = tfedge.convert(model, x)
    assert art.signatures, "the int8 file has no signature"
    report = tfedge.validate(art, model, x)
    assert report.num_samples == 32


def test_a_file_the_converter_writes_without_signatures_is_refused(monkeypatch):
    # Any failure of the converter's SavedModel step (here: the keyword name the
    # cleaning above now prevents) makes it drop signatures without a word.
    monkeypatch.setattr(source_module, "_clean_name", lambda name, fallback: str(name))
    inputs = keras.Input((4,), name="class")
    model = keras.Model(inputs, keras.layers.Dense(3)(inputs))
    x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    with pytest.raises(ConversionError, match="wrote no signature .* plain identifier names"):
        tfedge.convert(model, x)
