"""The recipes end to end in --quick mode, on the offline defaults and on mock tfds data.

Quick runs train for one epoch on a slice of the data, so they check the
pipeline and its outputs (handoff folder, full-int8 model, model card,
labels, report, mAP), not accuracy: the accuracy acceptance is measured by
the recipes' full runs and benchmarks/detector.py.
"""

import json
import os

import numpy as np
import pytest

import tfedge
from tfedge import keras

from recipes import classifier, detector
from recipes import data as data_lib


def _files(folder):
    return sorted(os.listdir(folder))


# ----------------------------------------------------------------------------
# Classifier
# ----------------------------------------------------------------------------
def test_classifier_defaults_are_the_whole_product():
    args = classifier.build_parser().parse_args([])
    assert args.model == "mobilenet_v3_small" and args.prune == 0.5 and args.qat
    assert args.distill_from == "float" and args.emulate and args.html_report
    assert {"rpi4", "rpi5"} <= set(args.bench_targets.split(","))
    assert not args.int8_friendly  # the unmodified keras.applications MobileNetV3-Small


@pytest.mark.slow
def test_classifier_quick_on_digits_writes_the_handoff_folder(tmp_path):
    # the main job's pipeline (prune -> sparsity-preserving QAT, distilled from the float
    # model; emulated ARM; both bundles; report.html) on the small CNN
    args = classifier.build_parser().parse_args(
        ["--model", "digits_cnn", "--quick", "--output_dir", str(tmp_path), "--verbose", "0",
         "--save_keras"])
    results = classifier.run(args)
    assert [s["stage"] for s in results["stages"]] == ["float", "pruned", "QAT", "int8"]

    folder = tmp_path / "digits_digits_cnn"
    assert {"model.tflite", "model_card.json", "labels.txt", "README.md",
            "keras_model.keras"} <= set(_files(folder))
    artifact = tfedge.load(folder / "model.tflite")
    tfedge.check_full_integer(artifact)
    assert artifact.inputs[0].dtype == "INT8" and tuple(artifact.inputs[0].shape[1:]) == (32, 32, 3)
    card = json.loads((folder / "model_card.json").read_text())
    assert card["labels"] == [str(d) for d in range(10)]
    assert card["validation"]["tflite_accuracy"] == pytest.approx(results["int8_accuracy"])
    assert (folder / "labels.txt").read_text().split() == card["labels"]
    readme = (folder / "README.md").read_text()
    assert "int8 TFLite" in readme and "tfedge.bench" in readme
    assert card["benchmark"]["host"]["latency_ms"]["p50"] > 0
    for kind in ("android", "micro"):  # handoff bundles, each verified in its runtime
        assert (folder / kind / "model.tflite").exists(), results["bundles"][kind]
        assert tfedge.check_bundle(folder / kind).ok
    pipeline = card["extra"]["pipeline"]
    assert pipeline["pruning"]["schedule"] == "polynomial_decay"
    assert pipeline["pruning"]["kernel_sparsity_after_pruning"] > 0
    assert pipeline["qat"]["sparsity_preserving"]
    assert pipeline["distillation"]["teacher"] == "the float model trained in this run"
    assert pipeline["distillation"]["temperature"] > 0
    assert set(pipeline["emulated_instructions"]) == {"rpi4", "rpi5"}
    for target in pipeline["emulated_instructions"].values():  # exact, or why not
        assert target["instructions"] or "not emulated" in target["note"]
    assert (folder / "report.html").stat().st_size > 10_000


def test_classifier_on_mock_tfds_cifar10(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    args = classifier.build_parser().parse_args(
        ["--dataset", "cifar10", "--model", "digits_cnn", "--quick", "--output_dir",
         str(tmp_path), "--verbose", "0", "--bundles", "none", "--bench_targets", "none",
         "--prune", "0", "--no-qat", "--distill_from", "none", "--no-html_report"])
    with tfds.testing.mock_data(num_examples=40):
        results = classifier.run(args)
    card = json.loads((tmp_path / "cifar10_digits_cnn" / "model_card.json").read_text())
    assert len(card["labels"]) == 10  # from tfds' ClassLabel (mock data names them "0".."9")
    assert results["test_samples"] == 40


@pytest.mark.slow
def test_classifier_prune_qat_and_distill_flags_go_through_tfedge_wrap(tmp_path):
    keras.utils.set_random_seed(0)
    teacher = tmp_path / "teacher.keras"  # any tf_keras model with the same classes will do
    classifier.build_classifier("digits_cnn", 10, alpha=0.5).save(teacher)

    args = classifier.build_parser().parse_args(
        ["--model", "digits_cnn", "--alpha", "0.25", "--quick", "--output_dir", str(tmp_path),
         "--name", "student", "--verbose", "0", "--bundles", "none", "--bench_targets", "none",
         "--prune", "0.5", "--qat", "--distill_from", str(teacher)])
    results = classifier.run(args)
    assert results["optimizations"] == ["prune", "qat", "distill"]
    artifact = tfedge.load(tmp_path / "student" / "model.tflite")
    tfedge.check_full_integer(artifact)
    sparsities = [row["sparsity"] for row in artifact.flatbuffer.weight_sparsity()]
    assert max(sparsities) >= 0.45  # the pruned kernels survive QAT and conversion


@pytest.mark.slow
def test_int8_friendly_mobilenet_v3_rebuild_is_qat_ready():
    from tfedge.quantize import QATConfig, apply_qat

    keras.utils.set_random_seed(0)
    v3 = classifier.build_classifier("mobilenet_v3_small", 10, input_size=32, alpha=0.75)
    kinds = {type(layer).__name__ for layer in v3.layers}
    assert {"TFOpLambda", "Multiply"} <= kinds  # the keras.applications trap is there

    lite = classifier.int8_friendly_mobilenet_v3(v3)
    lite_kinds = {type(layer).__name__ for layer in lite.layers}
    assert not lite_kinds & {"TFOpLambda", "Multiply"}
    assert not any("squeeze_excite" in layer.name for layer in lite.layers)
    # kept layers keep their weights; the source model is untouched
    for name in ("Conv", "expanded_conv/depthwise", "logits"):
        for a, b in zip(v3.get_layer(name).get_weights(), lite.get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)
    assert "TFOpLambda" in {type(layer).__name__ for layer in v3.layers}
    assert lite.output_shape == v3.output_shape
    # it converts like the source: full int8, with its serving signature (which
    # the validator needs)
    x = np.random.default_rng(0).uniform(0, 1, (8, 32, 32, 3)).astype(np.float32)
    artifact = tfedge.convert(lite, representative_data=x)
    assert list(artifact.signatures) == ["serving_default"]
    # every layer gets QAT, also with tfmot's prune-preserving scheme
    for preserve in ("none", "sparsity"):
        _, plan = apply_qat(lite, QATConfig(), preserve=preserve, log=lambda *a: None)
        assert not plan.skipped


@pytest.mark.slow
def test_mobilenet_v3_small_converts_to_full_int8_and_validates(tmp_path):
    args = classifier.build_parser().parse_args(
        ["--model", "mobilenet_v3_small", "--alpha", "0.75", "--quick", "--output_dir",
         str(tmp_path), "--verbose", "0", "--bundles", "none", "--bench_targets", "none",
         "--prune", "0", "--no-qat", "--distill_from", "none", "--no-html_report"])
    results = classifier.run(args)
    artifact = tfedge.load(tmp_path / "digits_mobilenet_v3_small" / "model.tflite")
    tfedge.check_full_integer(artifact)
    assert "HARD_SWISH" in artifact.ops  # hard-swish kept, as an int8 kernel
    # One quick epoch is 8 steps from random weights: the model is barely trained (10.9% in
    # a CI run) and its BatchNorm moving statistics (momentum 0.9) still hold 0.9**8 = 43%
    # of their initial values, so the 10 logits lie within a few int8 output steps of each
    # other and top-1 is often decided by one rounding (that CI run: 123 of 128 differ, all
    # 123 Keras near-ties). Disagreements that are not near-ties are the conversion's own
    # errors; those must stay rare.
    differ = round((1 - results["agreement"]) * results["test_samples"])
    assert results["near_ties"] is not None
    assert differ - results["near_ties"] <= 0.1 * results["test_samples"]


# ----------------------------------------------------------------------------
# Detector
# ----------------------------------------------------------------------------
def test_postprocess_of_perfect_outputs_scores_map_one():
    """Ground truth encoded as the body's outputs decodes back to mAP 1.0."""
    images, boxes, classes = data_lib.generate_shapes(8, size=64, seed=3)
    anchors = detector.make_anchors(64)
    raw = np.zeros((8, len(anchors), 4), np.float32)
    logits = np.full((8, len(anchors), 3), -10.0, np.float32)
    for i in range(8):
        targets = detector.encode_targets(*data_lib._pad_objects(boxes[i], classes[i], 8),
                                          anchors, 3)
        positive = targets["boxes"][:, 4].numpy() > 0
        assert positive.sum() >= len(boxes[i])  # every object has anchors
        target_boxes = targets["boxes"][:, :4].numpy()[positive]
        raw[i][positive] = detector.encode_boxes(target_boxes, anchors.centers_sizes[positive])
        decoded = detector.decode_boxes(raw[i][positive], anchors.centers_sizes[positive])
        np.testing.assert_allclose(decoded.numpy(), target_boxes, atol=1e-5)
        logits[i][positive] = np.where(targets["scores"].numpy()[positive] > 0, 10.0, -10.0)
    result = detector.coco_map(detector.postprocess(raw, logits, anchors), boxes, classes, 3, 64)
    assert result["map50"] == pytest.approx(1.0) and result["map50_95"] == pytest.approx(1.0)
    # and the wrong classes score nothing
    wrong = detector.coco_map(detector.postprocess(raw, np.roll(logits, 1, axis=-1), anchors),
                              boxes, classes, 3, 64)
    assert wrong["map50"] == pytest.approx(0.0)


def test_generated_shapes_are_deterministic_with_boxes_inside_the_image():
    a = data_lib.generate_shapes(5, size=48, seed=1)
    b = data_lib.generate_shapes(5, size=48, seed=1)
    np.testing.assert_array_equal(a[0], b[0])
    for boxes, classes in zip(a[1], a[2]):
        assert 1 <= len(boxes) <= 4 and len(boxes) == len(classes)
        assert (boxes >= 0).all() and (boxes <= 1).all()
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
        assert set(classes) <= {0, 1, 2}


@pytest.mark.slow
def test_detector_quick_on_shapes_keeps_boxes_and_scores_apart(tmp_path):
    args = detector.build_parser().parse_args(
        ["--quick", "--output_dir", str(tmp_path), "--verbose", "0", "--bundles", "none",
         "--bench_targets", "none"])
    results = detector.run(args)
    folder = tmp_path / "shapes_detector"
    assert {"model.tflite", "model_card.json", "labels.txt", "README.md",
            "anchors.csv"} <= set(_files(folder))
    artifact = tfedge.load(folder / "model.tflite")
    tfedge.check_full_integer(artifact)
    assert len(artifact.outputs) == 2
    shapes = sorted(t.shape[-1] for t in artifact.outputs)
    assert shapes == [3, 4]  # scores for 3 classes, 4 box numbers: separate tensors
    scales = {t.scale[0] for t in artifact.outputs}
    assert len(scales) == 2  # each with its own int8 scale
    anchors = np.loadtxt(folder / "anchors.csv", delimiter=",", skiprows=1)
    assert len(anchors) == artifact.outputs[0].shape[1] == results["anchors"]
    assert 0.0 <= results["int8_map"]["map50"] <= 1.0
    assert (folder / "labels.txt").read_text().split() == data_lib.SHAPE_LABELS


@pytest.mark.slow
def test_detector_on_mock_tfds_voc(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    args = detector.build_parser().parse_args(
        ["--dataset", "voc", "--quick", "--output_dir", str(tmp_path), "--verbose", "0",
         "--bundles", "none", "--bench_targets", "none"])
    with tfds.testing.mock_data(num_examples=20):
        results = detector.run(args)
    card = json.loads((tmp_path / "voc_detector" / "model_card.json").read_text())
    assert len(card["labels"]) == 20
    assert results["test_images"] == 16


def test_without_qemu_the_job_says_which_command_enables_emulation(digits_int8, monkeypatch,
                                                                  capsys):
    from recipes import common
    from tfedge.arm import sysroot

    monkeypatch.setattr(sysroot.shutil, "which", lambda name: None)  # no qemu, no compiler
    args = classifier.build_parser().parse_args(["--bench_targets", "rpi4,rpi5", "--quick"])
    report = common.benchmark(digits_int8, args, "digits")
    out = capsys.readouterr().out
    assert "ARM emulation is not available here" in out
    assert sysroot.INSTALL_TOOLS in out  # the exact command, not a silent "skipped"
    for target in report.targets:
        assert target.instructions is None and sysroot.INSTALL_TOOLS in target.note
