"""Automatic channel plans (``tfedge.plan_channels``) against the hand-searched "plan B".

MobileNetV2 0.35/96 trained dense on digits (one seed, ``--dense-epochs``
like ``structured.py``; the weights are cached in ``--cache``), then:

* each ``--plan-args`` spec is given to ``plan_channels`` (planned on the
  last ``--val`` training images, not on the test set), with plan B's
  channel multiples (stem and early expansions x8, the rest x16);
* plan B (``structured_plans.json``'s best plan) and every plan found are
  measured the same way: MACs of the rebuilt model, exact emulated int8
  instructions on rpi4 and rpi5 (``tfedge.int8_instructions``: LiteRT's
  aarch64 build under qemu; untrained rebuilt models, the counts depend on
  the shapes only) against dense int8, and the sensitivity proxy: float
  test accuracy with the plan's channels masked (no fine-tune), as
  ``plan_channels`` measures each group, and the same with BatchNorm's moving
  statistics re-estimated on training images first (adaptive BN).

A spec is ``KEY=VALUE[,KEY=VALUE]`` of ``plan_channels`` arguments;
``target=rpi4+rpi5`` is the list of targets.

The automatic plans are also written as ``plans`` (``structured_plans.json``'s
form), which ``structured.py --channel-plans`` trains.

    python benchmarks/plan_search.py --plan-args instructions=0.55,target=rpi4 macs=0.5 \\
        instructions=0.55,target=rpi4+rpi5,strategy=cost macs=0.5,strategy=cost
    python benchmarks/structured.py --families mobilenet_v2 --variants channel \\
        --dense-epochs 32 --no-emulate --no-uniform --instructions 0 \\
        --channel-plans benchmarks/results/plan_search.json --channel-plans-top 4 \\
        --prune-epochs 4 --masked-epochs 0 --rebuilt-epochs 16 --distill --recover \\
        --qat-epochs 2 --out benchmarks/results/structured_plan_search.json

(about 45 and 30 minutes on 2 cores; the second trains them as plan B was
trained, ``structured_plan50_d32_seed0.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

import tfedge  # noqa: E402
from tfedge import channel_budget, channel_prune, channels, keras  # noqa: E402
from tfedge.report import format_table, write_json  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compression import compile_  # noqa: E402
from structured_models import (FAMILIES, digits_at, mobilenet_v2, parse_spec,  # noqa: E402
                               progress)
from structured_plans import TARGETS, rebuilt  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
OUT = os.path.join(RESULTS, "plan_search.json")
log = progress("plan_search")


def trained_dense(epochs: int, seed: int, cache: str, x: Any, y: Any) -> Any:
    """MobileNetV2 0.35/96 trained as ``structured.py`` trains its dense model (cached)."""
    keras.utils.set_random_seed(seed)
    lr = FAMILIES["mobilenet_v2"]["lr"]
    model = compile_(mobilenet_v2(0.35, "mobilenet_v2_dense"), lr, -(-len(x) // 32) * epochs)
    path = os.path.join(cache, f"plan_search_mnv2_d{epochs}_seed{seed}.weights.h5")
    if os.path.exists(path):
        model.load_weights(path)
        log(f"dense weights from {path}")
    else:
        t = time.time()
        model.fit(x, y, epochs=epochs, batch_size=32, verbose=0)
        model.save_weights(path)
        log(f"dense trained {epochs} epochs in {time.time() - t:.0f} s -> {path}")
    return model


def masked_accuracy(model: Any, fractions: dict[str, float], multiple: Any, x: Any,
                    y: Any, recalibrate: Any = None) -> float:
    """Float accuracy with the plan's channels masked (the sensitivity proxy, no fine-tune);
    with ``recalibrate`` (training images), BatchNorm's moving statistics are first
    set to their batch statistics (``tfedge.recalibrate_batch_norm``, no weight update: the
    "adaptive BN" evaluation of EagleEye, a cheap proxy of the fine-tuned accuracy;
    ``plan_search.json`` was measured with the earlier running average over batches of 32
    at momentum 0.9)."""
    work = keras.models.clone_model(model)
    work.set_weights(model.get_weights())
    graph = channels.analyze(work)
    plan = {i: fractions.get(g.producers[0], 0.0) for i, g in enumerate(graph.groups)}
    removed = channel_prune.select_removed(graph, channel_prune.channel_scores(graph), plan,
                                           set(), channels.group_multiples(graph, multiple))
    masks = channel_prune.ChannelMasks(graph)
    masks.set_removed(removed)
    masks.apply()
    if recalibrate is not None:
        channel_budget.recalibrate_batch_norm(work, recalibrate)
    pred = work.predict(x, verbose=0, batch_size=128)
    return float(np.mean(np.argmax(pred, -1) == np.asarray(y).reshape(-1)))


def measure(name: str, dense: Any, fractions: dict[str, float], multiple: Any,
            calibration: Any, base: dict[str, Any], x_test: Any, y_test: Any,
            x_bn: Any) -> dict[str, Any]:
    narrow = rebuilt(dense, fractions, multiple)
    count = channel_budget.int8_instructions(narrow, calibration, TARGETS)
    ratios = {t: count.instructions[t] / base["instructions"][t] for t in TARGETS}
    row = {"name": name, "fractions": fractions, "channel_multiple": multiple,
           "macs_ratio": channels.keras_macs(narrow) / base["macs"],
           "instructions": count.instructions, "ratios": ratios,
           "size_ratio": count.size_bytes / base["size_bytes"],
           "masked_accuracy": masked_accuracy(dense, fractions, multiple, x_test, y_test),
           "adaptive_bn_accuracy": masked_accuracy(dense, fractions, multiple, x_test, y_test,
                                                   x_bn)}
    log(f"{name}: MACs {row['macs_ratio']:.3f}x, rpi4 {ratios['rpi4']:.3f}x, "
        f"rpi5 {ratios['rpi5']:.3f}x, masked accuracy {100 * row['masked_accuracy']:.2f}% "
        f"({100 * row['adaptive_bn_accuracy']:.2f}% with BN re-estimated)")
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plan-args", nargs="+", type=parse_spec,
                        default=[parse_spec("instructions=0.55,target=rpi4"),
                                 parse_spec("macs=0.5")],
                        help="plan_channels arguments, one plan per value.")
    parser.add_argument("--dense-epochs", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--val", type=int, default=450,
                        help="Last N training images: the data plan_channels measures on.")
    parser.add_argument("--bn-images", type=int, default=640,
                        help="Training images the adaptive-BN proxy re-estimates BN on.")
    parser.add_argument("--plan-b", default=os.path.join(RESULTS, "structured_plans.json"))
    parser.add_argument("--cache", default="/tmp")
    parser.add_argument("--out", default=OUT)
    args = parser.parse_args(argv)
    start = time.time()
    (x, y), (x_test, y_test) = digits_at(96)
    dense = trained_dense(args.dense_epochs, args.seed, args.cache, x, y)
    calibration = x[:32]
    x_val, y_val = x[-args.val:], y[-args.val:]
    count = channel_budget.int8_instructions(dense, calibration, TARGETS)
    base = {"macs": channels.keras_macs(dense), "instructions": count.instructions,
            "size_bytes": count.size_bytes}
    dense_acc = masked_accuracy(dense, {}, 1, x_test, y_test)
    log(f"dense: float test accuracy {100 * dense_acc:.2f}%, {base}")
    with open(args.plan_b) as f:
        plan_b = json.load(f)["plans"][0]
    multiple = plan_b["channel_multiple"]
    x_bn = x[np.random.default_rng(args.seed).permutation(len(x))[:args.bn_images]]
    rows = [measure("plan B (hand grid search)", dense, plan_b["fractions"], multiple,
                    calibration, base, x_test, y_test, x_bn)]
    for spec in args.plan_args:
        t = time.time()
        plan = tfedge.plan_channels(dense, x_val, y_val, multiple=multiple,
                                    representative_data=calibration, **spec)
        seconds = time.time() - t
        log(f"plan_channels({spec}) in {seconds:.0f} s:\n{plan}")
        row = measure(f"plan_channels({', '.join(f'{k}={v}' for k, v in spec.items())})",
                      dense, plan.fractions, multiple, calibration, base, x_test, y_test, x_bn)
        row.update({"spec": spec, "plan": plan.to_dict(), "seconds": seconds})
        rows.append(row)
    print(format_table(
        ["plan", "MACs x", "rpi4 x", "rpi5 x", "size x", "masked acc %", "+ BN re-est. %"],
        [[r["name"], f"{r['macs_ratio']:.3f}", f"{r['ratios']['rpi4']:.3f}",
          f"{r['ratios']['rpi5']:.3f}", f"{r['size_ratio']:.3f}",
          f"{100 * r['masked_accuracy']:.2f}", f"{100 * r['adaptive_bn_accuracy']:.2f}"]
         for r in rows],
        title=f"MobileNetV2 0.35/96 on digits, dense {args.dense_epochs} epochs seed "
              f"{args.seed} (float test {100 * dense_acc:.2f}%): plans vs plan B (untrained "
              "rebuilt models, ratios to dense int8; masked accuracy: float test, no fine-tune)"))
    # the automatic plans again in structured_plans.json's form, so that
    # ``structured.py --channel-plans plan_search.json --channel-plans-top N`` trains them
    plans = [{"name": r["name"], "fractions": r["fractions"],
              "channel_multiple": r["channel_multiple"], "macs_ratio": r["macs_ratio"],
              "ratios": r["ratios"]} for r in rows[1:]]
    settings = {k: v for k, v in vars(args).items() if k != "out"}
    settings["plan_b"] = os.path.relpath(args.plan_b)
    result = {"settings": settings,
              "dense": {**base, "float_accuracy": dense_acc}, "rows": rows, "plans": plans,
              "seconds": time.time() - start}
    write_json(args.out, result)
    print(f"wrote {os.path.relpath(args.out)} ({result['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
