"""What every recipe shares: flags, the optimization step, and the output folder.

The optimization step is one call to ``tfedge.wrap`` (prune / QAT / distill
as flagged); conversion, validation, benchmarking and export are single calls
to the tfedge stages. The recipes print (they are scripts); the library logs.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import shlex
import sys
import time
from typing import Any, Iterator

import tfedge
from tfedge import arm
from tfedge._keras import keras
from tfedge import html_report
from tfedge.card import model_card, write_model_card
from tfedge.report import format_table, write_atomic

DEFAULT_OUTPUT_DIR = "tflite_models"


def add_common_flags(parser: argparse.ArgumentParser, *, epochs: int, batch_size: int,
                     name: str, prune: float | None = None, qat: bool = False,
                     distill_from: str | None = None, emulate: bool = False,
                     bench_targets: str = "rpi4,cortex-m7",
                     finetune_epochs: int | None = None) -> None:
    """Flags every recipe has: training length, optimizations, outputs.

    The keyword arguments after ``name`` are the recipe's defaults for the
    optimization and benchmark flags (the classifier, the main job, turns
    everything on).
    """
    parser.add_argument("--epochs", type=int, default=epochs,
                        help=f"Epochs of float training (default {epochs}). With --weights "
                             "imagenet this is fine-tuning.")
    parser.add_argument("--batch_size", type=int, default=batch_size,
                        help=f"Training batch size (default {batch_size}).")
    parser.add_argument("--prune", type=float, default=prune, metavar="SPARSITY",
                        help="Prune to this fraction of zero weights (e.g. 0.5) with tfmot's "
                             "polynomial-decay schedule during the optimization fine-tune "
                             "(tfedge.wrap(prune=...)); 0: no pruning. Default: "
                             + (f"{prune}." if prune else "no pruning."))
    parser.add_argument("--qat", action=argparse.BooleanOptionalAction, default=qat,
                        help="Quantization-aware training during the optimization fine-tune "
                             "(tfedge.wrap(quantize=...); after pruning it preserves the "
                             "sparsity), so the int8 model keeps the float accuracy. "
                             "--no-qat: post-training quantization only.")
    parser.add_argument("--distill_from", default=distill_from, metavar="PATH",
                        help="Teacher to distill from during the optimization fine-tune "
                             "(tfedge.wrap(teacher=...)): 'float' for the float model this "
                             "run trains, or a trained Keras model file (.keras, .h5 or "
                             "SavedModel folder; e.g. one saved with --save_keras) with logits "
                             "for the same classes; 'none': no distillation. Default: "
                             f"{distill_from or 'none'}.")
    parser.add_argument("--finetune_epochs", type=int, default=finetune_epochs,
                        help="Epochs of the optimization fine-tune that runs after float "
                             "training when --prune, --qat or --distill_from is given "
                             f"(default: {finetune_epochs or 'a third of --epochs, at least 2'};"
                             " with --prune and --qat, 60%% prune, then QAT).")
    parser.add_argument("--output_dir", default=DEFAULT_OUTPUT_DIR,
                        help="Folder that receives <name>/ with model.tflite, model_card.json, "
                             f"labels.txt and README.md (default {DEFAULT_OUTPUT_DIR}).")
    parser.add_argument("--name", default=None,
                        help=f"Name of the model and of its output folder (default: {name}, "
                             "or derived from the dataset and model).")
    parser.add_argument("--bundles", default="all", choices=("all", "android", "micro", "none"),
                        help="Handoff bundles to write into <name>/android and <name>/micro "
                             "(tfedge.export_android / export_micro, each verified in its "
                             "runtime). A bundle the runtime cannot take (e.g. TFLM lacks a "
                             "kernel) is reported in the README instead of stopping the run.")
    parser.add_argument("--bench_targets", default=bench_targets,
                        help="Comma-separated device profiles for tfedge.bench's latency "
                             "estimates next to the host timing (rpi3, rpi4, rpi5, phone, "
                             "cortex-m7), or 'none' to skip benchmarking.")
    parser.add_argument("--emulate", action=argparse.BooleanOptionalAction, default=emulate,
                        help="Run the ARM targets in LiteRT's aarch64 build under qemu for "
                             "exact instruction counts and a bit-exact comparison with the "
                             "host (needs qemu-user and a prepared cache: `make arm-emulation` "
                             "or, as root, `python -m tfedge.arm`; without them the run says "
                             "so and uses MAC estimates). --no-emulate: MAC estimates only.")
    parser.add_argument("--save_keras", action="store_true",
                        help="Also save the trained float Keras model as keras_model.keras in "
                             "the output folder (usable later with --distill_from).")
    parser.add_argument("--quick", action="store_true",
                        help="Smoke run: a small slice of the data, tiny model and 1 epoch. "
                             "Checks the pipeline end to end in well under a minute; the "
                             "accuracy means nothing.")
    parser.add_argument("--data_dir", default=None,
                        help="tensorflow_datasets data folder for the real datasets (default: "
                             "tfds' own, ~/tensorflow_datasets).")
    parser.add_argument("--seed", type=int, default=0, help="Random seed (default 0).")
    parser.add_argument("--verbose", type=int, default=None, choices=(0, 1, 2),
                        help="Keras fit verbosity: 1 progress bars, 2 one line per epoch, 0 "
                             "silent (default: 1 on a terminal, 2 otherwise). Given as 1 or 2, "
                             "it also shows TensorFlow's C++ start-up lines, hidden by default.")


def fit_verbosity(args: argparse.Namespace) -> int:
    if args.verbose is not None:
        return args.verbose
    return 1 if sys.stdout.isatty() else 2


@contextlib.contextmanager
def stage(title: str, timings: dict[str, float] | None = None,
          cpu_timings: dict[str, float] | None = None) -> Iterator[None]:
    """Prints a stage header and, at the end, how long it took.

    Records the wall-clock seconds in ``timings`` and this process's CPU
    seconds (all threads) in ``cpu_timings``, under ``title``.
    """
    print(f"\n== {title} ==", flush=True)
    start, cpu_start = time.perf_counter(), time.process_time()
    yield
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    if timings is not None:
        timings[title] = round(seconds, 1)
    if cpu_timings is not None:
        cpu_timings[title] = round(cpu, 1)
    print(f"   ({title}: {seconds:.1f} s, CPU {cpu:.1f} s)", flush=True)


def cosine_schedule(learning_rate: float, total_steps: int) -> Any:
    """Cosine decay from ``learning_rate`` to 0 over ``total_steps``."""
    return keras.optimizers.schedules.CosineDecay(learning_rate, max(1, total_steps))


def load_teacher(path: str) -> Any:
    """Loads the --distill_from model, with an error that says what was expected."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"--distill_from {path!r}: no such file or folder. Pass a "
                                "trained Keras model, e.g. one saved with --save_keras.")
    try:
        return keras.models.load_model(path, compile=False)
    except (OSError, ValueError, TypeError) as err:
        raise ValueError(f"--distill_from {path!r} is not a Keras model tf_keras can load "
                         f"({err}). Save the teacher with tf_keras (model.save('t.keras')).") \
            from err


FLOAT_TEACHER = "float"


def distills(args: argparse.Namespace) -> bool:
    return bool(args.distill_from) and args.distill_from.lower() != "none"


def wants_optimization(args: argparse.Namespace) -> bool:
    return bool(args.prune or args.qat or distills(args))


def prune_end_epoch(args: argparse.Namespace, epochs: int) -> int | None:
    """The epoch pruning ends (and QAT starts) with --prune and --qat, else None.

    Pruning takes the first 60% of the fine-tune (at least one epoch), QAT
    the rest.

    Raises:
        ValueError: --prune with --qat in a one-epoch fine-tune.
    """
    if not (args.prune and args.qat):
        return None
    if epochs < 2:
        raise ValueError("--prune with --qat needs a fine-tune of at least 2 epochs "
                         "(pruning first, then QAT): pass --finetune_epochs 2 or more.")
    return min(epochs - 1, max(1, math.ceil(0.6 * epochs)))


def finetune_epochs(args: argparse.Namespace) -> int:
    if args.finetune_epochs is not None:
        return max(1, args.finetune_epochs)
    return max(2, math.ceil(args.epochs / 3))


def wrap_for_flags(model: Any, args: argparse.Namespace, epochs: int) -> Any:
    """The one ``tfedge.wrap`` call for --prune / --qat / --distill_from.

    Pruning (polynomial decay from 0 to --prune) runs over the whole
    fine-tune, or, with QAT, over its first 60% (at least one epoch, see
    :func:`prune_end_epoch`) with sparsity-preserving QAT in the remaining
    epochs; QAT alone runs throughout; distillation (``DistillConfig()``'s
    temperature 4 and hard-label weight 0.1) spans the whole fine-tune.
    ``--distill_from float`` distills from ``model`` itself: the float model
    is the teacher of its pruned, quantization-aware copy (``wrap`` copies the
    student and only reads the teacher).

    Returns:
        A ``tfedge.EdgeModel`` to compile and fit.

    Raises:
        ValueError: --prune with --qat in a one-epoch fine-tune.
    """
    kwargs: dict[str, Any] = {}
    # The input Rescaling has no tfmot quantize config: it stays float in QAT and
    # is calibrated at conversion like any other op.
    rescaling = [layer.name for layer in model.layers
                 if isinstance(layer, keras.layers.Rescaling)]
    prune_end = prune_end_epoch(args, epochs)
    if prune_end is not None:
        kwargs["prune"] = tfedge.PruneConfig(args.prune, schedule="polynomial_decay",
                                             end_epoch=prune_end)
        kwargs["quantize"] = tfedge.QATConfig(start_epoch=prune_end, skip=rescaling)
    elif args.prune:
        kwargs["prune"] = tfedge.PruneConfig(args.prune, schedule="polynomial_decay")
    elif args.qat:
        kwargs["quantize"] = tfedge.QATConfig(skip=rescaling)
    if distills(args):
        kwargs["teacher"] = (model if args.distill_from.lower() == FLOAT_TEACHER
                             else load_teacher(args.distill_from))
        kwargs["distill"] = tfedge.DistillConfig()
    return tfedge.wrap(model, **kwargs)


def plain_model(model: Any) -> Any:
    """The finished plain Keras model of a wrapped one (or the model itself)."""
    return model.finish() if isinstance(model, tfedge.EdgeModel) else model


def write_outputs(out_dir: str, artifact: Any, *, name: str, description: str,
                  labels: list[str], report: str, validation: Any = None,
                  benchmark: Any = None, extra: dict[str, Any] | None = None) -> dict[str, str]:
    """Writes the handoff folder: model.tflite, model_card.json, labels.txt, README.md.

    Returns:
        ``{kind: path}`` of the files written.
    """
    os.makedirs(out_dir, exist_ok=True)
    paths = {"tflite": artifact.save(os.path.join(out_dir, "model.tflite"))}
    labels_path = os.path.join(out_dir, "labels.txt")
    write_atomic(labels_path, "\n".join(labels) + "\n")
    paths["labels"] = labels_path
    card = model_card(artifact, name=name, description=description, labels=labels,
                      validation=validation, benchmark=benchmark, extra=extra)
    paths["card"] = write_model_card(out_dir, card)
    readme = os.path.join(out_dir, "README.md")
    write_atomic(readme, report.rstrip() + "\n")
    paths["report"] = readme
    return paths


def benchmark(artifact: Any, args: argparse.Namespace, name: str) -> Any:
    """``tfedge.bench`` of the int8 model: host latency plus device estimates.

    Returns:
        The BenchReport, or None when --bench_targets is 'none' or the
        benchmark could not run (the reason is printed).
    """
    if args.bench_targets.strip().lower() == "none":
        return None
    targets = ["host"] + [t.strip() for t in args.bench_targets.split(",") if t.strip()]
    emulate, reason = args.emulate, None
    if emulate:
        reason = emulation_unavailable()
        if reason:
            emulate = False
            print(f"   ARM emulation is not available here, so the ARM figures below are "
                  f"MAC-based estimates only. {reason}")
    try:
        report = tfedge.bench(artifact, target=targets, runs=10 if args.quick else 50,
                              emulate=emulate, name=name)
    except (tfedge.TFEdgeError, ValueError, RuntimeError, OSError) as err:
        print(f"   benchmark not run: {str(err).strip().splitlines()[0][:300]}")
        return None
    for target in report.targets:
        if target.qemu_cpu and target.instructions is None:
            target.note = ("not emulated: " + (reason or "emulation off (--no-emulate)")
                           + "; figures from MACs only.")
    print(report)
    return report


def emulation_unavailable() -> str | None:
    """Why ARM emulation cannot run here, with the command that enables it; None if it can."""
    try:
        arm.prepare()
    except arm.ArmEmulationError as err:
        return " ".join(str(err).split())
    return None


def bench_section(report: Any) -> str:
    """README lines with the benchmark tables (empty without a benchmark)."""
    if report is None:
        return ""
    return ("\n## Benchmark (tfedge.bench)\n\nHost timings are from the machine that ran the "
            "recipe; device figures are estimates (see tfedge.bench).\n\n```\n"
            f"{report}\n```\n")


def export_bundles(artifact: Any, out_dir: str, *, which: str, name: str, description: str,
                   labels: list[str] | None, sample_inputs: Any, validation: Any = None,
                   benchmark: Any = None) -> dict[str, dict[str, Any]]:
    """The Android and microcontroller bundles (``tfedge.export_*``) under ``out_dir``.

    Returns:
        ``{"android": {...}, "micro": {...}}``: each the bundle's directory
        and verification summary, or ``{"error": reason}`` when the runtime
        could not take the model.
    """
    results: dict[str, dict[str, Any]] = {}
    kinds = ("android", "micro") if which == "all" else (() if which == "none" else (which,))
    for kind in kinds:
        directory = os.path.join(out_dir, kind)
        try:
            if kind == "android":
                bundle = tfedge.export_android(
                    artifact, directory, labels=labels, norm_mean=0.0, norm_std=255.0,
                    name=name, description=description, sample_inputs=sample_inputs,
                    validation=validation, benchmark=benchmark)
            else:
                bundle = tfedge.export_micro(
                    artifact, directory, sample_inputs=sample_inputs, name=name,
                    description=description, labels=labels, max_diff=1, validation=validation,
                    benchmark=benchmark)
        except (tfedge.TFEdgeError, ValueError, RuntimeError) as err:
            reason = " ".join(line.strip() for line in str(err).strip().splitlines()[:3])
            results[kind] = {"error": reason[:400]}
            print(f"   {kind} bundle not written: {results[kind]['error']}")
            continue
        facts = bundle.card["bundle"]
        results[kind] = {"directory": directory, "verified": facts["verification"]["summary"]}
        if kind == "micro":
            results[kind]["arena_bytes"] = bundle.arena_bytes
        print(f"   {kind} bundle: {directory} ({results[kind]['verified']})")
    return results


def bundles_section(bundles: dict[str, dict[str, Any]]) -> list[str]:
    """README lines about the bundles."""
    if not bundles:
        return []
    lines = ["## Handoff bundles", ""]
    for kind, facts in bundles.items():
        if "error" in facts:
            lines.append(f"- `{kind}/`: not produced: {facts['error']}")
        else:
            arena = (f"; tensor arena {facts['arena_bytes']:,} bytes"
                     if facts.get("arena_bytes") else "")
            lines.append(f"- `{kind}/`: {facts['verified']}{arena}")
    return lines + [""]


def write_html_report(out_dir: str, *, name: str, summary: str, stages: list[dict[str, Any]],
                      benchmark: Any, sparsity: list[dict[str, Any]],
                      quantization_errors: list[dict[str, Any]] | None, readme: str,
                      bundles: dict[str, dict[str, Any]]) -> str:
    """``<out_dir>/report.html`` (:func:`tfedge.html_report.write_report`); returns its path."""
    links = {"model.tflite (full int8)": "model.tflite", "model_card.json": "model_card.json",
             "README.md": "README.md"}
    for kind, facts in bundles.items():
        if "error" not in facts:
            arena = (f"; tensor arena {facts['arena_bytes']:,} bytes"
                     if facts.get("arena_bytes") else "")
            links[f"{kind} bundle ({facts['verified']}{arena})"] = f"{kind}/"
    return html_report.write_report(
        os.path.join(out_dir, "report.html"), title=name, summary=summary, stages=stages,
        benchmark=benchmark.to_dict() if benchmark is not None else None, sparsity=sparsity,
        quantization_errors=quantization_errors or (), readme=readme, links=links)


def command_line() -> str:
    """The command that is running, for the report (``python -m recipes.x ...``)."""
    module = sys.argv[0]
    if module.endswith(".py") and os.sep + "recipes" + os.sep in os.path.abspath(module):
        module = "-m recipes." + os.path.splitext(os.path.basename(module))[0]
    return "python " + " ".join([module] + [shlex.quote(a) for a in sys.argv[1:]])


def io_table(artifact: Any) -> str:
    """The flatbuffer's inputs and outputs with their int8 parameters, as a table."""
    rows = []
    for kind, tensors in (("input", artifact.inputs), ("output", artifact.outputs)):
        for t in tensors:
            rows.append([kind, t.name, "x".join(map(str, t.shape)), t.dtype,
                         f"{t.scale[0]:.6g}" if t.scale else "-",
                         t.zero_point[0] if t.zero_point else "-"])
    return format_table(["", "tensor", "shape", "dtype", "scale", "zero point"], rows)
