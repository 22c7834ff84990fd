"""The ``tfedge`` command line: one subcommand per pipeline stage.

Each subcommand has an ``_add_<name>`` function that declares its flags (with
help for every flag) and a ``_run_<name>`` function that does the work through
the public Python API. Library code logs; only this module prints results.

``--help``, ``inspect``, ``check``, ``export`` and ``bench`` import no
TensorFlow (the modules they use do not need it); ``convert`` and ``tune``
import their stages, and TensorFlow with them, when they run.

Array files (one convention for every subcommand): a ``.npy`` array of
inputs, or a ``.npz`` with the inputs as ``x`` and labels as ``y``
(``np.savez(path, x=x, y=y)``); a training file for ``tune`` adds the
validation split as ``x_val`` and ``y_val``. ``x_train`` / ``y_train`` are
still read as ``x`` / ``y``.

The command starts quiet: ``TF_CPP_MIN_LOG_LEVEL=2`` is set (unless ``--verbose``)
before TensorFlow loads, and ``tfedge._quiet`` holds TensorFlow's C++
start-up lines to it whenever a subcommand first imports TensorFlow.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from tfedge import _quiet
from tfedge.artifact import IO_TYPES, LOWBIT_MODES, MODES, load
from tfedge.card import card_path
from tfedge.cli_inputs import (input_file, load_arrays, load_builder, load_training_data,
                               non_negative_int, output_file, positive_int, read_keras_model,
                               read_samples)
from tfedge.errors import TFEdgeError
from tfedge.bundle_folder import check_out_dir
from tfedge.export import check_bundle, export_android, export_micro
from tfedge.report import to_json
from tfedge._bench import bench

_NPZ_HELP = ("a .npz with inputs 'x' and labels 'y' (np.savez(path, x=x, y=y); the older "
             "names x_train / y_train are read too)")


def _add_inspect(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="Show a .tflite file's tensors, quantization and ops.",
                       description="Read a .tflite flatbuffer and print its inputs and "
                                   "outputs (shape, dtype, scale, zero point), op counts, "
                                   "per-layer weight sparsity and, for int4 / int2 models, "
                                   "each layer's bit widths.")
    p.add_argument("model", help="Path to a .tflite file.")
    p.add_argument("--json", action="store_true", help="Print JSON instead of tables.")
    p.set_defaults(func=_run_inspect)


def _run_inspect(args: argparse.Namespace) -> int:
    artifact = load(args.model)
    if args.json:
        print(json.dumps({**artifact.to_dict(),
                          "weight_sparsity": artifact.flatbuffer.weight_sparsity(),
                          "layer_bits": artifact.flatbuffer.layer_bits()}, indent=2))
    else:
        print(artifact)
    return 0


def _add_tune(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tune", help="Search compression settings under a device budget (keras-tuner).",
        description="Train, convert to full int8 and validate one candidate per trial "
                    "(sparsity, pruning length, QAT, width, resolution, distillation), check "
                    "each int8 model against the budget, and write the Pareto front (table, "
                    "JSON, PNG) and the best feasible model with its card. Resumes from "
                    "--directory; runs distributed under keras-tuner's KERASTUNER_TUNER_ID / "
                    "KERASTUNER_ORACLE_IP / KERASTUNER_ORACLE_PORT variables.")
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument("--builder", metavar="FILE.py:FUNCTION",
                       help="Function build(width, input_shape) -> tf_keras model, as "
                            "FILE.py:FUNCTION or MODULE:FUNCTION.")
    model.add_argument("--model", metavar="PATH",
                       help="A saved tf_keras model (.keras or .h5) whose architecture is "
                            "rebuilt at each width and resolution and trained from scratch.")
    p.add_argument("--data", default="digits",
                   help="'digits' (scikit-learn's, built in) or " + _NPZ_HELP + ", and "
                        "optionally the validation split as 'x_val', 'y_val' (default: "
                        "digits).")
    p.add_argument("--outputs", choices=("logits", "probabilities"), default="logits",
                   help="What the model outputs, for the sparse cross-entropy loss "
                        "(default: logits).")
    budget = p.add_argument_group("budget (every limit optional)")
    budget.add_argument("--max-size-bytes", type=int,
                        help="Largest allowed .tflite file, in bytes.")
    budget.add_argument("--max-latency-ms", type=float,
                        help="Largest allowed estimated latency on --target, in ms.")
    budget.add_argument("--target",
                        help="Device profile the latency is estimated for by the benchmark "
                             "harness: rpi3, rpi4, rpi5, phone or cortex-m7.")
    budget.add_argument("--max-arena-bytes", type=int,
                        help="Largest allowed TFLite-Micro tensor arena, in bytes.")
    budget.add_argument("--min-accuracy", type=float,
                        help="Smallest allowed int8 top-1 accuracy on the validation data, "
                             "in [0, 1].")
    space = p.add_argument_group("search space (one value fixes a setting)")
    space.add_argument("--sparsity", type=float, nargs="+", default=[0.0, 0.5, 0.75, 0.9],
                       help="Final sparsities to try; 0 = no pruning (default: 0 0.5 0.75 0.9).")
    space.add_argument("--prune-end", type=float, nargs="+", default=[0.5, 1.0],
                       help="End of the pruning schedule as a fraction of the epochs "
                            "(default: 0.5 1.0).")
    space.add_argument("--qat", choices=("off", "on", "both"), default="off",
                       help="Quantization-aware training: off, on, or search both "
                            "(default: off).")
    space.add_argument("--width", type=float, nargs="+", default=[0.5, 1.0],
                       help="Width multipliers to try (default: 0.5 1.0).")
    space.add_argument("--resolution", type=int, nargs="+", default=[0],
                       help="Square input sides to try, in pixels; 0 = the data's own "
                            "(default: 0).")
    space.add_argument("--distill", choices=("off", "on", "both"), default="off",
                       help="Distillation from --teacher: off, on, or search both "
                            "(default: off).")
    space.add_argument("--distill-alpha", type=float, nargs="+", default=[0.1],
                       help="Weights of the hard-label loss when distilling; the teacher's "
                            "soft targets get 1 - alpha (default: 0.1).")
    space.add_argument("--temperature", type=float, nargs="+", default=[4.0],
                       help="Distillation temperatures to try (default: 4).")
    space.add_argument("--channel-fraction", type=float, nargs="+", default=[0.0],
                       help="Channel-pruning fractions to try (whole filters removed, a "
                            "narrower model; with --sparsity 0 only); 0 = none (default: 0).")
    space.add_argument("--channel-end", type=float, nargs="+", default=[1.0],
                       help="End of the channel-masking schedule as a fraction of the epochs "
                            "(default: 1.0).")
    space.add_argument("--rank-energy", type=float, nargs="+", default=[0.0],
                       help="Low-rank factorization: shares of each layer's squared singular "
                            "values kept; 0 = no factorization (default: 0).")
    space.add_argument("--rank-macs", type=float, nargs="+", default=[0.0],
                       help="Low-rank factorization to this share of the MACs (with "
                            "--rank-energy 0 only); 0 = none (default: 0).")
    space.add_argument("--teacher", metavar="PATH",
                       help="A saved, trained tf_keras teacher model for distillation.")
    run = p.add_argument_group("search")
    run.add_argument("--oracle", choices=("bayesian", "random", "grid", "hyperband"),
                     default="bayesian", help="keras-tuner oracle (default: bayesian).")
    run.add_argument("--max-trials", type=positive_int, default=10,
                     help="Trials in total, counting finished ones in --directory (default: 10).")
    run.add_argument("--epochs", type=positive_int, default=3,
                     help="Training epochs per trial; Hyperband's maximum (default: 3).")
    run.add_argument("--batch-size", type=positive_int, default=32, help="Training batch size "
                                                                 "(default: 32).")
    run.add_argument("--learning-rate", type=float, default=1e-3,
                     help="Adam learning rate (default: 0.001).")
    run.add_argument("--directory", default="tfedge_tune",
                     help="keras-tuner directory; a rerun resumes from it (default: "
                          "tfedge_tune).")
    run.add_argument("--project-name", default="search",
                     help="keras-tuner project name inside --directory (default: search).")
    run.add_argument("--overwrite", action="store_true",
                     help="Start over instead of resuming.")
    run.add_argument("--output-dir",
                     help="Where pareto.txt/.json/.png and best/ go (default: the project "
                          "directory).")
    run.add_argument("--no-plot", action="store_true", help="Do not write pareto.png.")
    run.add_argument("--seed", type=int, default=0, help="Seed of the oracle and trials.")
    run.add_argument("--verbose", action="store_true", help="Show keras-tuner's progress.")
    p.add_argument("--json", action="store_true", help="Print JSON instead of the table.")
    p.set_defaults(func=_run_tune)


def _run_tune(args: argparse.Namespace) -> int:
    from tfedge import _tune  # (imports TensorFlow: only when tuning)
    from tfedge._keras import keras

    output_file(os.path.join(args.output_dir, "pareto.json") if args.output_dir else None,
                "--output-dir")
    build = load_builder(args.builder) if args.builder else read_keras_model(args.model, "--model")
    teacher = read_keras_model(args.teacher, "--teacher")
    data, validation = load_training_data(args.data)
    qat = {"off": [False], "on": [True], "both": [False, True]}[args.qat]
    result = _tune.tune(
        build, data, validation_data=validation,
        budget=_tune.Budget(max_size_bytes=args.max_size_bytes,
                             max_latency_ms=args.max_latency_ms, target=args.target,
                             max_arena_bytes=args.max_arena_bytes,
                             min_accuracy=args.min_accuracy),
        space=_tune.SearchSpace(final_sparsity=args.sparsity, prune_end=args.prune_end,
                                 quantize=qat, width=args.width,
                                 resolution=[r or None for r in args.resolution],
                                 distill={"off": [False], "on": [True],
                                          "both": [False, True]}[args.distill],
                                 distill_alpha=args.distill_alpha,
                                 temperature=args.temperature,
                                 channel_fraction=args.channel_fraction,
                                 channel_end=args.channel_end, rank_energy=args.rank_energy,
                                 rank_macs=args.rank_macs),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=args.outputs == "logits"),
        learning_rate=args.learning_rate, epochs=args.epochs, batch_size=args.batch_size,
        max_trials=args.max_trials, oracle=args.oracle, teacher=teacher,
        directory=args.directory, project_name=args.project_name, overwrite=args.overwrite,
        output_dir=args.output_dir, plot=not args.no_plot, seed=args.seed,
        verbose=int(args.verbose))
    if args.json:
        print(to_json(result.to_dict()))
    elif result.role == "worker":
        print(f"worker ran trials {', '.join(result.ran) or 'none'}; the chief writes the report.")
    else:
        print(result)
    return 0


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help="Write verified handoff bundles for Android and microcontroller teams.",
        description="Write an Android bundle (model.tflite with its metadata embedded, "
                    "metadata.json, labels.txt, samples, model card) and/or a "
                    "microcontroller bundle (model_data.cc/.h C array, op_resolver.h, the "
                    "tensor arena measured in TensorFlow Lite for Microcontrollers, samples, "
                    "model card). Each bundle is verified before it is written: LiteRT "
                    "reproduces the model, and TFLM's outputs equal LiteRT's.")
    p.add_argument("model", help="Path to a converted .tflite file.")
    p.add_argument("--android", metavar="OUT_DIR", help="Write the Android bundle here.")
    p.add_argument("--micro", metavar="OUT_DIR",
                   help="Write the microcontroller (TFLM) bundle here.")
    p.add_argument("--name", help="Model name; also names the C symbols "
                                  "(default: the model file's name).")
    p.add_argument("--version", default="1", help="Model version string (default: 1).")
    p.add_argument("--description", default="", help="What the model does, for the app team.")
    p.add_argument("--labels", metavar="FILE",
                   help="Text file with one class label per line, in output order.")
    p.add_argument("--norm-mean", type=float, nargs="+", metavar="MEAN",
                   help="Input normalization mean, one value or one per channel: the app "
                        "feeds (x - mean) / std (Android bundle).")
    p.add_argument("--norm-std", type=float, nargs="+", metavar="STD",
                   help="Input normalization std, as --norm-mean.")
    p.add_argument("--io-type", choices=IO_TYPES,
                   help="Input/output type the Android app expects; must be the model's "
                        "(convert with input_type/output_type to change it). Default: the "
                        "model's.")
    p.add_argument("--samples", metavar="FILE.npy",
                   help="Sample inputs (samples first), preprocessed as for training or "
                        "already quantized; default: 32 random inputs.")
    p.add_argument("--num-samples", type=positive_int, default=32,
                   help="Use the first N samples of --samples (default: 32).")
    p.add_argument("--max-diff", type=non_negative_int, default=0,
                   help="Largest difference allowed between TFLM's and LiteRT's integer "
                        "outputs, in quantization steps (default: 0, bit-exact).")
    p.add_argument("--arena-size", type=positive_int, metavar="BYTES",
                   help="Tensor arena to state in the micro bundle (checked in TFLM). "
                        "Default: the smallest arena TFLM allocates and runs the model in, "
                        "found by search, plus 16 bytes of alignment headroom.")
    p.add_argument("--json", action="store_true", help="Print JSON instead of tables.")
    p.set_defaults(func=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    if not args.android and not args.micro:
        raise ValueError("Say which bundle to write: --android OUT_DIR and/or --micro OUT_DIR.")
    if args.android and args.micro and os.path.abspath(args.android) == os.path.abspath(
            args.micro):
        raise ValueError("--android and --micro name the same folder: a bundle folder holds "
                         "one bundle; give each its own.")
    for flag, out_dir in (("--android", args.android), ("--micro", args.micro)):
        if out_dir:
            check_out_dir(out_dir, flag)
    labels = None
    if args.labels:
        with open(input_file(args.labels, "--labels")) as f:
            labels = [line.rstrip("\n") for line in f if line.strip()]
    samples = read_samples(args.samples, "--samples", args.num_samples)
    artifact = load(input_file(args.model, "model"))
    name = args.name or os.path.splitext(os.path.basename(args.model))[0]
    bundles = []
    if args.android:
        bundles.append(export_android(
            artifact, args.android, labels=labels, norm_mean=args.norm_mean,
            norm_std=args.norm_std, name=name, version=args.version,
            description=args.description, io_type=args.io_type, sample_inputs=samples))
    if args.micro:
        bundles.append(export_micro(artifact, args.micro, sample_inputs=samples, name=name,
                                    description=args.description, labels=labels,
                                    max_diff=args.max_diff, arena_size=args.arena_size))
    if args.json:
        print(to_json([b.to_dict() for b in bundles]))
    else:
        print("\n\n".join(str(b) for b in bundles))
    return 0


def _add_check(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "check", help="Re-validate a bundle written by 'tfedge export'.",
        description="Check that every file's sha256 matches the bundle's model card, that "
                    "the model loads in LiteRT (and TFLM for microcontroller bundles) and "
                    "reproduces the saved sample outputs, and that the embedded metadata, "
                    "labels, C array and op resolver match the model. Exit status 1 if any "
                    "check fails.")
    p.add_argument("bundle", metavar="BUNDLE_DIR", help="A bundle folder.")
    p.add_argument("--json", action="store_true", help="Print JSON instead of the table.")
    p.set_defaults(func=_run_check)


def _run_check(args: argparse.Namespace) -> int:
    result = check_bundle(args.bundle)
    print(result.to_json() if args.json else result)
    return 0 if result.ok else 1


def _add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench", help="Benchmark a .tflite on this machine and on emulated ARM cores.",
        description="Time the model in LiteRT on this machine (init, first run, warm-up, "
                    "min/p50/p90/p99/mean/std, XNNPACK delegation, peak memory) and, for "
                    "each --target, run LiteRT's aarch64 build under qemu-aarch64: exact "
                    "instructions per inference, bit-exact output check against this "
                    "machine, and latency estimates for the device (labelled estimates). "
                    "First ARM use prepares a cached sysroot (as root; see "
                    "'python -m tfedge.arm').")
    p.add_argument("model", metavar="MODEL.tflite", help="The .tflite file to benchmark.")
    p.add_argument("--target", nargs="+", action="extend", default=None, metavar="TARGET",
                   help="ARM targets: device profiles (rpi3, rpi4, rpi5, phone, cortex-m7) "
                        "or qemu CPU models (cortex-a53, cortex-a72, cortex-a76, "
                        "neoverse-n1, max, ...). Default: this machine only.")
    p.add_argument("--compare", nargs="+", default=None, metavar="OTHER.tflite",
                   help="Other models to benchmark the same way, shown side by side with "
                        "ratios to MODEL.tflite.")
    p.add_argument("--runs", type=positive_int, default=100, help="Timed runs on this machine "
                                                         "(default 100).")
    p.add_argument("--warmup", type=non_negative_int, default=10,
                   help="Untimed runs after the first, before timing (default 10).")
    p.add_argument("--threads", type=positive_int, default=1,
                   help="Interpreter threads on this machine (default 1; ARM counts always "
                        "use one).")
    p.add_argument("--no-xnnpack", action="store_true",
                   help="Use LiteRT's builtin kernels without the XNNPACK delegate.")
    p.add_argument("--no-emulation", action="store_true",
                   help="Skip qemu: device targets get MAC-based estimates only.")
    p.add_argument("--emulation-runs", type=positive_int, default=2,
                   help="Counted inferences per ARM target (default 2; two or more show "
                        "whether the count repeats).")
    p.add_argument("--seed", type=int, default=0, help="Seed of the random inputs.")
    p.add_argument("--timeout", type=float, default=900.0,
                   help="Seconds allowed per process, host or emulated (default 900).")
    p.add_argument("--output", metavar="FILE.json", help="Also write the report as JSON here.")
    p.add_argument("--json", action="store_true", help="Print JSON instead of tables.")
    p.set_defaults(func=_run_bench)


def _run_bench(args: argparse.Namespace) -> int:
    output_file(args.output, "--output")
    input_file(args.model, "MODEL.tflite")
    for other in args.compare or []:
        input_file(other, "--compare")
    report = bench(args.model, target=["host"] + (args.target or []),
                   compare=args.compare, runs=args.runs, warmup=args.warmup,
                   num_threads=args.threads, xnnpack=not args.no_xnnpack,
                   emulate=not args.no_emulation, emulation_runs=args.emulation_runs,
                   seed=args.seed, timeout=args.timeout)
    if args.output:
        report.save(args.output)
    print(report.to_json() if args.json else report)
    reports = getattr(report, "reports", [report])
    return 1 if any(r.outputs_match is False for r in reports) else 0


def _add_convert(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert", help="Convert a Keras model or SavedModel to a checked .tflite file.",
        description="Convert a .keras / .h5 file or a SavedModel directory to TFLite in one "
                    "of the quantization modes, check it (full-int8 check, runtime settings, "
                    "optional validation and accuracy-aware float fallback) and write the "
                    ".tflite file with its model card beside it.")
    p.add_argument("model", help="A .keras or .h5 file, or a SavedModel directory.")
    p.add_argument("-o", "--output", required=True,
                   help="The .tflite file to write; its card goes beside it "
                        "(model.tflite -> model_card.json).")
    p.add_argument("--mode", choices=MODES + LOWBIT_MODES, default="int8",
                   help="int8: full integer (default); int16x8: int16 activations, int8 "
                        "weights; float16: float16 weights; dynamic_range: int8 weights, float "
                        "activations; float32: no quantization. Below 8 bits (LiteRT "
                        "Quantizer): w4a8, int4_weights, int4_blockwise, int2_blockwise, "
                        "litert_int8, mixed_precision (with --max-size-bytes or --tolerance).")
    p.add_argument("--max-size-bytes", type=int,
                   help="Mixed precision: choose each layer's bit width (4, 8, 16x8) to fit "
                        "the .tflite in this many bytes at the least accuracy cost.")
    p.add_argument("--representative-data", metavar="FILE",
                   help="Calibration inputs for int8/int16x8, preprocessed as for training: "
                        "a .npy array of samples, or " + _NPZ_HELP + ".")
    p.add_argument("--num-samples", type=positive_int, default=300,
                   help="Use at most this many representative samples (default 300).")
    p.add_argument("--input-type", choices=IO_TYPES,
                   help="Model input type in int8 mode (default int8; float32 keeps float I/O "
                        "around the int8 body).")
    p.add_argument("--output-type", choices=IO_TYPES,
                   help="Model output type in int8 mode (default int8).")
    batch = p.add_mutually_exclusive_group()
    batch.add_argument("--batch-size", type=positive_int, default=1,
                       help="Fixed batch dimension of the .tflite model (default 1, what "
                            "microcontrollers and most apps run).")
    batch.add_argument("--dynamic-batch", action="store_true",
                       help="Keep the batch dimension dynamic instead.")
    p.add_argument("--signature", metavar="KEY",
                   help="For a SavedModel with several signatures, the one to convert.")
    p.add_argument("--per-tensor", action="store_true",
                   help="One weight scale per tensor instead of per output channel.")
    p.add_argument("--sparse", action="store_true",
                   help="Encode pruned weights in TFLite's sparse format (smaller file; the "
                        "model then needs LiteRT without default delegates, see the card).")
    p.add_argument("--allow-float-ops", action="store_true",
                   help="In integer modes, accept ops left in float (warn instead of failing).")
    p.add_argument("--strict", action="store_true",
                   help="Fail instead of warning when the representative data look "
                        "preprocessed differently from what the model or --eval-data expect "
                        "(e.g. 0..255 pixels for a 0..1 model).")
    p.add_argument("--eval-data", metavar="FILE",
                   help="Evaluation inputs: a .npy array, or " + _NPZ_HELP + ". The "
                        "model is validated on them and the result goes into the card.")
    p.add_argument("--eval-labels", metavar="FILE",
                   help="Labels for --eval-data given as .npy (integers or one-hot).")
    p.add_argument("--tolerance", type=float,
                   help="Accuracy-aware int8: the largest accepted loss vs the float model "
                        "on --eval-data (accuracy points with labels, e.g. 0.01); the fewest "
                        "layers needed are kept in float.")
    p.add_argument("--debug-report", metavar="FILE.json",
                   help="Also measure the layer-wise int8 quantization error (TFLite's "
                        "QuantizationDebugger), print it as a table and save it as JSON.")
    p.add_argument("--name", help="Model name in the card (default: the model's own name).")
    p.add_argument("--json", action="store_true",
                   help="Print the artifact's facts as JSON instead of tables.")
    p.set_defaults(func=_run_convert)


def _run_convert(args: argparse.Namespace) -> int:
    from tfedge._convert import convert  # (imports TensorFlow: only when converting)
    from tfedge.quant_debug import debug_quantization

    output_file(args.output, "-o/--output")
    output_file(args.debug_report, "--debug-report")
    if not os.path.exists(args.model):
        raise ValueError(f"model {args.model!r} does not exist: give a .keras / .h5 file or a "
                         "SavedModel directory.")
    representative, _ = load_arrays(args.representative_data, "--representative-data")
    eval_x, eval_y = load_arrays(args.eval_data, "--eval-data")
    if args.eval_labels:
        eval_y, _ = load_arrays(input_file(args.eval_labels, "--eval-labels"), "--eval-labels")
    if args.tolerance is not None and eval_x is None:
        raise ValueError("--tolerance needs --eval-data (and, for accuracy, labels).")
    eval_data = None if eval_x is None else (eval_x, eval_y)
    artifact = convert(args.model, representative, mode=args.mode,
                       input_type=args.input_type, output_type=args.output_type,
                       num_samples=args.num_samples, allow_float_ops=args.allow_float_ops,
                       batch_size=None if args.dynamic_batch else args.batch_size,
                       signature=args.signature, per_channel=not args.per_tensor,
                       sparse=args.sparse, tolerance=args.tolerance, eval_data=eval_data,
                       max_size_bytes=args.max_size_bytes, strict=args.strict)
    path = artifact.save(args.output, name=args.name)
    report = None
    if args.debug_report:
        report = debug_quantization(args.model, representative, eval_data,
                                    num_samples=args.num_samples, signature=args.signature,
                                    per_channel=not args.per_tensor)
        report.save(args.debug_report)
    if args.json:
        print(json.dumps({**artifact.to_dict(), "path": path,
                          "validation": artifact.validation.to_dict()
                          if artifact.validation else None,
                          "quant_debug": report.to_dict() if report else None},
                         indent=2, default=str))
        return 0
    print(artifact)
    fallback = artifact.details.get("float_fallback")
    if fallback:
        print(fallback["message"])
    if artifact.validation is not None:
        print(artifact.validation)
    if report is not None:
        print(report)
        print(f"quantization debug report: {args.debug_report}")
    print(f"wrote {path} and {card_path(path)}")
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error as one line (like every other tfedge error)."""

    def error(self, message: str):  # noqa: D102 - argparse's hook
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="tfedge",
        description="tfedge: Keras models to validated int8 TFLite models for the edge.")
    parser.add_argument("--verbose", action="store_true", dest="tensorflow_logs",
                        help="Also show TensorFlow's C++ start-up lines (oneDNN, CUDA, CPU "
                             "features), hidden by default (TF_CPP_MIN_LOG_LEVEL=2, set before "
                             "TensorFlow loads; see tfedge/_quiet.py).")
    parser.add_argument("--debug", action="store_true",
                        help="Show the Python traceback of an error instead of one line.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_inspect(sub)
    _add_convert(sub)
    _add_tune(sub)
    _add_export(sub)
    _add_check(sub)
    _add_bench(sub)
    for command in sub.choices.values():  # also after the command: tfedge convert ... --debug
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                             help="Show the Python traceback of an error instead of one line.")
    return parser


_EXPECTED = (TFEdgeError, OSError, ValueError, TypeError)  # bad input, not a tfedge bug


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``tfedge`` command. Returns the exit status.

    An error is one line on stderr (``tfedge <command>: error: ...``) and
    exit status 2 (1 for a failed ``check`` or a bench output mismatch);
    ``--debug`` shows the Python traceback instead.
    """
    args = build_parser().parse_args(argv)
    if not args.tensorflow_logs:
        _quiet.quiet_tensorflow_import()
    try:
        return args.func(args)
    except Exception as err:  # noqa: BLE001 - every error becomes one line, unless --debug
        if args.debug:
            raise
        message = " ".join(line.strip() for line in str(err).strip().splitlines()) or \
            type(err).__name__
        if not isinstance(err, _EXPECTED):
            message = f"{type(err).__name__}: {message} (unexpected: rerun with --debug " \
                      "for the traceback, and please report it)"
        print(f"tfedge {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
