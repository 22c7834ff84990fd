"""Where MobileNetV2's int8 instructions go, and channel plans searched by device cost.

No training: instruction counts depend on the channel counts, not on the
weights' values, so untrained rebuilt models are converted (``tfedge.convert``,
full int8, calibrated on digits) and emulated (``tfedge.bench``: LiteRT's
aarch64 build under qemu, exact instructions per inference).

* ``--stages``: instructions per stage of MobileNetV2 0.35/96 (dense, and
  each plan searched): the model truncated after each stage's last layer,
  stage cost = difference of consecutive truncations (the interpreter's
  fixed cost falls in the first stage), beside the stage's MACs.
* ``--search``: candidate plans (stem and early expansions held at larger
  fractions, per-group channel multiples, the other groups solved for the
  MAC target by ``channel_prune.fractions_for_macs``), kept when their MACs
  fall in ``--macs-window``, ranked by the worse of their rpi4 / rpi5
  instruction ratios to dense int8.
* ``--plan JSON [--plan-index N] --factorize LAYER=RANK ...``: one plan of a
  search result, alone and with layers factorized at explicit ranks
  (``LowRankConfig(ranks=)``, one variant per value): MACs, int8 file and
  instructions against dense int8. The plan's Conv_1 (960 channels from 96)
  holds much of its file; low-rank Conv_1 shrinks it
  (``structured_plans_lowrank.json``).

    python benchmarks/structured_plans.py --stages --search
    python benchmarks/structured_plans.py --plan benchmarks/results/structured_plans.json \
        --factorize Conv_1=16 Conv_1=32 Conv_1=48 --out .../structured_plans_lowrank.json
"""

from __future__ import annotations

import argparse
import itertools
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
from structured_models import (FACTORIZE_ARGUMENT, digits_at, mobilenet_v2,  # noqa: E402
                               progress, ranks_label)

TARGETS = ["rpi4", "rpi5"]
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "structured_plans.json")
# (stage, its last layer): 48x48 stem + first block, then per resolution
STAGES = [("stem + block 0 (48x48)", "expanded_conv_project_BN"),
          ("block 1 (48->24)", "block_1_project_BN"),
          ("blocks 2-3 (24x24)", "block_3_project_BN"),
          ("blocks 4-6 (12x12)", "block_6_project_BN"),
          ("blocks 7-13 (6x6)", "block_13_project_BN"),
          ("blocks 14-16 (3x3)", "block_16_project_BN"),
          ("head (Conv_1, pool, logits)", None)]
PROJECTIONS = ["block_6_project", "block_10_project", "block_13_project", "block_16_project"]
EARLY = {"e1": ["block_1_expand", "block_2_expand", "block_3_expand"],
         "e2": ["block_4_expand", "block_5_expand", "block_6_expand"],
         "e3": ["block_7_expand", "block_8_expand", "block_9_expand", "block_10_expand"]}


def stages(model: Any, calibration: Any) -> list[dict[str, Any]]:
    """Instructions and MACs per stage (differences of truncated models)."""
    rows, previous, previous_macs = [], {t: 0 for t in TARGETS}, 0
    for stage, last in STAGES:
        part = model if last is None else keras.Model(model.input, model.get_layer(last).output)
        counts = channel_budget.int8_instructions(part, calibration, TARGETS).instructions
        macs = channels.keras_macs(part)
        rows.append({"stage": stage, "macs": macs - previous_macs,
                     "instructions": {t: counts[t] - previous[t] for t in TARGETS}})
        previous, previous_macs = counts, macs
    total = {t: sum(r["instructions"][t] for r in rows) for t in TARGETS}
    total_macs = sum(r["macs"] for r in rows)
    for r in rows:
        r["macs_share"] = r["macs"] / total_macs
        r["instruction_share"] = {t: r["instructions"][t] / total[t] for t in TARGETS}
    return rows


def print_stages(name: str, rows: list[dict[str, Any]]) -> None:
    print(format_table(
        ["stage", "MACs", "MACs %"] + [f"{t} instr (%)" for t in TARGETS],
        [[r["stage"], r["macs"], f"{100 * r['macs_share']:.1f}"]
         + [f"{r['instructions'][t]:,} ({100 * r['instruction_share'][t]:.1f})"
            for t in TARGETS] for r in rows],
        title=f"int8 instructions per stage: {name}"))


def candidates(model: Any, args: argparse.Namespace):
    """(name, plan, multiple, reached MACs) of the plans searched (the grid of ``args``)."""
    heads = [0.0 if h == "whole" else None for h in args.head]
    grid = itertools.product(args.stem, args.e1, args.e2, args.e3, heads, args.rest,
                             args.early_multiple, args.proj_multiple)
    for stem, e1, e2, e3, head, rest, early_tile, proj_tile in grid:
        fixed = {"Conv1": stem, "Conv_1": head} if head is not None else {"Conv1": stem}
        held = {"e1": e1, "e2": e2, "e3": e3}
        fixed.update({p: held[k] for k, names in EARLY.items() for p in names})
        fixed.update(dict(args.hold))
        multiple = {"Conv1": 8, "*": rest, **{p: proj_tile for p in PROJECTIONS},
                    **{p: early_tile for k in ("e1", "e2") for p in EARLY[k]}}
        try:
            plan, reached = channel_prune.fractions_for_macs(model, args.macs, fixed=fixed,
                                                             multiple=multiple, grid=100)
        except ValueError:
            continue
        if not args.macs_window[0] <= reached <= args.macs_window[1]:
            continue
        name = (f"stem {stem:g}, e1 {e1:g}, e2 {e2:g}, e3 {e3:g}, "
                + "".join(f"{k} {v:g}, " for k, v in args.hold) + "Conv_1 "
                f"{'solved' if head is None else 'whole'}, early x{early_tile}, projections "
                f"x{proj_tile}, rest x{rest}")
        yield name, plan, multiple, reached


def rebuilt(model: Any, plan: dict[str, float], multiple: Any) -> Any:
    graph = channels.analyze(model)
    fractions = {i: plan.get(g.producers[0], 0.0) for i, g in enumerate(graph.groups)}
    removed = channel_prune.select_removed(graph, channel_prune.channel_scores(graph), fractions,
                                           set(), channels.group_multiples(graph, multiple))
    return channel_prune.rebuild(graph, removed)


def measured(model: Any, calibration: Any, dense: dict[str, Any]) -> dict[str, Any]:
    """MACs, int8 file and instructions of ``model``, and their ratios to ``dense``'s."""
    count = channel_budget.int8_instructions(model, calibration, TARGETS)
    ratios = {t: count.instructions[t] / dense["instructions"][t] for t in TARGETS}
    macs = channels.keras_macs(model)
    return {"macs": macs, "macs_ratio": macs / dense["macs"], "size_bytes": count.size_bytes,
            "size_ratio": count.size_bytes / dense["size_bytes"],
            "instructions": count.instructions, "ratios": ratios, "worst": max(ratios.values())}


def log_plan(name: str, macs_ratio: float, row: dict[str, Any]) -> None:
    """One progress line of a plan measured: its MACs, int8 size and instruction ratios."""
    progress("plans")(f"{name}: MACs {macs_ratio:.3f}x, int8 size {row['size_ratio']:.3f}x, "
                      + ", ".join(f"{t} {r:.3f}x" for t, r in row["ratios"].items()))


def evaluate(dense: Any, plan: dict[str, Any], factorize: list[dict[str, int]],
             calibration: Any, base: dict[str, Any]) -> list[dict[str, Any]]:
    """The plan's rebuilt model alone, then with each rank set of ``factorize``."""
    narrow = rebuilt(dense, plan["fractions"], plan["channel_multiple"])
    rows = []
    for ranks in [None] + factorize:
        model, report = narrow, None
        if ranks:
            model, report = lowrank.factorize(narrow, tfedge.LowRankConfig(ranks=ranks))
        name = plan["name"] + (ranks_label(ranks) if ranks else "")
        row = {"name": name, "ranks": ranks, **measured(model, calibration, base),
               "factorization": report.to_dict() if report else None,
               "layers": {k: list(narrow.get_layer(k).kernel.shape) for k in ranks or {}}}
        rows.append(row)
        log_plan(name, row["macs_ratio"], row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", action="store_true", help="Per-stage instructions.")
    parser.add_argument("--search", action="store_true", help="Search plans by device cost.")
    parser.add_argument("--macs", type=float, default=0.51, help="MAC target of the search.")
    parser.add_argument("--macs-window", nargs=2, type=float, default=(0.49, 0.51))
    parser.add_argument("--limit", type=int, default=40, help="Plans emulated at most.")
    grid = parser.add_argument_group("the grid searched (every combination)")
    grid.add_argument("--stem", nargs="+", type=float, default=[0.5],
                      help="Fraction of the stem conv (Conv1, 16 channels at 48x48; channel "
                           "multiple 8).")
    for key, default in (("e1", [0.5, 0.67]), ("e2", [0.5, 0.67]), ("e3", [0.56, 0.67])):
        grid.add_argument(f"--{key}", nargs="+", type=float, default=default,
                          help=f"Fraction of {', '.join(EARLY[key])}.")
    grid.add_argument("--head", nargs="+", choices=("whole", "solved"),
                      default=["whole", "solved"], help="Conv_1 kept whole or solved.")
    grid.add_argument("--rest", nargs="+", type=int, default=[16],
                      help="Channel multiple of the groups not named.")
    grid.add_argument("--hold", nargs="+", default=[], metavar="PRODUCER=FRACTION",
                      type=lambda v: (v.split("=")[0], float(v.split("=")[1])),
                      help="More groups held at a fraction in every plan, e.g. "
                           "block_14_expand=0 (late layers cost few instructions per MAC).")
    grid.add_argument("--proj-multiple", nargs="+", type=int, default=[16],
                      help=f"Channel multiple of the residual groups {', '.join(PROJECTIONS)} "
                           "(24..112 channels at 12x12 and below).")
    grid.add_argument("--early-multiple", nargs="+", type=int, default=[8, 16],
                      help="Channel multiple of the e1 / e2 expansions.")
    parser.add_argument("--plan", default=None, metavar="JSON",
                        help="Evaluate one plan of a --search result (alone and with "
                             "--factorize).")
    parser.add_argument("--plan-index", type=int, default=0,
                        help="Which of --plan's plans (best first).")
    parser.add_argument("--factorize", **FACTORIZE_ARGUMENT,
                        help="With --plan: the plan also factorized at these ranks, one "
                             "variant per value, e.g. Conv_1=32.")
    parser.add_argument("--stage-top", type=int, default=2,
                        help="Per-stage breakdown of the best N plans found.")
    parser.add_argument("--out", default=OUT)
    args = parser.parse_args(argv)
    start = time.time()
    (x, _), _ = digits_at(96)
    calibration = x[:32]
    keras.utils.set_random_seed(0)
    dense = mobilenet_v2(0.35, "mobilenet_v2_dense")
    dense_count = channel_budget.int8_instructions(dense, calibration, TARGETS)
    result: dict[str, Any] = {"dense": {"macs": channels.keras_macs(dense),
                                        "instructions": dense_count.instructions,
                                        "size_bytes": dense_count.size_bytes},
                              "targets": TARGETS, "settings": {
                                  k: v for k, v in vars(args).items() if k != "out"}}
    if args.stages:
        result["dense"]["stages"] = stages(dense, calibration)
        print_stages("MobileNetV2 0.35/96 dense", result["dense"]["stages"])
    if args.search:
        plans = []
        for name, plan, multiple, reached in itertools.islice(
                candidates(dense, args), args.limit):
            row = measured(rebuilt(dense, plan, multiple), calibration, result["dense"])
            plans.append({"name": name, "fractions": plan, "channel_multiple": multiple,
                          **row})
            log_plan(name, reached, row)
        plans.sort(key=lambda p: p["worst"])
        for p in plans[:args.stage_top] if args.stages else ():
            p["stages"] = stages(rebuilt(dense, p["fractions"], p["channel_multiple"]),
                                 calibration)
            print_stages(p["name"], p["stages"])
        result["plans"] = plans
        print(format_table(["plan", "MACs x", "size x"] + [f"{t} instr x" for t in TARGETS],
                           [[p["name"], f"{p['macs_ratio']:.3f}", f"{p['size_ratio']:.3f}"]
                            + [f"{p['ratios'][t]:.3f}" for t in TARGETS] for p in plans],
                           title="channel plans by emulated int8 instructions (untrained, "
                                 "ratios to dense int8)"))
    if args.plan:
        with open(args.plan) as f:
            plan = json.load(f)["plans"][args.plan_index]
        result["evaluated"] = evaluate(dense, plan, args.factorize, calibration,
                                       result["dense"])
        print(format_table(["variant", "MACs x", "size x"] + [f"{t} instr x" for t in TARGETS],
                           [[r["name"], f"{r['macs_ratio']:.3f}", f"{r['size_ratio']:.3f}"]
                            + [f"{r['ratios'][t]:.3f}" for t in TARGETS]
                            for r in result["evaluated"]],
                           title="plan and low-rank factorization (untrained, ratios to "
                                 "dense int8)"))
    result["seconds"] = time.time() - start
    write_json(args.out, result)
    print(f"wrote {os.path.relpath(args.out)} ({result['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
