"""Where MobileNetV2's int8 instructions go, and why channel pruning to 0.5x MACs
does not halve them: exact emulated counts per stage, architectures only.

Instruction counts of LiteRT's aarch64 int8 kernels (XNNPACK) depend on the
shapes, not on the weights' values, so untrained architectures are enough:
MobileNetV2 alpha 0.35 at 96x96 (the model of ``structured.py``), and the
channel-pruned architectures ``structured.py`` trains, rebuilt by
``tfedge.channel_prune`` from the channel counts alone:

* ``uniform m16``: one fraction for every group, kept channels in multiples
  of 16 (``fraction_for_macs(model, 0.5, multiple=16)``), the recipe so far;
* ``uniform m8``: the same in multiples of 8 (the stem can then drop to 8);
* ``early harder m16``: the expansions of blocks 1-10 (48x48 to 12x12
  inputs) held at their own fraction (2/3 of blocks 1-6 and 7/9 of blocks
  7-10 removed) and the final 1x1 conv (3x3 input) whole, the other groups
  solved for the same MACs
  (``fractions_for_macs(model, 0.5, fixed=EARLY_HARDER, multiple=16)``).

For each: the int8 model's instructions on rpi4 (Cortex-A72, no dotprod) and
rpi5 (Cortex-A76, dotprod), and per stage (the difference of the counts of
the model cut after that stage and after the previous one: LiteRT runs every
prefix's ops in the same kernels) with its MACs.

    python benchmarks/structured_instructions.py [--out ...]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tfedge  # noqa: E402
from tfedge import channel_prune, channels, keras  # noqa: E402
from tfedge.report import format_table, write_json  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from structured import digits_at, mobilenet_v2  # noqa: E402

TARGETS = ["rpi4", "rpi5"]
DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                           "structured_instructions.json")
# the model cut after each stage: (stage, last layer, resolution of its input)
STAGES = [("stem conv 3->16", "Conv1_relu", "96x96"),
          ("expanded_conv (dw + 1x1 16->8)", "expanded_conv_project_BN", "48x48"),
          ("blocks 1-2 (8 ch)", "block_2_add", "48x48 -> 24x24"),
          ("blocks 3-5 (16 ch)", "block_5_add", "24x24 -> 12x12"),
          ("blocks 6-12 (24-32 ch)", "block_12_add", "12x12 -> 6x6"),
          ("blocks 13-16 (56-112 ch)", "block_16_project_BN", "6x6 -> 3x3"),
          ("head (1x1 to 1280, pool, dense)", "predictions", "3x3")]
# expansions at 48x48-24x24-12x12 inputs (blocks 1-6) kept at 1/3, blocks 7-10 (6x6) at
# 2/9; the last 1x1 conv (the cheapest instructions per MAC) whole
EARLY_HARDER = {**{f"block_{b}_expand": 0.67 for b in range(1, 7)},
                **{f"block_{b}_expand": 0.78 for b in range(7, 11)}, "Conv_1": 0.0}


def architecture(dense: Any, fractions: dict[str, float], multiple: int) -> Any:
    """The rebuilt narrow model for per-group fractions (keyed by first producer)."""
    graph = channels.analyze(dense)
    by_index = {i: fractions.get(g.producers[0], 0.0) for i, g in enumerate(graph.groups)}
    removed = channel_prune.select_removed(graph, channel_prune.channel_scores(graph),
                                           by_index, set(), multiple)
    return channel_prune.rebuild(graph, removed)


def count(model: Any, calibration: Any) -> dict[str, int]:
    report = tfedge.bench(tfedge.convert(model, calibration), target=TARGETS, runs=1,
                          warmup=0, emulation_runs=1)
    return {t: report.target(t).instructions for t in TARGETS}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--macs", type=float, default=0.5)
    parser.add_argument("--out", default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    start = time.time()
    (x, _), _ = digits_at(96)
    calibration = x[:100]
    keras.utils.set_random_seed(0)
    dense = mobilenet_v2(0.35, "dense")
    base_macs = channels.keras_macs(dense)
    plans = {"dense": ({}, 1)}
    for multiple in (16, 8):
        fraction, _ = channel_prune.fraction_for_macs(dense, args.macs, multiple=multiple)
        groups = channels.analyze(dense).groups
        plans[f"uniform m{multiple}"] = ({g.producers[0]: fraction for g in groups
                                         if g.prunable}, multiple)
    plan, _ = channel_prune.fractions_for_macs(dense, args.macs, fixed=EARLY_HARDER,
                                               multiple=16)
    plans["early harder m16"] = (plan, 16)

    results, rows = {}, []
    for name, (fractions, multiple) in plans.items():
        model = dense if name == "dense" else architecture(dense, fractions, multiple)
        stages, previous = [], {"macs": 0, **{t: 0 for t in TARGETS}}
        for stage, layer, resolution in STAGES:
            cut = keras.Model(model.input, model.get_layer(layer).output)
            cumulative = {"macs": channels.keras_macs(cut), **count(cut, calibration)}
            stages.append({"stage": stage, "last_layer": layer, "resolution": resolution,
                           "output_shape": list(cut.output.shape[1:]),
                           **{k: cumulative[k] - previous[k] for k in cumulative}})
            previous = cumulative
            print(f"[{name}] {stage}: {stages[-1]}", file=sys.stderr, flush=True)
        results[name] = {"fractions": fractions, "multiple": multiple,
                         "macs": previous["macs"], "macs_ratio": previous["macs"] / base_macs,
                         "instructions": {t: previous[t] for t in TARGETS},
                         "channels": [int(getattr(layer, "filters", 0)) for layer in model.layers
                                      if isinstance(layer, keras.layers.Conv2D)
                                      and not isinstance(layer, keras.layers.DepthwiseConv2D)],
                         "stages": stages}
    dense_counts = results["dense"]["instructions"]
    for name, r in results.items():
        r["instruction_ratios"] = {t: r["instructions"][t] / dense_counts[t] for t in TARGETS}
        rows.append([name, r["macs"], f"{r['macs_ratio']:.3f}x"]
                    + [f"{r['instructions'][t]:,} ({r['instruction_ratios'][t]:.3f}x)"
                       for t in TARGETS])
    print(format_table(["architecture", "MACs", "MACs x"] + [f"{t} instr" for t in TARGETS],
                       rows, title="MobileNetV2 0.35/96 int8, emulated instructions"))
    stage_rows = []
    for i, (stage, _, resolution) in enumerate(STAGES):
        stage_rows.append([stage, resolution] + [
            f"{results[n]['stages'][i]['macs']:,} / {results[n]['stages'][i]['rpi4']:,} / "
            f"{results[n]['stages'][i]['rpi5']:,}" for n in results])
    print(format_table(["stage", "input"] + [f"{n}: MACs / rpi4 / rpi5" for n in results],
                       stage_rows, title="Per stage"))
    write_json(args.out, {"settings": {"macs": args.macs, "early_harder": EARLY_HARDER,
                                       "targets": TARGETS},
                          "architectures": results, "seconds": time.time() - start})
    print(f"wrote {args.out} ({time.time() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
