"""Pruning that makes the device model faster: channel pruning vs unstructured, side by side.

For each model family, trained on scikit-learn's digits from the same seed,
in one run:

* ``dense int8``: the trained float model, post-training int8;
* ``unstructured 50% / 75%``: tfmot magnitude pruning (``tfedge.wrap``),
  fine-tuned from the dense model, int8 (dense encoding: LiteRT's int8
  kernels do not skip zeros);
* ``channel ~0.5x / ~0.25x MACs``: ``PruneConfig(f, structure="channel")``
  from the dense model, ``f`` chosen so that the rebuilt model has that
  share of the MACs (``tfedge.channel_prune.fraction_for_macs``), int8;
* ``low-rank ~0.5x MACs``: ``tfedge.LowRankConfig(macs=0.5)``, the classifier
  left whole, int8 (``--variants lowrank scratch --scratch-macs 0.5``:
  ``structured_lowrank.json``; the low-rank rows of ``structured.json`` and
  ``structured_digits.json`` predate that rule and cut the logits to rank 5);
* ``scratch ~0.5x / ~0.25x``: the same architecture at the width giving the
  same MACs, trained from scratch for as many epochs as the dense model
  (the honest baseline).

Per variant: int8 TFLite test accuracy (``tfedge.validate``), int8 file
size, MACs (``tfedge.model_cost``), exact emulated instructions per
inference on rpi3 / rpi4 / rpi5 (``tfedge.bench``, LiteRT's aarch64 build
under qemu) and host latency (p50, one thread), with ratios to dense int8.

Accuracy recovery (``--recover``): the short recipe above gives channel
pruning 4 epochs; ``--recover`` reruns MobileNetV2's 0.5x-MACs and
0.6x-rpi4-instructions variants with 4 epochs of gradual masking distilled
from the dense model (``teacher="self"``) and 8 epochs of fine-tuning the
rebuilt narrow model, distilled too, with a cosine-decayed learning rate
(1/4 of the dense one), against scratch baselines at 12 epochs and at the
same 24-epoch budget, plain and distilled from the same teacher
(``structured_recovered.json``). ``--channel-fixed PRODUCER=FRACTION ...``
adds, per ``--channel-macs``, a channel variant whose named groups keep their
own fraction and the others are solved for the MACs
(``channel_prune.fractions_for_macs``): pruning MobileNetV2's high-resolution
expansions harder costs fewer device instructions at the same MACs
(the stem and the 48x48 blocks cost the most instructions per MAC; see
``channel_prune.fraction_for_macs``; ``--channel-multiples PRODUCER=M ...``
rounds that variant's groups per group). ``--channel-plans JSON`` trains
the best plans of a ``structured_plans.py --search`` (plans chosen by the
emulated instructions of the untrained rebuilt model;
``structured_plan50.json``), ``--no-uniform`` skips the uniform variants.
``--factorize Conv_1=32`` also trains each channel variant with layers
factorized at explicit ranks (``LowRankConfig(ranks=)``) between the
pruning and the rebuilt fine-tune, from the same pruned model and seed, and
``--qat-epochs N`` adds a QAT sibling of each
(``structured_plan50_lowrank.json``). ``--dense-epochs N`` trains the dense
reference (and so the pruned models' starting point) for N epochs instead of
the family's 12: at 12 MobileNetV2's cosine schedule ends while its test
accuracy still swings (95.3% int8 on seed 1; ``structured_dense_curve.py``).
``--no-emulate`` skips qemu (instruction counts depend on the architecture
only). Over seeds (``--seed``; ``structured_seeds.py`` aggregates,
``structured_plan50_seeds.json``), with a 32-epoch dense and scratch given the
pruned models' whole 52 epochs (32 dense + 4 masking + 16 rebuilt; QAT adds 2),
seeds 0-4: plan B + Conv_1 r32 98.04 +- 0.58% int8 (post-training), dense
97.60 +- 0.62% (97.73% trained alone for 52 epochs), scratch 97.96 +- 0.67%;
paired r32 - dense +0.44 pp (worst seed -0.44), r32 - scratch +0.09 pp (worst
-0.44): within 1 pp of dense on every seed, level with scratch on the mean
(2 and 1 images below it on seeds 3 and 4); margins of 0-4 test images (README).

    python benchmarks/structured.py --recover --channel-plans \\
        benchmarks/results/structured_plans.json --no-uniform --factorize Conv_1=32 \\
        --qat-epochs 2 --instructions 0 --dense-epochs 32 --scratch-epochs 52 \\
        --no-scratch-distill --rebuilt-epochs 16 --no-emulate --seed N \\
        --out benchmarks/results/structured_plan50_d32_seedN.json

``--scratch-shape`` adds the strictest baseline: each channel variant's own
rebuilt architecture, initialized afresh and trained (plain, and distilled with
``--distill``; QAT siblings with ``--qat-epochs``) for the pruned models' whole
budget, at exactly their MACs (``--scratch-macs`` with no value drops the
uniform-width ones; ``structured_scratch_shape_seed{0,1,2}.json``).

``--detector`` runs the recipe's detector (``structured_detector.json``); ``--detector-box-mask``
distils its boxes only on the anchors the teacher detects; ``--detector-plan`` trains
``plan_channels`` plans scored by validation mAP, and ``--detector-scratch-shape`` their own
architectures from scratch (``structured_detector_plan_seedN.json``):

    python benchmarks/structured.py --detector --detector-epochs 64 \\
        --detector-multiples 8 --detector-rebuilt-epochs 16 \\
        --detector-plan instructions=0.55,target=rpi4+rpi5 --detector-scratch-shape \\
        --seed N --out benchmarks/results/structured_detector_plan_seedN.json

and with and without BatchNorm recalibration in the plan, each rebuilt model fine-tuned from
a quarter and from the full learning rate (``structured_detector_bn_seed1.json``; the full
rate is what recovers the plan):

    python benchmarks/structured.py --detector --detector-epochs 64 \\
        --detector-multiples 8 --detector-rebuilt-epochs 16 \\
        --detector-plan instructions=0.55,target=rpi4+rpi5 --detector-plan-bn 0 256 \\
        --detector-rebuilt-lr 0.25 1 --detector-scratch-shape \\
        --detector-scratch-distilled-only --detector-no-uniform --seed 1 \\
        --out benchmarks/results/structured_detector_bn_seed1.json

and the full-rate fine-tune on another seed, beside a gentler plan
(``structured_detector_full_lr_seed0.json``):

    python benchmarks/structured.py --detector --detector-epochs 64 \\
        --detector-multiples 8 --detector-rebuilt-epochs 16 \\
        --detector-plan instructions=0.55,target=rpi4+rpi5 instructions=0.6,target=rpi4+rpi5 \\
        --detector-plan-bn 0 --detector-rebuilt-lr 1 --detector-scratch-shape \\
        --detector-scratch-distilled-only --detector-no-uniform --seed 0 \\
        --out benchmarks/results/structured_detector_full_lr_seed0.json

and the same with twice the rebuilt epochs, the scratch baselines trained as long
(``structured_detector_rebuilt32_seed0.json``):

    python benchmarks/structured.py --detector --detector-epochs 64 \\
        --detector-multiples 8 --detector-rebuilt-epochs 32 \\
        --detector-plan instructions=0.55,target=rpi4+rpi5 --detector-plan-bn 0 \\
        --detector-rebuilt-lr 1 --detector-scratch-shape --detector-scratch-distilled-only \\
        --detector-no-uniform --seed 0 \\
        --out benchmarks/results/structured_detector_rebuilt32_seed0.json

    python benchmarks/structured.py [--families digits_cnn mobilenet_v2] [--out ...]
    python benchmarks/structured.py --recover
    python benchmarks/structured.py --detector
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tfedge  # noqa: E402
from tfedge import channel_budget, channel_prune, channels, keras, lowrank  # noqa: E402
from tfedge.report import format_table, write_json  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from structured_detector import REBUILT_LR, run_detector  # noqa: E402
from structured_models import (FACTORIZE_ARGUMENT, FAMILIES, TARGETS, bench_fields,  # noqa: E402
                               compile_, fast_batchnorm, fine_tune, parse_spec, progress,
                               ranks_label, scratch_width)

VARIANTS = ("unstructured", "channel", "lowrank", "scratch")
DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "structured.json")


def fraction_for_macs(model: Any, ratio: float, multiple: int) -> tuple[tuple[float, float], int]:
    """``channel_prune.fraction_for_macs``, halving the channel multiple until the
    ratio is reachable (groups of 16 channels cannot go below 16 with multiple 16)."""
    while True:
        try:
            return channel_prune.fraction_for_macs(model, ratio, multiple=multiple), multiple
        except ValueError:
            if multiple == 1:
                raise
            multiple //= 2


def fraction_for_instructions(model: Any, ratio: float, target: str, multiple: int,
                              calibration: Any) -> tuple[float, float]:
    """The uniform channel fraction whose int8 model runs ``ratio`` x the instructions.

    Instruction counts do not depend on the weights' values, so the untrained
    rebuilt architectures are converted and emulated (bisection, exact counts).
    """
    graph = channels.analyze(model)
    scores = channel_prune.channel_scores(graph)

    def count(m):
        return channel_budget.int8_instructions(m, calibration, [target]).instructions[target]

    base = count(model)
    lo, hi, reached = 0.0, 0.95, None
    for _ in range(6):
        mid = (lo + hi) / 2
        removed = channel_prune.select_removed(
            graph, scores, {i: mid for i in range(len(graph.groups))}, set(), multiple)
        value = count(channel_prune.rebuild(graph, removed)) / base
        if value <= ratio:
            hi, reached = mid, value
        else:
            lo = mid
    return hi, reached


def run_family(family: str, args: argparse.Namespace) -> tuple[list[dict], dict]:
    spec = FAMILIES[family]
    (x, y), (x_test, y_test) = spec["data"]()
    fit = dict(batch_size=32, verbose=0)
    epochs, lr = args.dense_epochs or spec["epochs"], spec["lr"]
    prune_epochs, tune_epochs = spec["prune_epochs"], spec["tune_epochs"]
    steps = -(-len(x) // 32) * epochs
    calibration = x[:300]
    log = progress(family)
    variants: dict[str, tuple[Any, Any, str]] = {}  # name -> (keras model, artifact, note)
    extra: dict[str, Any] = {}

    keras.utils.set_random_seed(args.seed)
    dense = compile_(spec["build"](spec["width"], f"{family}_dense"), lr, steps)
    t = time.time()
    dense.fit(x, y, epochs=epochs, **fit)
    variants["dense int8"] = (dense, tfedge.convert(dense, calibration),
                              f"{epochs} epochs from scratch")
    dense_macs = channels.keras_macs(dense)
    log(f"dense trained in {time.time() - t:.0f} s")

    tune_lr = lr / 4
    for sparsity in (0.5, 0.75) if "unstructured" in args.variants else ():
        keras.utils.set_random_seed(args.seed)
        edge = compile_(tfedge.wrap(dense, prune=tfedge.PruneConfig(
            sparsity, end_epoch=prune_epochs)), tune_lr)
        edge.fit(x, y, epochs=prune_epochs + tune_epochs, **fit)
        model = edge.finish()
        variants[f"unstructured {int(100 * sparsity)}%"] = (
            model, tfedge.convert(model, calibration),
            f"+{prune_epochs} prune + {tune_epochs} fine-tune epochs")
        log(f"unstructured {sparsity} done")

    multiple = args.channel_multiple or spec["multiple"]
    searches = []
    if "channel" in args.variants and not args.no_uniform:
        searches = [(f"channel {r}x MACs", *fraction_for_macs(dense, r, multiple), None)
                    for r in args.channel_macs]
    if "channel" in args.variants and args.channel_fixed:
        # the high-resolution expansions held at their own (larger) fraction, the others
        # solved for the same MACs: fewer instructions per MAC kept (fraction_for_macs)
        fixed = dict(args.channel_fixed)
        # --channel-multiples: per-group multiples ('*' the others, default the family's)
        tiles = {"*": multiple, **dict(args.channel_multiples)} if args.channel_multiples \
            else multiple
        for r in args.channel_macs:
            plan, reached = channel_prune.fractions_for_macs(dense, r, fixed=fixed,
                                                             multiple=tiles)
            searches.append((f"channel {reached:.3f}x MACs, early layers pruned harder"
                             + (", per-group multiples" if args.channel_multiples else ""),
                             (max(plan.values()), reached), tiles, plan))
    if "channel" in args.variants and args.channel_plans:
        # plans searched by emulated instructions (benchmarks/structured_plans.py --search)
        with open(args.channel_plans) as f:
            found = json.load(f)["plans"][:args.channel_plans_top]
        for p in found:
            searches.append((f"channel {p['macs_ratio']:.3f}x MACs, plan: {p['name']}",
                             (max(p["fractions"].values()), p["macs_ratio"]),
                             p["channel_multiple"], p["fractions"]))
    if "channel" in args.variants and args.instructions:
        searches.append((f"channel {args.instructions}x {args.instructions_target} instr",
                         fraction_for_instructions(dense, args.instructions,
                                                   args.instructions_target, multiple,
                                                   calibration), multiple, None))
    prune_epochs = args.prune_epochs or prune_epochs
    masked = tune_epochs if args.masked_epochs is None else args.masked_epochs
    rebuilt = args.rebuilt_epochs
    recipe = (f"+{prune_epochs} prune + {masked} masked + {rebuilt} rebuilt fine-tune epochs"
              + (" (distilled from the dense model)" if args.distill else ""))
    extra_epochs = prune_epochs + masked + rebuilt

    def qat_sibling(label: str, distilled: bool) -> None:
        """With --qat-epochs: ``label``'s model after that many QAT epochs, as its own row."""
        if not args.qat_epochs:
            return
        model, _, note = variants[label]
        qat = fine_tune(model, x, y, args.qat_epochs, tune_lr * args.qat_lr,
                        dense if distilled else None, quantize=True)
        variants[f"{label} + QAT"] = (
            qat, tfedge.convert(qat), note + f"; then {args.qat_epochs} QAT epochs (int8, lr "
            f"{tune_lr * args.qat_lr:g} cosine" + (", distilled" if distilled else "")
            + "), converted from its ranges")
        log(f"{label} + QAT done")

    shapes: list[tuple[str, Any]] = []  # (channel variant, its rebuilt narrow model)
    for name, (fraction, reached), multiple, plan in searches:
        keras.utils.set_random_seed(args.seed)
        edge = compile_(tfedge.wrap(dense, prune=tfedge.PruneConfig(
            fraction, structure="channel", end_epoch=prune_epochs,
            importance=args.importance, channel_multiple=multiple, fractions=plan),
            teacher="self" if args.distill else None), tune_lr)
        edge.fit(x, y, epochs=prune_epochs + masked, **fit)
        narrow = edge.finish()
        shapes.append((name, narrow))
        extra[name] = edge.channel_report().to_dict()
        fixed = dict(args.channel_fixed)
        others = next((v for k, v in (plan or {}).items() if k not in fixed), 0.0)
        held = (f"; held: {', '.join(f'{k} {v:g}' for k, v in fixed.items())}, the others "
                f"{others:.3f}" if plan and fixed else "")
        if plan and not fixed:
            held = "; per group: " + ", ".join(f"{k} {v:g}" for k, v in plan.items())
        tiles = (f"{multiple}" if not isinstance(multiple, dict) else "per group: " + ", ".join(
            f"{k} {v}" for k, v in multiple.items()))
        note = (f"fraction {fraction:.3f} ({args.importance}, channels kept in multiples of "
                f"{tiles}{held}); {recipe}; {epochs + extra_epochs} epochs in all")
        # the same pruned model fine-tuned as it is and factorized (--factorize), each from
        # the same seed, then optionally QAT (--qat-epochs)
        for ranks in [None] + args.factorize:
            model = keras.models.clone_model(narrow)
            model.set_weights(narrow.get_weights())
            label, factorize = name, None
            if ranks:
                factorize = tfedge.LowRankConfig(ranks=ranks)
                label += ranks_label(ranks)
                extra[label] = lowrank.factorize(model, factorize)[1].to_dict()
            keras.utils.set_random_seed(args.seed)
            if rebuilt:  # the narrow model trains faster than the masked full-width one
                model = fine_tune(model, x, y, rebuilt, tune_lr,
                                  dense if args.distill else None, factorize=factorize)
            elif factorize:
                raise SystemExit("--factorize needs --rebuilt-epochs: the factors are "
                                 "fine-tuned with the rebuilt narrow model.")
            lowrank_note = ("; then factorized (" + ", ".join(
                f"{k} rank {v}" for k, v in ranks.items()) + ", SVD) before the rebuilt "
                "fine-tune" if ranks else "")
            variants[label] = (model, tfedge.convert(model, calibration),
                               note + lowrank_note)
            log(f"{label} done (fraction {fraction:.3f}, reached {reached:.3f}x)")
            qat_sibling(label, args.distill)

    if "lowrank" in args.variants and not args.skip_lowrank:
        keras.utils.set_random_seed(args.seed)
        edge = compile_(tfedge.wrap(dense, factorize=tfedge.LowRankConfig(macs=0.5)), tune_lr)
        edge.fit(x, y, epochs=tune_epochs + 1, **fit)
        model = edge.finish()
        variants["low-rank 0.5x MACs"] = (model, tfedge.convert(model, calibration),
                                          f"SVD to 0.5x MACs, +{tune_epochs + 1} fine-tune "
                                          "epochs")
        extra["low-rank 0.5x MACs"] = edge.factorization_report().to_dict()
        log("low-rank done")

    budget = epochs + extra_epochs  # the pruned models' whole budget (the flags')
    scratch_distill = args.distill and not args.no_scratch_distill  # with their teacher
    scratch_runs = [(e, False) for e in args.scratch_epochs or [epochs]]
    if args.scratch_equal:
        scratch_runs += [(budget, False)] + ([(budget, True)] if scratch_distill else [])
    scratch_runs = list(dict.fromkeys(scratch_runs))
    for ratio in args.scratch_macs if "scratch" in args.variants else ():
        width, macs = scratch_width(spec, ratio * dense_macs)
        for n_epochs, distilled in scratch_runs:
            keras.utils.set_random_seed(args.seed)
            model = fine_tune(spec["build"](width, f"{family}_w{width}"), x, y, n_epochs, lr,
                              dense if distilled else None)
            name = f"scratch {ratio}x MACs"
            if len(scratch_runs) > 1:
                name += f", {n_epochs} epochs" + (" distilled" if distilled else "")
            variants[name] = (model, tfedge.convert(model, calibration),
                              f"width {width}, {n_epochs} epochs from scratch"
                              + (" distilled from the dense model" if distilled else ""))
            log(f"{name} done (width {width}, MACs {macs / dense_macs:.3f}x)")

    # --scratch-shape: each channel variant's own rebuilt architecture, initialized afresh
    # and trained for the pruned models' whole budget (Liu et al., "Rethinking the Value of
    # Network Pruning", ICLR 2019): the from-scratch baseline at exactly the pruned MACs,
    # which no uniform width reaches (MobileNetV2's 8-channel floor and 1280-wide last conv)
    for name, narrow in shapes if args.scratch_shape else ():
        for distilled in [False] + ([True] if scratch_distill else []):
            keras.utils.set_random_seed(args.seed)
            # the same layers, fresh initial weights
            model = fine_tune(keras.models.clone_model(narrow), x, y, budget, lr,
                              dense if distilled else None)
            label = f"scratch, shape of {name}, {budget} epochs" + (
                " distilled" if distilled else "")
            variants[label] = (model, tfedge.convert(model, calibration),
                               f"{name}'s rebuilt architecture, initialized afresh, {budget} "
                               "epochs from scratch"
                               + (" distilled from the dense model" if distilled else ""))
            log(f"{label} done (MACs {channels.keras_macs(model) / dense_macs:.3f}x)")
            qat_sibling(label, distilled)

    names = list(variants)
    report = tfedge.compare({n: variants[n][1] for n in names}, target=TARGETS,
                            runs=args.runs, warmup=5, emulation_runs=1,
                            emulate=not args.no_emulate)
    log("bench done")
    rows = []
    for name, bench_report, ratio in zip(names, report.reports, report.ratios()):
        model, artifact, note = variants[name]
        check = tfedge.validate(artifact, model, x_test, y_test)
        row = {"family": family, "variant": name, "note": note,
               "tflite_accuracy": check.tflite_accuracy, "keras_accuracy": check.keras_accuracy,
               **bench_fields(artifact, bench_report, ratio)}
        rows.append(row)
    return rows, {"bench": report.to_dict(), "channel_reports": extra}


def importance_study(args: argparse.Namespace) -> dict[str, Any]:
    """Which channel score: L1, L2 (BatchNorm-folded) or BatchNorm gamma, measured.

    On the MobileNetV1-style model of ``compression.py`` (BatchNorm after every
    conv, 32x32 digits), trained once: for each score and fraction, the test
    accuracy of the masked model with no fine-tuning (how well the score alone
    picks the channels), and the int8 accuracy after the usual gradual pruning
    and fine-tuning.
    """
    from compression import mobilenet, upsampled_digits

    (x, y), (x_test, y_test) = upsampled_digits()
    keras.utils.set_random_seed(0)
    epochs = 20  # as compression.py, which reaches 99% float with it
    dense = compile_(fast_batchnorm(mobilenet(32, "v1")), 2e-3, -(-len(x) // 32) * epochs)
    dense.fit(x, y, epochs=epochs, batch_size=32, verbose=0)
    base = float(dense.evaluate(x_test, y_test, verbose=0)[1])
    rows = []
    for fraction in (0.3, 0.5):
        for method in channel_prune.IMPORTANCE:
            graph = channels.analyze(keras.models.clone_model(dense))
            graph.model.set_weights(dense.get_weights())
            masks = channel_prune.ChannelMasks(graph)
            removed = channel_prune.select_removed(
                graph, channel_prune.channel_scores(graph, method),
                {i: fraction for i in range(len(graph.groups))}, set())
            masks.set_removed(removed)
            masks.apply()
            compile_(graph.model, 1e-3)
            one_shot = float(graph.model.evaluate(x_test, y_test, verbose=0)[1])
            keras.utils.set_random_seed(0)
            edge = compile_(tfedge.wrap(dense, prune=tfedge.PruneConfig(
                fraction, structure="channel", end_epoch=2, importance=method)), 5e-4)
            edge.fit(x, y, epochs=4, batch_size=32, verbose=0)
            model = edge.finish()
            tuned = tfedge.validate(tfedge.convert(model, x[:300]), model, x_test,
                                    y_test).tflite_accuracy
            rows.append({"fraction": fraction, "importance": method,
                         "one_shot_accuracy": one_shot, "fine_tuned_int8_accuracy": tuned})
            print(f"[importance] {fraction} {method}: one-shot {one_shot:.4f}, "
                  f"fine-tuned int8 {tuned:.4f}", file=sys.stderr, flush=True)
    print(format_table(["fraction", "importance", "one-shot acc", "fine-tuned int8 acc"],
                       [[r["fraction"], r["importance"], f"{100 * r['one_shot_accuracy']:.2f}%",
                         f"{100 * r['fine_tuned_int8_accuracy']:.2f}%"] for r in rows],
                       title=f"Channel importance on MobileNetV1-style 32x32 digits (dense "
                             f"{100 * base:.2f}%)"))
    return {"dense_accuracy": base, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    parser.add_argument("--importance", default="bn_gamma", choices=channel_prune.IMPORTANCE)
    parser.add_argument("--runs", type=int, default=30, help="Timed host runs per model.")
    parser.add_argument("--skip-lowrank", action="store_true")
    parser.add_argument("--no-emulate", action="store_true",
                        help="Skip qemu (instructions None): the counts depend on the "
                             "architecture only, so a repeat on another seed need not redo them.")
    parser.add_argument("--dense-epochs", type=int, default=None,
                        help="Epochs of the dense model (cosine-decayed from the family's "
                             "learning rate; default: the family's, 12 for MobileNetV2). The "
                             "pruned variants start from it, and the scratch baselines' "
                             "defaults follow it.")
    parser.add_argument("--channel-multiple", type=int, default=None,
                        help="Channels kept per group rounded up to a multiple of this "
                             "(default: 4 for the digits CNN, 16 for MobileNetV2).")
    parser.add_argument("--instructions", type=float, default=0.6,
                        help="Also prune to this share of the dense int8 model's emulated "
                             "instructions (0: skip).")
    parser.add_argument("--instructions-target", default="rpi4")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS,
                        help="Which kinds of variant to run besides dense int8.")
    parser.add_argument("--channel-macs", nargs="+", type=float, default=[0.5, 0.25])
    parser.add_argument("--channel-fixed", nargs="+", default=[], metavar="PRODUCER=FRACTION",
                        type=lambda v: (v.split("=")[0], float(v.split("=")[1])),
                        help="Also a channel variant per --channel-macs whose groups named "
                             "here keep their own fraction, the others solved for the MACs "
                             "(channel_prune.fractions_for_macs), e.g. block_1_expand=0.67.")
    parser.add_argument("--channel-multiples", nargs="+", default=[], metavar="PRODUCER=M",
                        type=lambda v: (v.split("=")[0], int(v.split("=")[1])),
                        help="Per-group channel multiples of the --channel-fixed variant "
                             "(PruneConfig(channel_multiple={...})), '*=M' for the groups not "
                             "named (default: --channel-multiple), e.g. Conv1=8 "
                             "block_1_expand=8 '*=16'.")
    parser.add_argument("--channel-plans", default=None, metavar="JSON",
                        help="Also channel variants from the plans of a "
                             "structured_plans.py --search result (best first).")
    parser.add_argument("--channel-plans-top", type=int, default=1,
                        help="How many of --channel-plans' plans to train.")
    parser.add_argument("--factorize", **FACTORIZE_ARGUMENT,
                        help="Also each channel variant factorized at these ranks "
                             "(LowRankConfig(ranks=)) after pruning and before the rebuilt "
                             "fine-tune, one variant per value, e.g. Conv_1=32.")
    parser.add_argument("--qat-epochs", type=int, default=0,
                        help="Also each channel variant after this many QAT epochs (int8).")
    parser.add_argument("--qat-lr", type=float, default=0.25,
                        help="QAT learning rate as a share of the fine-tune one.")
    parser.add_argument("--seed", type=int, default=0,
                        help="Seed of every variant (dense, pruned, scratch; the detector's too): "
                             "another seed repeats the comparison on other initial weights "
                             "and data orders.")
    parser.add_argument("--no-uniform", action="store_true",
                        help="Skip the uniform-fraction channel variants (keep --channel-fixed "
                             "and --instructions ones).")
    parser.add_argument("--scratch-macs", nargs="*", type=float, default=[0.5, 0.25],
                        help="MAC ratios of the uniform-width scratch baselines (none: no "
                             "width baseline, e.g. with --scratch-shape alone).")
    parser.add_argument("--scratch-epochs", nargs="+", type=int, default=None,
                        help="Epochs of the from-scratch baselines (default: the dense model's).")
    parser.add_argument("--scratch-equal", action="store_true",
                        help="Also train the scratch baselines for the channel-pruned models' "
                             "whole epoch budget (dense + prune + fine-tune), and with --distill "
                             "once more distilled from the same dense teacher.")
    parser.add_argument("--scratch-shape", action="store_true",
                        help="Also train each channel variant's rebuilt architecture from a "
                             "fresh initialization for the pruned models' whole epoch budget "
                             "(with --distill once more distilled, and with --qat-epochs a QAT "
                             "sibling each): scratch at exactly the pruned model's MACs.")
    parser.add_argument("--no-scratch-distill", action="store_true",
                        help="With --distill, skip the distilled --scratch-equal and --scratch-shape "
                             "runs.")
    parser.add_argument("--prune-epochs", type=int, default=None,
                        help="Epochs of gradual channel masking (default: the family's).")
    parser.add_argument("--masked-epochs", type=int, default=None,
                        help="Fine-tune epochs with the masks fixed, before the rebuild "
                             "(default: the family's).")
    parser.add_argument("--rebuilt-epochs", type=int, default=0,
                        help="Fine-tune epochs of the rebuilt narrow model (cosine-decayed LR).")
    parser.add_argument("--distill", action="store_true",
                        help="Channel pruning distils from the dense model: teacher='self' "
                             "while masking, the dense model while fine-tuning the rebuilt one.")
    parser.add_argument("--detector", action="store_true",
                        help="Only the recipe's detector (dense, channel 0.5x MACs, scratch "
                             "at equal epochs; mAP@0.5 of the int8 body in the accuracy "
                             "column); writes structured_detector.json.")
    parser.add_argument("--detector-epochs", type=int, default=20)
    parser.add_argument("--detector-train", type=int, default=3000)
    parser.add_argument("--detector-multiples", nargs="+", type=int, default=[8, 4],
                        help="Channel multiples of the detector's pruned variants.")
    parser.add_argument("--detector-temperature", type=float, default=2.0)
    parser.add_argument("--detector-alpha", type=float, default=0.5,
                        help="Weight of the detector's hard loss against the soft terms.")
    parser.add_argument("--detector-box-mask", nargs="+", type=float, default=[0.0],
                        help="Distil the boxes only on the anchors whose teacher score is "
                             "above this (DistillConfig(output_masks={'boxes': 'scores'}, "
                             "mask_threshold=...)); 0: every anchor. Several values: one "
                             "pruned variant each (per channel multiple), side by side.")
    parser.add_argument("--detector-prune-epochs", type=int, default=3,
                        help="Epochs of gradual channel masking of the detector.")
    parser.add_argument("--detector-rebuilt-epochs", type=int, default=8,
                        help="Fine-tune epochs of the rebuilt narrow detector (cosine-decayed "
                             "from 1/4 of the dense learning rate; the plans': "
                             "--detector-rebuilt-lr).")
    parser.add_argument("--detector-plan", nargs="+", type=parse_spec, default=[],
                        metavar="SPEC",
                        help="Per-group channel plans (plan_channels arguments, e.g. "
                             "instructions=0.55,target=rpi4+rpi5), each scored by float "
                             "mAP@0.5 on 300 validation images and trained like the uniform "
                             "variants, in multiples of the first --detector-multiples.")
    parser.add_argument("--detector-scratch-shape", action="store_true",
                        help="Each plan's rebuilt architecture initialized afresh and trained "
                             "for the whole budget, plain and distilled, and scratch at the "
                             "uniform width nearest the plan's MACs.")
    parser.add_argument("--detector-plan-bn", nargs="+", type=int, default=[0],
                        metavar="N",
                        help="plan_channels(recalibrate_bn=N) per plan: BatchNormalization "
                             "statistics re-estimated on N calibration images after masking "
                             "(0: scored as masked). Several values: one plan each.")
    parser.add_argument("--detector-rebuilt-lr", nargs="+", type=float, default=[REBUILT_LR],
                        metavar="R",
                        help="Peak learning rate of the plans' rebuilt fine-tune, times the "
                             "dense one. Several values: one trained variant of each plan each.")
    parser.add_argument("--detector-scratch-distilled-only", action="store_true",
                        help="--detector-scratch-shape trains only the distilled scratch (the "
                             "stronger baseline on seed 1: 96.8%% against 93.1%%).")
    parser.add_argument("--detector-no-uniform", action="store_true",
                        help="No uniform-fraction pruned variants (only the plans).")
    parser.add_argument("--detector-score-weight", type=float, default=10.0,
                        help="Weight of the scores' soft term (a per-anchor mean) against "
                             "the boxes' mse.")
    parser.add_argument("--recover", action="store_true",
                        help="The accuracy-recovery run: MobileNetV2, channel 0.5x MACs and "
                             "0.6x rpi4 instructions with 4 prune + 8 rebuilt epochs distilled, "
                             "against scratch at 12 epochs and at the same 24-epoch budget "
                             "(plain and distilled); writes structured_recovered.json.")
    parser.add_argument("--importance-study", action="store_true",
                        help="Only compare the channel scores (L1, L2, BN gamma).")
    parser.add_argument("--out", default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if args.recover:
        args.families, args.variants, args.channel_macs = ["mobilenet_v2"], ["channel", "scratch"], [0.5]
        args.scratch_macs, args.scratch_equal, args.distill = [0.5], True, True
        args.prune_epochs, args.masked_epochs = args.prune_epochs or 4, 0
        args.rebuilt_epochs = args.rebuilt_epochs or 8
        if args.out == DEFAULT_OUT:
            args.out = os.path.join(os.path.dirname(DEFAULT_OUT), "structured_recovered.json")
    start = time.time()
    if args.importance_study:
        out = os.path.join(os.path.dirname(args.out), "structured_importance.json")
        write_json(out, {"study": importance_study(args), "seconds": time.time() - start})
        print(f"wrote {out}")
        return 0
    rows, details, previous = [], {}, None
    if args.detector:
        if args.out == DEFAULT_OUT:
            args.out = os.path.join(os.path.dirname(DEFAULT_OUT), "structured_detector.json")
        if os.path.exists(args.out):  # the last run's rows stay visible next to the new ones
            with open(args.out) as f:
                old = json.load(f)
            previous = old.get("previous") if "distill" not in str(old.get("rows")) else None
            previous = previous or {k: old[k] for k in ("settings", "rows") if k in old}
        rows, details["detector"] = run_detector(args)
    for family in args.families if not args.detector else ():
        family_rows, details[family] = run_family(family, args)
        rows += family_rows
        keras.backend.clear_session()

    table = []
    for r in rows:
        ra = r["ratios"]
        table.append([r["family"], r["variant"], f"{100 * r['tflite_accuracy']:.2f}%",
                      r["size_bytes"], f"{ra['size']:.2f}x", r["macs"], f"{ra['macs']:.2f}x"]
                     + [f"{r['instructions'][t]:,} ({ra['targets'][t]['instructions']:.2f}x)"
                        if r["instructions"][t] is not None else "-" for t in TARGETS]
                     + [f"{r['host_p50_ms']:.3f}", f"{ra['host_p50']:.2f}x"])
    print(format_table(["family", "variant", "int8 acc", "bytes", "size", "MACs", "MACs x"]
                       + [f"{t} instr" for t in TARGETS] + ["host p50 ms", "host x"], table,
                       title="Structured pruning (int8 TFLite; ratios to dense int8)"
                       + ("; detector: 'int8 acc' is mAP@0.5 on generated shapes"
                          if args.detector else " on digits")))
    settings = {**vars(args), "out": os.path.relpath(args.out, os.path.dirname(
        os.path.dirname(os.path.abspath(__file__))))}  # no machine paths in results
    result = {"settings": settings, "rows": rows, "details": details,
              "seconds": time.time() - start}
    if previous:
        result["previous"] = previous
    write_json(args.out, result)
    print(f"wrote {args.out} ({time.time() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
