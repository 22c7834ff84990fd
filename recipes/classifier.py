"""Image classifier recipe: MobileNetV2 / MobileNetV3-Small to a validated int8 TFLite model.

Data -> float training (random init, or fine-tuning ImageNet weights) ->
optional prune / QAT / distill fine-tune (one ``tfedge.wrap``) -> full-int8
``tfedge.convert`` -> ``tfedge.validate`` in LiteRT -> ``tflite_models/<name>/``.

The default run is the project's main job, the whole product on the embedded
default, offline, in about three minutes on two CPU cores::

    python -m recipes.classifier

MobileNetV3-Small (width 0.75, 32x32 input) on scikit-learn's handwritten
digits, as keras.applications builds it (see below): 15 float epochs, then one
``tfedge.wrap``: 6 epochs of polynomial-decay pruning to 50% zeros, then 4
of sparsity-preserving QAT, all distilled from the float model; full-int8
conversion, validation in LiteRT, ``tfedge.bench`` with emulated rpi4 and
rpi5 (exact instructions, outputs bit-exact against the host), both
bundles, each verified, and ``report.html``. ``--prune 0 --no-qat
--distill_from none`` gives plain post-training int8.

Other examples::

    python -m recipes.classifier --model mobilenet_v2 --alpha 0.35 --input_size 96
    python -m recipes.classifier --model digits_cnn --prune 0.8 --no-qat
    python -m recipes.classifier --dataset tf_flowers --input_size 128 --alpha 0.5 \\
        --weights imagenet --epochs 5

MobileNetV3 and int8: keras.applications builds hard-swish and the
squeeze-excite gate from ``TFOpLambda`` ops and ``Multiply`` layers, which
tfmot's QAT cannot quantize (model-optimization issue 980). ``tfedge.wrap``
rewrites them on its private copy (:func:`tfedge.prepare_model`: hard-swish
-> ``HardSwish``, the gate -> a quantized ``Multiply``, each rewrite checked
numerically), so the recipe trains the architecture exactly as
keras.applications builds it and the int8 file keeps TFLite's ``HARD_SWISH``
and ``MUL`` kernels. ``--int8_friendly`` still rebuilds the network with
:func:`int8_friendly_mobilenet_v3` (ReLU6, no squeeze-excite) for runtimes
without ``HARD_SWISH``; the report and card say so when it is used.
"""

from __future__ import annotations

import argparse
import os
import sys
import zlib
from typing import Any

import numpy as np

import tfedge
from tfedge import prune as prune_lib
from tfedge._keras import keras
from tfedge.report import format_table

from recipes import common
from recipes import data as data_lib

ARCHITECTURES = ("mobilenet_v2", "mobilenet_v3_small", "digits_cnn")


# ----------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------
def build_classifier(arch: str, num_classes: int, *, input_size: int = 32, alpha: float = 0.35,
                     weights: str | None = None, dropout: float = 0.2,
                     bn_momentum: float | None = 0.9, name: str | None = None) -> Any:
    """Builds a classifier that takes RGB images in [0, 1] and outputs logits.

    MobileNets come from ``keras.applications`` (tf_keras), built flat into
    one functional model (no nested model, so tfmot can wrap every layer):
    (with ImageNet weights, ``Rescaling`` to [-1, 1]) -> MobileNet body ->
    global average pooling -> dropout -> ``Dense(num_classes)`` named
    ``logits``.

    Args:
        arch: one of :data:`ARCHITECTURES`.
        num_classes: output classes.
        input_size: square input size in pixels (MobileNets: at least 32).
        alpha: width multiplier of the MobileNets (and of the small CNN).
        weights: ``"imagenet"`` (downloaded by Keras; needs internet) or None
            for random initialization.
        dropout: dropout rate before the last layer.
        bn_momentum: batch-norm momentum to set on every BatchNormalization
            layer. keras.applications uses 0.999, which makes the moving
            statistics lag far behind the weights in a short training run;
            None keeps it.
        name: model name (default: ``arch``).

    Returns:
        A tf_keras functional model.

    Raises:
        ValueError: unknown architecture, or ImageNet weights that cannot be
            loaded (no internet, or a width Keras has no weights for).
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"Unknown model {arch!r}; use one of {', '.join(ARCHITECTURES)}.")
    inputs = keras.Input((input_size, input_size, 3), name="image")
    if arch == "digits_cnn":
        if weights:
            raise ValueError("--weights imagenet is for the MobileNets; digits_cnn trains "
                             "from random initialization.")
        features = _small_cnn(inputs, alpha)
    else:
        # ImageNet weights expect [-1, 1]. From random initialization the first conv and
        # its batch norm absorb the [0, 1] range, and leaving the Rescaling out keeps
        # tfmot's prune-preserving QAT working (it has no config for Rescaling).
        scaled = (keras.layers.Rescaling(2.0, offset=-1.0, name="to_minus1_1")(inputs)
                  if weights else inputs)
        kwargs = dict(input_tensor=scaled, alpha=alpha, include_top=False, weights=weights,
                      pooling="avg")
        try:
            if arch == "mobilenet_v2":
                base = keras.applications.MobileNetV2(**kwargs)
            else:
                base = keras.applications.MobileNetV3Small(include_preprocessing=False,
                                                           **kwargs)
        except Exception as err:  # get_file raises bare Exceptions on network failures
            raise ValueError(
                f"Could not load the ImageNet weights of {arch} (alpha {alpha}): {err}. "
                "They are downloaded by Keras on first use: run once on a machine with "
                "internet (they are cached in ~/.keras/models), or use --weights none.") \
                from err
        features = base.output
    if dropout:
        features = keras.layers.Dropout(dropout, name="dropout")(features)
    logits = keras.layers.Dense(num_classes, name="logits")(features)
    model = keras.Model(inputs, logits, name=name or arch)
    if bn_momentum is not None:
        for layer in model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = bn_momentum
    return model


def _small_cnn(inputs: Any, alpha: float) -> Any:
    """A small int8-friendly CNN (conv + BN + ReLU6, stride-2 downsampling)."""
    h = inputs
    for i, filters in enumerate((16, 32, 64)):
        width = max(8, int(round(filters * alpha / 0.35 / 8)) * 8) if alpha else filters
        h = keras.layers.Conv2D(width, 3, strides=1 if i == 0 else 2, padding="same",
                                use_bias=False, name=f"conv{i}")(h)
        h = keras.layers.BatchNormalization(name=f"conv{i}/bn")(h)
        h = keras.layers.ReLU(6.0, name=f"conv{i}/relu6")(h)
    return keras.layers.GlobalAveragePooling2D(name="pool")(h)


def _hard_sigmoid_input(tensor: Any) -> Any:
    """If ``tensor`` is keras.applications' ``ReLU6(x + 3) / 6``, returns x, else None."""
    def producer(t):
        layer, node_index, _ = t._keras_history
        return layer, layer._inbound_nodes[node_index]

    mul, node = producer(tensor)
    if not (isinstance(mul, keras.layers.Layer) and type(mul).__name__ == "TFOpLambda"
            and mul.get_config().get("function") == "math.multiply"):
        return None
    relu, node = producer(node.call_args[0])
    if not (isinstance(relu, keras.layers.ReLU) and relu.max_value == 6.0):
        return None
    add, node = producer(node.call_args[0])
    if not (type(add).__name__ == "TFOpLambda"
            and add.get_config().get("function") == "__operators__.add"):
        return None
    return node.call_args[0]


def int8_friendly_mobilenet_v3(model: Any) -> Any:
    """Rebuilds a keras.applications MobileNetV3 with layers int8 QAT can handle.

    keras.applications builds hard-sigmoid as ``TFOpLambda`` ops
    (``ReLU6(x + 3) * (1/6)``) and uses ``Multiply`` layers for hard-swish
    (``x * hard_sigmoid(x)``) and for the squeeze-excite gate. tfmot's QAT
    fails on those ``TFOpLambda`` ops (model-optimization issue 980) and has
    no quantize config for ``Multiply``. This follows what EfficientNet-Lite
    did for the same reason:

    * every hard-swish becomes ``ReLU6``;
    * every squeeze-excite block is removed (the block's input passes
      through unchanged).

    The result has only Conv2D, DepthwiseConv2D, BatchNormalization, ReLU,
    Add, ZeroPadding2D, pooling and Dense layers. Every kept layer keeps its
    weights, but the activations change, so the rebuilt model must be trained
    (or fine-tuned from ImageNet weights) before use. Layers of any other
    kind pass through unchanged, so other models come back as plain copies.

    Args:
        model: a tf_keras functional model containing a MobileNetV3 body
            (built flat, e.g. by :func:`build_classifier`).

    Returns:
        The rebuilt functional model (the input model is not changed).

    Example:

    >>> v3 = build_classifier("mobilenet_v3_small", 10, alpha=0.75)  # doctest: +SKIP
    >>> lite = int8_friendly_mobilenet_v3(v3)  # doctest: +SKIP
    """
    built: dict[int, Any] = {}
    copies: dict[int, Any] = {}

    def rebuild(tensor):
        key = id(tensor)
        if key in built:
            return built[key]
        layer, node_index, tensor_index = tensor._keras_history
        node = layer._inbound_nodes[node_index]
        if isinstance(layer, keras.layers.InputLayer):
            out = keras.Input(shape=tensor.shape[1:], dtype=tensor.dtype, name=layer.name)
        elif isinstance(layer, keras.layers.Multiply) and len(node.call_args[0]) == 2:
            a, b = node.call_args[0]
            gate_input = _hard_sigmoid_input(b)
            if gate_input is None:
                out = _copy_call(layer, node, rebuild, copies)
            elif gate_input is a:  # hard-swish: x * hard_sigmoid(x) -> ReLU6(x)
                out = keras.layers.ReLU(6.0, name=layer.name + "/relu6")(rebuild(a))
            else:  # squeeze-excite gate: drop the block
                out = rebuild(a)
        else:
            out = _copy_call(layer, node, rebuild, copies)
        if isinstance(out, (list, tuple)):
            out = out[tensor_index]
        built[key] = out
        return out

    outputs = [rebuild(t) for t in model.outputs]
    inputs = [rebuild(t) for t in model.inputs]
    # a single input and output stay single tensors, as in the source model
    return keras.Model(inputs[0] if len(inputs) == 1 else inputs,
                       outputs[0] if len(outputs) == 1 else outputs,
                       name=model.name + "_int8_friendly")


def _copy_call(layer: Any, node: Any, rebuild: Any, copies: dict[int, Any]) -> Any:
    """Calls a copy of ``layer`` (same config, same weights) on rebuilt inputs.

    ``copies`` maps source layers to their copies, so a layer called twice
    in the source is shared in the copy too.
    """
    import tensorflow as tf

    def map_arg(value):
        return rebuild(value) if keras.backend.is_keras_tensor(value) else value

    args = tf.nest.map_structure(map_arg, node.call_args)
    kwargs = tf.nest.map_structure(map_arg, node.call_kwargs)
    fresh = id(layer) not in copies
    if fresh:
        copies[id(layer)] = layer.__class__.from_config(layer.get_config())
    copy = copies[id(layer)]
    out = copy(*args, **kwargs)
    if fresh and layer.weights:
        copy.set_weights(layer.get_weights())
    return out


# ----------------------------------------------------------------------------
# The recipe
# ----------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m recipes.classifier",
        description="Train an image classifier (MobileNetV2, MobileNetV3-Small or a small "
                    "CNN), optionally prune / quantization-aware train / distill it, convert "
                    "it to a full-int8 TFLite model, validate it in LiteRT, and write "
                    "tflite_models/<name>/ (model.tflite, model_card.json, labels.txt, "
                    "README.md). The defaults are the offline main job: MobileNetV3-Small "
                    "0.75 on handwritten digits.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--dataset", default="digits", choices=data_lib.CLASSIFICATION_DATASETS,
                        help="digits: scikit-learn's handwritten digits (offline, upsampled "
                             "and tiled to RGB). tf_flowers / cifar10 / imagenette: loaded "
                             "with tensorflow_datasets (downloaded by tfds on first use).")
    parser.add_argument("--model", default="mobilenet_v3_small", choices=ARCHITECTURES,
                        help="Architecture: keras.applications MobileNetV3-Small or "
                             "MobileNetV2, or digits_cnn, a 3-layer CNN. (From random "
                             "initialization MobileNetV2 trains poorly on 32x32 inputs: give "
                             "it --input_size 96 or more, or --weights imagenet.)")
    parser.add_argument("--alpha", type=float, default=0.75,
                        help="Width multiplier (model size): MobileNets' alpha (ImageNet "
                             "weights exist for 0.35-1.4 on V2, 0.75 and 1.0 on V3); scales "
                             "digits_cnn's channels too.")
    parser.add_argument("--input_size", type=int, default=32,
                        help="Square input size in pixels (MobileNets: at least 32; ImageNet "
                             "weights are for 96, 128, 160, 192 or 224).")
    parser.add_argument("--weights", default="none", choices=("none", "imagenet"),
                        help="none: random initialization. imagenet: start from Keras' "
                             "ImageNet weights (downloaded on first use: needs internet).")
    parser.add_argument("--learning_rate", type=float, default=None,
                        help="Peak learning rate of Adam with cosine decay (default 3e-3 from "
                             "random init, 5e-4 from ImageNet weights).")
    parser.add_argument("--max_test", type=int, default=2000,
                        help="Held-out images used for validation and the report (they are "
                             "held in memory).")
    parser.add_argument("--int8_friendly", action="store_true",
                        help="For mobilenet_v3_small: rebuild it without hard-swish and "
                             "squeeze-excite (int8_friendly_mobilenet_v3), for runtimes without "
                             "HARD_SWISH. Off by default: wrap prepares the unmodified model.")
    parser.add_argument("--html_report", action=argparse.BooleanOptionalAction, default=True,
                        help="Write <name>/report.html (figures and tables, self-contained; "
                             "runs tfedge.debug_quantization for the per-layer int8 error).")
    # The main job shows the whole product: prune, then sparsity-preserving QAT, with
    # distillation from the float model, and emulated ARM runs.
    # Epochs after the first of each phase cost 2-3 s here (the first one traces the
    # graph: 15-35 s), so the fine-tune is long enough for PQAT to recover the pruning loss.
    common.add_common_flags(parser, epochs=15, batch_size=32, name="<dataset>_<model>",
                            prune=0.5, qat=True, distill_from=common.FLOAT_TEACHER,
                            emulate=True, bench_targets="rpi4,rpi5,cortex-m7",
                            finetune_epochs=10)
    return parser


def _describe(args: argparse.Namespace, rebuilt: bool) -> str:
    arch = {"mobilenet_v2": "MobileNetV2", "mobilenet_v3_small": "MobileNetV3-Small",
            "digits_cnn": "a 3-layer CNN"}[args.model]
    text = (f"{arch} (width {args.alpha}, {args.input_size}x{args.input_size} RGB input) "
            f"classifying {args.dataset}")
    if rebuilt:
        text += ", rebuilt int8-friendly (hard-swish -> ReLU6, no squeeze-excite)"
    return text + "; full-int8 TFLite."


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Runs the recipe for parsed flags; returns the measured results."""
    if args.quick:
        args.epochs = min(args.epochs, 1)
        args.finetune_epochs = 2 if args.prune and args.qat else 1
    keras.utils.set_random_seed(args.seed)
    weights = None if args.weights == "none" else args.weights
    name = args.name or f"{args.dataset}_{args.model}"
    out_dir = os.path.join(args.output_dir, name)
    timings: dict[str, float] = {}
    cpu: dict[str, float] = {}
    verbose = common.fit_verbosity(args)

    with common.stage(f"data: {args.dataset}", timings, cpu):
        data = data_lib.load_classification(
            args.dataset, input_size=args.input_size, batch_size=args.batch_size,
            max_train=256 if args.quick else None, max_test=128 if args.quick else args.max_test,
            seed=args.seed, data_dir=args.data_dir)
        print(f"   {data.steps_per_epoch * args.batch_size} training / {len(data.x_test)} test "
              f"images, {data.num_classes} classes, {args.input_size}x{args.input_size} RGB")

    with common.stage(f"model: {args.model}", timings, cpu):
        model = build_classifier(args.model, data.num_classes, input_size=args.input_size,
                                 alpha=args.alpha, weights=weights, name=name)
        rebuilt = args.model == "mobilenet_v3_small" and args.int8_friendly
        if rebuilt:
            model = int8_friendly_mobilenet_v3(model)
            model._name = name
            print("   rebuilt with int8_friendly_mobilenet_v3: hard-swish -> ReLU6, "
                  "squeeze-excite removed (--int8_friendly)")
        print(f"   {model.count_params():,} parameters")

    lr = args.learning_rate or (5e-4 if weights else 3e-3)
    with common.stage(f"float training: {args.epochs} epochs", timings, cpu):
        _compile(model, lr, args.epochs * data.steps_per_epoch)
        validation = (data.x_test, data.y_test) if len(data.x_test) <= 5000 else None
        model.fit(data.train, epochs=args.epochs, validation_data=validation, verbose=verbose)
        float_acc = _accuracy(model, data.x_test, data.y_test)
        print(f"   float test accuracy {100 * float_acc:.2f}%")
    if args.save_keras:
        os.makedirs(out_dir, exist_ok=True)
        model.save(os.path.join(out_dir, "keras_model.keras"))

    stages = [_stage_row("float", float_acc, model)]
    final, debug_source, edge = model, model, None
    optimizations, losses = [], {}
    if common.wants_optimization(args):
        epochs = common.finetune_epochs(args)
        optimizations = [f for f, on in (("prune", args.prune), ("qat", args.qat),
                                         ("distill", common.distills(args))) if on]
        edge = common.wrap_for_flags(model, args, epochs)
        _compile(edge, lr / 10, epochs * data.steps_per_epoch)
        prune_end = common.prune_end_epoch(args, epochs)
        parts = ([("prune", prune_end), ("qat", epochs - prune_end)] if prune_end
                 else [("prune" if args.prune else "qat" if args.qat else "distill", epochs)])
        for part, part_epochs in parts:
            title = {"prune": f"pruning (polynomial decay to {args.prune:.0%} zeros)",
                     "qat": "sparsity-preserving QAT" if args.prune else "QAT",
                     "distill": "distillation"}[part]
            if common.distills(args):
                title += f" + distillation from the {_teacher_name(args)}"
            with common.stage(f"{title}: {part_epochs} epochs", timings, cpu):
                history = edge.fit(data.train, epochs=part_epochs, verbose=verbose)
                losses[part] = _print_losses(history)
                if part == "prune" and prune_end:  # measured before QAT starts
                    sparsity = tfedge.sparsity_report(edge.network)
                    accuracy = _accuracy(edge, data.x_test, data.y_test)
                    debug_source = prune_lib.strip_pruning(edge.network)
                    stages.append(_stage_row("pruned", accuracy, debug_source,
                                             sparsity=sparsity.overall))
                    print(f"   pruned: {_pruned_summary(edge.network, sparsity)}; test "
                          f"accuracy {100 * accuracy:.2f}%")
        with common.stage("finish: strip the training wrappers", timings, cpu):
            final = common.plain_model(edge)
            accuracy = _accuracy(final, data.x_test, data.y_test)
            sparsity = tfedge.sparsity_report(final).overall if args.prune else None
            label = "QAT" if args.qat else "pruned" if args.prune else "distilled"
            stages.append(_stage_row(label, accuracy, final, sparsity=sparsity))
            print(f"   {label} model: test accuracy {100 * accuracy:.2f}%"
                  + (f", {100 * sparsity:.1f}% zeros kept" if sparsity is not None else ""))
        if not args.qat:
            debug_source = final

    with common.stage("convert: full int8", timings, cpu):
        artifact = tfedge.convert(final, representative_data=data.x_calib)
        print(f"   {artifact.size_bytes:,} bytes; ops: "
              + ", ".join(f"{k} x{v}" for k, v in artifact.ops.items()))

    with common.stage("validate: LiteRT vs Keras", timings, cpu):
        report = tfedge.validate(artifact, final, data.x_test, data.y_test)
        print(report)
        weights = artifact.flatbuffer.weight_sparsity()
        stages.append({"stage": "int8", "accuracy": report.tflite_accuracy,
                       "size_bytes": artifact.size_bytes,
                       "kernel_sparsity": (sum(w["sparsity"] * w["size"] for w in weights)
                                           / max(1, sum(w["size"] for w in weights))),
                       "compressed_bytes": len(zlib.compress(artifact.content, 9)),
                       "size_note": "the .tflite file (int8 weights)"})
        drop = float_acc - report.tflite_accuracy
        print(f"   int8 accuracy {100 * report.tflite_accuracy:.2f}% vs float "
              f"{100 * float_acc:.2f}%: {100 * drop:+.2f} pp drop "
              f"({'within' if drop <= 0.01 else 'MORE than'} 1 pp)")

    with common.stage("benchmark: tfedge.bench", timings, cpu):
        bench_report = common.benchmark(artifact, args, name)

    quant_errors = None
    if args.html_report:
        with common.stage("quantization error per layer: tfedge.debug_quantization", timings,
                          cpu):
            quant_errors = _debug_quantization(debug_source, data)

    results = {
        "name": name, "dataset": args.dataset, "model": args.model, "alpha": args.alpha,
        "input_size": args.input_size, "weights": args.weights,
        "int8_friendly_rebuild": rebuilt, "optimizations": optimizations,
        "epochs": args.epochs, "test_samples": len(data.x_test),
        "float_accuracy": float_acc, "keras_accuracy": report.keras_accuracy,
        "int8_accuracy": report.tflite_accuracy, "agreement": report.agreement,
        "near_ties": report.near_ties,
        "size_bytes": artifact.size_bytes, "parameters": int(final.count_params()),
        "stages": stages, "seconds": timings, "cpu_seconds": cpu,
    }
    with common.stage("export: Android and micro bundles", timings, cpu):
        results["bundles"] = common.export_bundles(
            artifact, out_dir, which=args.bundles, name=name,
            description=_describe(args, rebuilt), labels=data.labels,
            sample_inputs=data.x_test[:16], validation=report, benchmark=bench_report)
    with common.stage("write: model, card, labels, README", timings, cpu):
        pipeline = _pipeline_facts(args, edge, stages, losses, bench_report,
                                   results["bundles"])
        readme = (_report(results, artifact, args) + common.bench_section(bench_report) + "\n"
                  + "\n".join(common.bundles_section(results["bundles"])))
        paths = common.write_outputs(
            out_dir, artifact, name=name, description=_describe(args, rebuilt),
            labels=data.labels, validation=report, benchmark=bench_report, report=readme,
            extra={"recipe": "recipes.classifier", "command": common.command_line(),
                   "input": "RGB float32 in [0, 1] (pixel / 255); the int8 input tensor's "
                            "scale and zero point map uint8 pixels directly",
                   "output": "logits (apply softmax for probabilities)",
                   "training": {k: results[k] for k in (
                       "dataset", "model", "alpha", "input_size", "weights", "epochs",
                       "optimizations", "int8_friendly_rebuild")},
                   "pipeline": pipeline})
    if args.html_report:
        with common.stage("report.html", timings, cpu):
            paths["html"] = common.write_html_report(
                out_dir, name=name, summary=_describe(args, rebuilt), stages=stages,
                benchmark=bench_report, sparsity=tfedge.sparsity_report(final).rows,
                quantization_errors=quant_errors, readme=readme, bundles=results["bundles"])
            print(f"   {paths['html']}")
    results["files"] = paths
    _print_summary(results)
    return results


def _pruned_summary(network: Any, report: Any) -> str:
    """``"50.0% zeros in the 24 pruned kernels, 41.9% of all kernel weights"``."""
    pruned = {layer.layer.name for layer in network.layers
              if isinstance(layer, prune_lib.PruneLowMagnitude)}
    rows = [r for r in report.rows if r["layer"] in pruned]
    size = sum(r["size"] for r in rows)
    share = sum(r["zeros"] for r in rows) / size if size else 0.0
    return (f"{100 * share:.1f}% zeros in the {len(rows)} pruned kernels, "
            f"{100 * report.overall:.1f}% of all kernel weights (tfmot leaves depthwise "
            "kernels unpruned)")


def _teacher_name(args: argparse.Namespace) -> str:
    if args.distill_from.lower() == common.FLOAT_TEACHER:
        return "float model"
    return f"teacher {os.path.basename(args.distill_from)}"


def _weights_bytes(model: Any) -> tuple[int, int]:
    """(bytes, zlib-compressed bytes) of a Keras model's weights as float32."""
    flat = np.concatenate([np.asarray(w, np.float32).ravel() for w in model.get_weights()])
    raw = flat.tobytes()
    return len(raw), len(zlib.compress(raw, 9))


def _stage_row(stage: str, accuracy: float, model: Any,
               sparsity: float | None = None) -> dict[str, Any]:
    size, compressed = _weights_bytes(model)
    return {"stage": stage, "accuracy": accuracy, "size_bytes": size,
            "compressed_bytes": compressed, "kernel_sparsity": sparsity,
            "size_note": "Keras weights as float32 (4 bytes each)"}


def _print_losses(history: Any) -> dict[str, float]:
    """Prints and returns the last epoch's losses (distillation terms included)."""
    last = {k: float(v[-1]) for k, v in history.history.items() if v}
    if "soft_loss" in last:
        first = float(history.history["soft_loss"][0])
        print(f"   distillation: soft-target loss {first:.4f} -> {last['soft_loss']:.4f}, "
              f"hard-label loss {last['hard_loss']:.4f}, total {last['loss']:.4f}")
    return last


def _debug_quantization(model: Any, data: Any) -> list[dict[str, Any]] | None:
    """Per-layer int8 error of the float network QAT started from (or the final float one)."""
    try:
        debug = tfedge.debug_quantization(model, data.x_calib, (data.x_test, data.y_test),
                                          num_samples=100, num_debug_samples=32,
                                          output_effects=False)
    except (tfedge.TFEdgeError, ValueError) as err:
        print(f"   quantization debug not run: {str(err).splitlines()[0][:300]}")
        return None
    worst = sorted(debug.layers, key=lambda r: -(r.rmse_over_scale or 0))[:3]
    print(f"   {len(debug.layers)} layers ({debug.seconds:.0f} s); largest RMSE / scale: "
          + ", ".join(f"{r.layer} {r.rmse_over_scale:.3f}" for r in worst
                      if r.rmse_over_scale is not None))
    return [layer.to_dict() for layer in debug.layers]


def _pipeline_facts(args: argparse.Namespace, edge: Any, stages: list[dict[str, Any]],
                    losses: dict[str, dict[str, float]], bench: Any,
                    bundles: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """What each stage did, for the model card."""
    facts: dict[str, Any] = {"stages": stages}
    if edge is not None:
        config = edge.get_config()
        facts["phases"] = config["phases"]
        if config["prune"]:
            facts["pruning"] = {**config["prune"], "kernel_sparsity_after_pruning":
                                next((s["kernel_sparsity"] for s in stages
                                      if s["stage"] == "pruned"), None),
                                "kernel_sparsity_final": next(
                                    (s["kernel_sparsity"] for s in stages
                                     if s["stage"] == "int8"), None),
                                "losses": losses.get("prune")}
        if config["quantize"]:
            facts["qat"] = {**config["quantize"], "sparsity_preserving": bool(config["prune"]),
                            "losses": losses.get("qat")}
        if config["distill"]:
            facts["distillation"] = {**config["distill"], "teacher": (
                "the float model trained in this run" if
                args.distill_from.lower() == common.FLOAT_TEACHER else args.distill_from),
                "losses": losses}
    if bench is not None:
        facts["emulated_instructions"] = {
            t.target: {"qemu_cpu": t.qemu_cpu, "instructions": t.instructions,
                       "repeatable": t.deterministic, "outputs_equal_host": t.outputs_match,
                       "note": t.note or None} for t in bench.targets if t.qemu_cpu}
    facts["bundles"] = bundles
    return facts


def _compile(model: Any, lr: float, steps: int) -> None:
    model.compile(optimizer=keras.optimizers.Adam(common.cosine_schedule(lr, steps)),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])


def _accuracy(model: Any, x: np.ndarray, y: np.ndarray) -> float:
    logits = model.predict(x, batch_size=128, verbose=0)
    return float(np.mean(np.argmax(logits, -1) == y))


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def _report(r: dict[str, Any], artifact: Any, args: argparse.Namespace) -> str:
    acc = format_table(
        ["model", "test accuracy"],
        [["float Keras (after float training)", _pct(r["float_accuracy"])],
         ["final Keras (converted from)", _pct(r["keras_accuracy"])],
         ["int8 TFLite (LiteRT)", _pct(r["int8_accuracy"])],
         ["int8 vs Keras top-1 agreement", _pct(r["agreement"])]])
    lines = [
        f"# {r['name']}", "",
        _describe(args, r["int8_friendly_rebuild"]), "",
        f"Made by `{common.command_line()}` (tfedge {tfedge.__version__}).", "",
        "## Files", "",
        "- `model.tflite`: full-int8 model (int8 input and output).",
        "- `model_card.json`: tool versions, quantization, ops, sparsity, validation.",
        "- `labels.txt`: class names, one per line, in output order.", "",
        "## Input and output", "", "```", common.io_table(artifact), "```", "",
        "Input: RGB image resized to the input size, as float pixel / 255 quantized with the "
        "input tensor's scale and zero point (with scale 1/255 and zero point -128 that is "
        "`int8 = uint8_pixel - 128`). Output: logits; dequantize, then softmax.", "",
        f"## Accuracy ({r['test_samples']} held-out images)", "", "```", acc, "```", "",
        "## After each stage", "",
        "Sizes of the Keras stages count their weights as float32; zlib shows what the "
        "zeros of pruning save once compressed.", "",
        "```", _stages_table(r["stages"]), "```", "",
        "## Model", "",
        f"- {r['parameters']:,} parameters, {r['size_bytes']:,} bytes as int8 TFLite.",
        "- ops: " + ", ".join(f"{k} x{v}" for k, v in artifact.ops.items()),
        f"- training: {r['epochs']} float epochs"
        + (f", then {', '.join(r['optimizations'])}" if r["optimizations"] else ""), "",
    ]
    if r["model"] == "mobilenet_v3_small":
        lines += ["## MobileNetV3 and int8", ""]
        if r["int8_friendly_rebuild"]:
            lines.append(
                "This model was rebuilt with `recipes.classifier.int8_friendly_mobilenet_v3` "
                "(--int8_friendly): every hard-swish is ReLU6 and the squeeze-excite blocks "
                "are removed (as in EfficientNet-Lite), for runtimes without HARD_SWISH.")
        else:
            lines.append(
                "keras.applications' hard-swish and squeeze-excite are kept. `tfedge.wrap` "
                "rewrote them on its private copy into layers tfmot can quantize (each rewrite "
                "checked numerically against the original), so pruning and QAT train the "
                "unmodified architecture, and the int8 file runs them on int8 HARD_SWISH, "
                "ADD and MUL kernels.")
        lines.append("")
    return "\n".join(lines)


def _stages_table(stages: list[dict[str, Any]]) -> str:
    return format_table(
        ["stage", "test accuracy", "zero kernels", "size (bytes)", "zlib (bytes)"],
        [[s["stage"], _pct(s["accuracy"]),
          "-" if s.get("kernel_sparsity") is None else f"{100 * s['kernel_sparsity']:.1f}%",
          f"{s['size_bytes']:,}", f"{s['compressed_bytes']:,}"] for s in stages])


def _print_summary(r: dict[str, Any]) -> None:
    print("\n" + _stages_table(r["stages"]))
    rows = [["float Keras accuracy", _pct(r["float_accuracy"])],
            ["final Keras accuracy", _pct(r["keras_accuracy"])],
            ["int8 TFLite accuracy", _pct(r["int8_accuracy"])],
            ["int8 size", f"{r['size_bytes']:,} bytes"]]
    for kind, facts in r["bundles"].items():
        rows.append([f"{kind} bundle", "written and verified" if "error" not in facts
                     else "NOT written (see above)"])
    rows += [["total time", f"{sum(r['seconds'].values()):.0f} s"],
             ["output", os.path.dirname(r["files"]["tflite"])]]
    print("\n" + format_table(["result", "value"], rows, title=f"== {r['name']} =="))
    print("\n" + format_table(["stage", "seconds"], [[k, v] for k, v in r["seconds"].items()],
                              title="stage times"))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except (tfedge.TFEdgeError, ValueError, FileNotFoundError) as err:
        print(f"recipes.classifier: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
