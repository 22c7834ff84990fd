"""Handoff bundles: micro bundles compile and run bit-exact in TFLM; Android facts read back."""

import json
import os
import pathlib
import re
import shutil
import subprocess

import numpy as np
import pytest

import tfedge
from tfedge import handoff, keras, metadata, micro
from tfedge.card import read_model_card, write_model_card
from tfedge.errors import UnsupportedModelError, VerificationError

LABELS = [f"digit {d}" for d in range(10)]


@pytest.fixture(scope="module")
def x_test(digits):
    return digits[1][0]


@pytest.fixture(scope="module")
def micro_bundle(digits_int8, x_test, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundles") / "micro"
    return tfedge.export_micro(digits_int8, out, sample_inputs=x_test[:32], name="digits_cnn")


@pytest.fixture(scope="module")
def android_bundle(digits_int8, x_test, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundles") / "android"
    return tfedge.export_android(digits_int8, out, labels=LABELS, norm_mean=0.0, norm_std=1.0,
                                 name="digits", version="2.1",
                                 description="Handwritten digit classifier, 8x8 grey.",
                                 sample_inputs=x_test[:16])


def test_tflm_outputs_equal_litert_exactly_on_32_inputs(micro_bundle, digits_int8, x_test):
    inputs = [handoff.quantize_input(x_test[:32], digits_int8.inputs[0])]
    tflm = micro.run_tflm(digits_int8.content, inputs, arena_size=micro_bundle.arena_bytes)
    litert = handoff.litert_outputs(digits_int8.content, inputs)
    assert tflm.outputs[0].shape == (32, 10) and tflm.outputs[0].dtype == np.int8
    np.testing.assert_array_equal(tflm.outputs[0], litert[0])
    assert micro_bundle.card["bundle"]["verification"]["equal"]


def test_arena_is_measured_and_is_the_smallest_that_works(micro_bundle, digits_int8, x_test):
    arena = micro_bundle.arena_bytes
    assert arena > 0
    header = (pathlib.Path(micro_bundle.directory) / "model_data.h").read_text()
    assert f"TensorArenaSize = {arena};" in header
    smallest = micro_bundle.card["bundle"]["arena_min_bytes"]
    assert arena == smallest + handoff.ARENA_HEADROOM  # tests/test_micro_arena.py: the search
    inputs = [handoff.quantize_input(x_test[:1], digits_int8.inputs[0])]
    with pytest.raises(VerificationError, match="allocating tensors"):
        micro.run_tflm(digits_int8.content, inputs, arena_size=smallest - 1)


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs the system C++ compiler")
def test_micro_bundle_compiles_and_holds_the_model(micro_bundle, tmp_path):
    symbols = micro_bundle.card["bundle"]["symbols"]
    program = tmp_path / "check_model.cc"
    program.write_text(f"""
#include <cstdio>
#include <cstring>
#include <vector>
#include "model_data.h"
static_assert({symbols['arena_size']} > 0, "arena size");
int main(int argc, char** argv) {{
  if (argc != 2) return 5;
  std::FILE* f = std::fopen(argv[1], "rb");
  if (!f) return 4;
  std::vector<unsigned char> bytes({symbols['length']} + 1);
  size_t n = std::fread(bytes.data(), 1, bytes.size(), f);
  std::fclose(f);
  if (n != {symbols['length']}) return 1;
  if (std::memcmp(bytes.data(), {symbols['data']}, n) != 0) return 2;
  if (reinterpret_cast<unsigned long>({symbols['data']}) % 16 != 0) return 3;
  return 0;
}}
""")
    directory = pathlib.Path(micro_bundle.directory)
    binary = tmp_path / "check_model"
    subprocess.run(["g++", "-std=c++17", "-Wall", "-Wextra", "-Werror", f"-I{directory}",
                    str(program), str(directory / "model_data.cc"), "-o", str(binary)],
                   check=True, capture_output=True)
    run = subprocess.run([str(binary), str(directory / "model.tflite")])
    assert run.returncode == 0, "length, bytes or alignment of the C array is wrong"


def test_op_resolver_registers_exactly_the_models_ops(micro_bundle, digits_int8):
    header = (pathlib.Path(micro_bundle.directory) / "op_resolver.h").read_text()
    expected = {micro.TFLM_BUILTIN_OPS[op] for op in digits_int8.ops}
    registered = set(re.findall(r"resolver\.(Add\w+)\(\)", header))
    assert registered == expected
    assert f"MicroMutableOpResolver<{len(expected)}>" in header


def test_check_bundle_passes_and_catches_wrong_samples(micro_bundle, tmp_path):
    assert tfedge.check_bundle(micro_bundle.directory).ok
    copy = tmp_path / "micro"
    shutil.copytree(micro_bundle.directory, copy)
    with np.load(copy / "samples.npz") as data:
        arrays = dict(data)
    arrays["output_0"][0, 0] += 1
    np.savez(copy / "samples.npz", **arrays)
    card = read_model_card(copy)  # re-sign the file so only the reproduction checks fail
    card["bundle"]["files"]["samples.npz"]["sha256"] = handoff.sha256_file(str(copy / "samples.npz"))
    write_model_card(copy, card)
    failed = {check for check, passed, _ in tfedge.check_bundle(copy).checks if not passed}
    assert failed == {"LiteRT reproduces samples", "TFLM reproduces samples"}


def test_op_tflm_lacks_is_named_before_anything_is_written(digits, tmp_path):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8,))
    model = keras.Model(inputs, keras.layers.Dense(4, activation="gelu")(inputs))
    x = digits[0][0][:200].reshape(200, -1)[:, :8]
    artifact = tfedge.convert(model, representative_data=x)
    assert "GELU" in artifact.ops
    with pytest.raises(UnsupportedModelError, match="no kernel for GELU"):
        tfedge.export_micro(artifact, tmp_path / "gelu")
    assert not (tmp_path / "gelu").exists()


def test_tflm_crash_becomes_a_clear_error(digits_int8, tmp_path, monkeypatch):
    worker = tmp_path / "abort.py"
    worker.write_text("import os\nprint('stage load', flush=True)\nos.abort()\n")
    monkeypatch.setattr(micro, "_WORKER", str(worker))
    inputs = [np.zeros((1, 8, 8, 1), np.int8)]
    with pytest.raises(VerificationError, match="SIGABRT while loading the model"):
        micro.run_tflm(digits_int8.content, inputs)


def test_android_metadata_reads_back_as_written(android_bundle, digits_int8):
    directory = pathlib.Path(android_bundle.directory)
    sidecar = json.loads((directory / "metadata.json").read_text())
    content = (directory / "model.tflite").read_bytes()
    embedded = json.loads(metadata.read_metadata(content)[handoff.METADATA_ENTRY])
    assert embedded == sidecar
    assert (sidecar["name"], sidecar["version"]) == ("digits", "2.1")
    assert sidecar["description"] == "Handwritten digit classifier, 8x8 grey."
    assert sidecar["labels"] == LABELS
    assert (directory / "labels.txt").read_text().splitlines() == LABELS
    assert sidecar["signature_key"] == "serving_default"
    (inp,), (out,) = sidecar["inputs"], sidecar["outputs"]
    assert inp["normalization"] == {"mean": [0.0], "std": [1.0]}
    assert (inp["signature_name"], out["signature_name"]) == ("image", "logits")
    source = digits_int8.inputs[0]
    assert inp["dtype"] == "int8" and inp["shape"] == list(source.shape)
    assert inp["quantization"] == {"scale": source.scale[0], "zero_point": source.zero_point[0]}
    assert out["quantization"]["scale"] == digits_int8.outputs[0].scale[0]
    # The converter's own metadata survives, and the graph computes the same.
    assert {"min_runtime_version", handoff.METADATA_ENTRY} <= set(metadata.read_metadata(content))
    inputs = [np.random.default_rng(1).integers(-128, 128, (8, 8, 8, 1), dtype=np.int8)]
    np.testing.assert_array_equal(handoff.litert_outputs(content, inputs)[0],
                                  handoff.litert_outputs(digits_int8.content, inputs)[0])
    assert tfedge.check_bundle(directory).ok


def test_embedding_replaces_an_entry_and_keeps_buffers_aligned(digits_int8):
    once = metadata.embed_metadata(digits_int8.content, {"a.json": b"1"})
    twice = metadata.embed_metadata(once, {"a.json": b"22", "b.json": b"3"})
    entries = metadata.read_metadata(twice)
    assert entries["a.json"] == b"22" and entries["b.json"] == b"3"
    assert list(entries).count("a.json") == 1
    from ai_edge_litert import schema_py_generated as schema
    model = schema.Model.GetRootAs(twice, 0)
    for i in range(model.BuffersLength()):
        buffer = model.Buffers(i)
        if buffer.DataLength():
            assert buffer._tab.Vector(buffer._tab.Offset(4)) % 16 == 0


def test_android_io_type_must_match_the_model(digits_int8, tmp_path):
    with pytest.raises(ValueError, match="input_type='uint8'"):
        tfedge.export_android(digits_int8, tmp_path / "a", io_type="uint8")
    with pytest.raises(ValueError, match="10 output classes"):
        tfedge.export_android(digits_int8, tmp_path / "a", labels=["a", "b"])
    assert not (tmp_path / "a").exists()


def test_android_uint8_bundle_for_camera_pipelines(trained_digits_cnn, digits, tmp_path):
    (x_train, _), (x_test, _) = digits
    artifact = tfedge.convert(trained_digits_cnn, representative_data=x_train[:300],
                              input_type="uint8", output_type="uint8")
    bundle = tfedge.export_android(artifact, tmp_path / "u8", io_type="uint8", labels=LABELS,
                                   sample_inputs=x_test[:8])
    facts = json.loads((tmp_path / "u8" / "metadata.json").read_text())
    assert facts["inputs"][0]["dtype"] == facts["outputs"][0]["dtype"] == "uint8"
    assert 0 <= facts["inputs"][0]["quantization"]["zero_point"] <= 255
    assert bundle.card["bundle"]["io_type"] == "uint8"
    assert tfedge.check_bundle(tmp_path / "u8").ok


def test_cli_exports_both_bundles_and_checks_them(digits_int8, x_test, tmp_path, capsys):
    from tfedge.cli import main

    model = str(tmp_path / "digits.tflite")
    (tmp_path / "digits.tflite").write_bytes(digits_int8.content)
    np.save(tmp_path / "x.npy", x_test[:8])
    (tmp_path / "labels.txt").write_text("\n".join(LABELS) + "\n")
    status = main(["export", model, "--android", str(tmp_path / "android"), "--micro",
                   str(tmp_path / "micro"), "--labels", str(tmp_path / "labels.txt"),
                   "--norm-mean", "0", "--norm-std", "1", "--samples", str(tmp_path / "x.npy")])
    assert status == 0 and "tensor arena" in capsys.readouterr().out
    for kind in ("android", "micro"):
        assert main(["check", str(tmp_path / kind)]) == 0
        assert "bundle OK" in capsys.readouterr().out
    os.remove(tmp_path / "micro" / "op_resolver.h")
    assert main(["check", str(tmp_path / "micro")]) == 1


def test_one_step_differences_fail_unless_allowed():
    reference = [np.array([[5, -3, 7]], np.int8)]
    candidate = [np.array([[5, -2, 7]], np.int8)]
    strict = handoff.compare_outputs(reference, candidate)
    assert not strict["equal"] and strict["differing_values"] == 1
    assert "top-1 equal on 100%" in strict["summary"]
    assert handoff.compare_outputs(reference, candidate, max_diff=1)["equal"]
    assert not handoff.compare_outputs(reference, [candidate[0] + 2], max_diff=1)["equal"]


def test_labels_attach_to_the_class_scores_output_of_a_detector(tmp_path, digits):
    (x, _), _ = digits
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Flatten()(inputs)
    boxes = keras.layers.Reshape((4, 4))(keras.layers.Dense(16)(h))
    scores = keras.layers.Reshape((4, 3))(keras.layers.Dense(12, activation="sigmoid")(h))
    artifact = tfedge.convert(keras.Model(inputs, [boxes, scores]), representative_data=x[:100])
    tfedge.export_android(artifact, tmp_path / "det", labels=["circle", "square", "triangle"])
    sidecar = json.loads((tmp_path / "det" / "metadata.json").read_text())
    labelled = [o for o in sidecar["outputs"] if o["labels_file"]]
    assert len(labelled) == 1 and labelled[0]["shape"][-1] == 3
    with pytest.raises(ValueError, match="5 labels"):
        tfedge.export_android(artifact, tmp_path / "bad", labels=list("abcde"))
