"""The micro bundle's tensor arena: the smallest that allocates and runs, found by search.

TFLM's recorded arena use is only a lower bound (its memory planner needs
scratch space while allocating); the bundle states the smallest arena that
works plus 16 bytes of alignment headroom, and 16 bytes less than that
smallest arena fails. Checked on the digits CNN, on a MobileNetV3-Small-sized
model (32x32 input, untrained: arena use does not depend on the weights), and
on the small digits CNNs the recorded-size check used to refuse.
"""

import json
import pathlib

import pytest

import tfedge
from tfedge import handoff, keras, micro
from tfedge.errors import VerificationError

from recipes.classifier import build_classifier


def bundle_inputs(artifact, samples):
    return [handoff.quantize_input(samples, artifact.inputs[0])]


def _check_stated_arena(bundle, artifact, samples):
    """Asserts the bundle's stated arena runs and 16 B less fails; returns the smallest."""
    facts = bundle.card["bundle"]
    smallest, headroom = facts["arena_min_bytes"], facts["arena_headroom_bytes"]
    assert headroom == micro.ARENA_ALIGNMENT == 16
    assert bundle.arena_bytes == smallest + headroom
    assert facts["arena_recorded_bytes"] <= smallest
    header = (pathlib.Path(bundle.directory) / "model_data.h").read_text()
    assert f"TensorArenaSize = {smallest + headroom};" in header
    inputs = [handoff.quantize_input(samples[:2], artifact.inputs[0])]
    assert micro.run_tflm(artifact.content, inputs, arena_size=smallest).arena_bytes == smallest
    with pytest.raises(VerificationError, match="allocating tensors"):
        micro.run_tflm(artifact.content, inputs, arena_size=smallest - micro.ARENA_ALIGNMENT)
    assert tfedge.check_bundle(bundle.directory).ok
    return smallest


def test_digits_cnn_arena_is_the_smallest_that_runs(digits_int8, digits, tmp_path):
    x_test = digits[1][0]
    bundle = tfedge.export_micro(digits_int8, tmp_path / "micro", sample_inputs=x_test[:8],
                                 name="digits_cnn")
    smallest = _check_stated_arena(bundle, digits_int8, x_test)
    assert smallest >= bundle.card["bundle"]["arena_recorded_bytes"] > 0


@pytest.fixture(scope="module")
def mobilenet_v3_int8():
    """keras.applications' MobileNetV3-Small 0.75 at 32x32 (hard-swish, squeeze-excite), untrained.

    The model the recorded-size check refused ("Too many buffers"); the main
    job's int8-friendly rebuild needs no more than TFLM records.
    """
    import numpy as np

    keras.utils.set_random_seed(0)
    model = build_classifier("mobilenet_v3_small", 10, alpha=0.75)
    x = np.random.default_rng(0).random((32, 32, 32, 3), dtype=np.float32)
    return tfedge.convert(model, representative_data=x), x


def test_mobilenet_v3_arena_needs_more_than_tflm_records(mobilenet_v3_int8, tmp_path):
    artifact, x = mobilenet_v3_int8
    bundle = tfedge.export_micro(artifact, tmp_path / "micro", sample_inputs=x[:4],
                                 name="mnv3", max_diff=1)
    _check_stated_arena(bundle, artifact, x)
    facts = bundle.card["bundle"]
    # the recorded total is not enough here: the planner's scratch space is missing
    assert facts["arena_recorded_bytes"] < facts["arena_min_bytes"]


def test_arena_size_override_is_stated_and_checked(mobilenet_v3_int8, tmp_path):
    artifact, x = mobilenet_v3_int8
    inputs = [handoff.quantize_input(x[:1], artifact.inputs[0])]
    smallest = micro.run_tflm(artifact.content, inputs).arena_bytes
    given = smallest + 4096
    bundle = tfedge.export_micro(artifact, tmp_path / "given", sample_inputs=x[:2],
                                 arena_size=given, max_diff=1)
    assert bundle.arena_bytes == given
    assert f"TensorArenaSize = {given};" in (tmp_path / "given" / "model_data.h").read_text()
    assert tfedge.check_bundle(tmp_path / "given").ok
    with pytest.raises(VerificationError, match="allocating tensors"):
        tfedge.export_micro(artifact, tmp_path / "small", sample_inputs=x[:2],
                            arena_size=smallest - 16, max_diff=1)
    assert not (tmp_path / "small").exists()
    with pytest.raises(ValueError, match="positive whole number"):
        tfedge.export_micro(artifact, tmp_path / "bad", arena_size=0)


def _valid_conv(width=8):
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(width, 3, padding="valid", activation="relu")(inputs)
    h = keras.layers.Conv2D(2 * width, 3, padding="valid", activation="relu")(h)
    h = keras.layers.Flatten()(h)
    return keras.Model(inputs, keras.layers.Dense(10)(h), name="valid_conv")


def _global_pool_head(width=8):
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(width, 3, padding="same", activation="relu")(inputs)
    h = keras.layers.Conv2D(2 * width, 3, strides=2, padding="same", activation="relu")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(inputs, keras.layers.Dense(10)(h), name="gap_head")


@pytest.mark.parametrize("build", [_valid_conv, _global_pool_head])
def test_small_digits_cnns_the_recorded_size_refused_now_export(build, digits, tmp_path):
    (x_train, _), (x_test, _) = digits
    keras.utils.set_random_seed(0)
    artifact = tfedge.convert(build(), representative_data=x_train[:100])
    bundle = tfedge.export_micro(artifact, tmp_path / "micro", sample_inputs=x_test[:8],
                                 max_diff=1)
    _check_stated_arena(bundle, artifact, x_test)
    card = json.loads((tmp_path / "micro" / "model_card.json").read_text())
    assert card["bundle"]["verification"]["equal"]


def test_tflm_is_checked_against_litert_reference_kernels_where_builtin_ones_round_apart(
        digits_int8, digits, tmp_path, monkeypatch):
    x_test = digits[1][0]
    real = handoff.litert_outputs

    def builtin_two_steps_off(content, inputs, op_resolver=handoff.REFERENCE_RESOLVER):
        outputs = real(content, inputs, op_resolver)
        if op_resolver != "reference":  # as LiteRT's optimized kernels did on a MobileNetV3
            outputs[0] = (outputs[0].astype("int16") + 2).clip(-128, 127).astype(outputs[0].dtype)
        return outputs

    monkeypatch.setattr(handoff, "litert_outputs", builtin_two_steps_off)
    bundle = tfedge.export_micro(digits_int8, tmp_path / "micro", sample_inputs=x_test[:8],
                                 max_diff=1)
    facts = bundle.card["bundle"]
    assert facts["samples"]["litert_op_resolver"] == "reference"
    assert "reference kernels" in facts["verification"]["summary"]
    assert tfedge.check_bundle(tmp_path / "micro").ok
    far_off = [(o.astype("int16") - 5).clip(-128, 127).astype(o.dtype)
               for o in real(digits_int8.content, bundle_inputs(digits_int8, x_test[:8]))]
    monkeypatch.setattr(micro, "run_tflm", lambda *a, **k: micro.TFLMRun(
        arena_bytes=1024, outputs=far_off))
    with pytest.raises(VerificationError, match="reference kernels"):  # matches neither
        tfedge.export_micro(digits_int8, tmp_path / "other", sample_inputs=x_test[:8])
