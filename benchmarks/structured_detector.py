"""``structured.py --detector``: the recipe's detector, dense, channel-pruned and scratch.

The YOLO-style detector of ``recipes.detector`` on generated shapes
(``recipes.data.load_detection("shapes")``), trained dense, channel-pruned
to ~0.5x MACs with distillation, and trained from scratch at the nearest
width; scored by COCO mAP@0.5 of the int8 TFLite body
(``structured_detector.json``). Imports nothing of ``structured.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tfedge  # noqa: E402
from tfedge import channel_prune, channels, keras  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from structured_models import TARGETS, bench_fields, progress  # noqa: E402

# The rebuilt fine-tune's peak learning rate, times the dense one (--detector-rebuilt-lr).
REBUILT_LR = 0.25


def plan_label(spec: dict) -> str:
    """``{"instructions": 0.55, "target": ["rpi4", "rpi5"]}`` -> ``"instructions=0.55 on rpi4+rpi5"``."""
    where = spec.get("target")
    where = "+".join(where) if isinstance(where, list) else where
    rest = ", ".join(f"{k}={v}" for k, v in spec.items() if k != "target")
    return rest + (f" on {where}" if where and "instructions" in spec else "")


def run_detector(args: argparse.Namespace) -> tuple[list[dict], dict]:
    """The recipe's YOLO-style detector (``recipes.detector``) on generated shapes.

    Dense (``--detector-epochs``), channel-pruned to ~0.5x MACs (gradual
    masking, rebuild, fine-tune of the narrow model, both distilled from the
    dense model: ``DistillConfig(outputs={"boxes": "mse", "scores": "bce"})``,
    once per ``--detector-multiples`` channel multiple), and the same
    architecture at the width nearest the first pruned model's MACs trained
    from scratch for the pruned model's whole epoch budget. Scored by COCO mAP of the int8
    TFLite body with the recipe's float post-processing.

    ``--detector-plan SPEC`` adds per-group plans: ``tfedge.plan_channels`` on
    the dense model with ``evaluate=`` its float mAP@0.5 on 300 validation
    images (generated apart from the training and test images), then trained
    like the uniform variants; ``--detector-plan-bn N`` plans with
    ``recalibrate_bn=N`` (one plan per value) and ``--detector-rebuilt-lr R``
    trains each plan's rebuilt model from ``R`` x the dense learning rate (one
    variant per value). ``--detector-scratch-shape`` trains each plan's
    rebuilt architecture from a fresh initialization for the same whole budget,
    plain and distilled from the dense model (scratch at exactly its MACs), and
    the uniform-width scratch at the width nearest the plan's MACs.
    ``--seed`` seeds the training (the data stay the same).
    """
    from recipes import common as recipe_common
    from recipes import data as data_lib
    from recipes import detector

    size, epochs, lr = 96, args.detector_epochs, 4e-3
    seed = args.seed
    prune_epochs, rebuilt = args.detector_prune_epochs, args.detector_rebuilt_epochs
    data = data_lib.load_detection("shapes", input_size=size, num_train=args.detector_train,
                                   num_test=300, seed=0)
    anchors = detector.make_anchors(size, anchor_scale=3.0)
    train = detector.training_dataset(data, anchors, 32, seed)
    steps = -(-data.num_train // 32)
    log = progress("detector")

    def build(width, name):
        return detector.build_detector(data.num_classes, input_size=size, width=width,
                                       anchor_scale=3.0, name=name)

    def train_(model, n, peak):
        detector.compile_detector(model, anchors, recipe_common.cosine_schedule(peak, n * steps))
        model.fit(train, epochs=n, steps_per_epoch=steps, verbose=0)
        return model

    keras.utils.set_random_seed(seed)
    dense = train_(build(1.0, "detector_dense"), epochs, lr)
    dense_macs = channels.keras_macs(dense)
    variants = {"dense int8": (dense, f"width 1.0, {epochs} epochs from scratch")}
    log("dense trained")
    # boxes: box numbers (regression) -> mse; scores: class logits trained with a sigmoid
    # focal loss -> bce (binary KL of the sigmoids at T)
    # --detector-box-mask t: the boxes' mse only on the anchors the teacher scores above t
    # (the background anchors' box numbers are never trained by the recipe's GIoU loss)
    def distill_config(box_mask):
        masks = {"output_masks": {"boxes": "scores"}, "mask_threshold": box_mask}
        return tfedge.DistillConfig(temperature=args.detector_temperature,
                                    alpha=args.detector_alpha,
                                    outputs={"boxes": "mse", "scores": "bce"},
                                    output_weights={"scores": args.detector_score_weight},
                                    **(masks if box_mask else {}))

    def distill_note(box_mask):
        boxes = (f"boxes mse on the anchors the teacher scores > {box_mask:g}"
                 if box_mask else "boxes mse")
        return (f"{boxes}, scores bce at T={args.detector_temperature:g}, score weight "
                f"{args.detector_score_weight:g}, alpha {args.detector_alpha:g}")

    def prune_and_tune(fraction, multiple, distill, fractions=None, rebuilt_lr=REBUILT_LR):
        """Gradual masking (teacher "self"), rebuild, then the narrow model's fine-tune
        distilled from the dense model (peak ``rebuilt_lr`` x the dense learning rate):
        (pruned model, its channel report)."""
        keras.utils.set_random_seed(seed)
        edge = train_(tfedge.wrap(dense, prune=tfedge.PruneConfig(
            fraction, structure="channel", end_epoch=prune_epochs, importance=args.importance,
            channel_multiple=multiple, fractions=fractions), teacher="self", distill=distill),
            prune_epochs, lr / 10)
        tuned = tfedge.wrap(edge.finish(), teacher=dense, distill=distill)
        return train_(tuned, rebuilt, lr * rebuilt_lr).finish(), edge.channel_report().to_dict()

    def recipe(rebuilt_lr=REBUILT_LR):
        return (f"+{prune_epochs} prune (lr {lr / 10:g}) + {rebuilt} rebuilt fine-tune epochs "
                f"(lr {lr * rebuilt_lr:g}, cosine), both distilled from the dense model")

    total = epochs + prune_epochs + rebuilt
    channel_reports, reached_ratios = {}, []
    runs = [(m, b) for m in args.detector_multiples for b in args.detector_box_mask
            if not args.detector_no_uniform]
    for multiple, box_mask in runs:
        # the reachable MAC ratio nearest 0.5 (multiples of 8 jump from 0.31x to 0.54x)
        options = []
        for target in (0.5, 0.55):
            with contextlib.suppress(ValueError):
                options.append(channel_prune.fraction_for_macs(dense, target, multiple=multiple))
        fraction, reached = min(options, key=lambda fr: abs(fr[1] - 0.5))
        pruned, report = prune_and_tune(fraction, multiple, distill_config(box_mask))
        name = (f"channel {reached:.2f}x MACs, multiples of {multiple}, distilled"
                + (f", boxes masked > {box_mask:g}" if box_mask else ""))
        variants[name] = (
            pruned, f"fraction {fraction:.3f} ({args.importance}, multiples of {multiple}); "
            f"{recipe()} ({distill_note(box_mask)}); {total} epochs in all")
        channel_reports[name] = report
        reached_ratios.append(reached)
        log(f"channel pruned (multiple {multiple}, fraction {fraction:.3f}, reached "
            f"{reached:.3f}x)")

    plans, shapes = {}, []
    multiple, box_mask = args.detector_multiples[0], args.detector_box_mask[0]
    if args.detector_plan:
        # validation images generated apart from the training (seed 0) and test (10000) ones
        val = data_lib.load_detection("shapes", input_size=size, num_train=1, num_test=300,
                                      seed=7)

        def val_map50(model):
            return detector.evaluate(model.predict(val.test_images, batch_size=64, verbose=0),
                                     val, anchors)["map50"]

        for spec, recalibrate in ((p, n) for p in args.detector_plan
                                  for n in args.detector_plan_bn):
            label = plan_label(spec) + (f" (BN recalibrated on {recalibrate})"
                                        if recalibrate else "")
            t = time.time()
            plan = tfedge.plan_channels(dense, val.test_images, evaluate=val_map50,
                                        multiple=multiple, representative_data=data.x_calib,
                                        recalibrate_bn=recalibrate, **spec)
            seconds = time.time() - t
            log(f"plan_channels({label}) in {seconds:.0f} s:\n{plan}")
            plans[label] = {**plan.to_dict(), "seconds": seconds}
            for rebuilt_lr in args.detector_rebuilt_lr:
                pruned, report = prune_and_tune(max(plan.fractions.values()), multiple,
                                                distill_config(box_mask), fractions=plan,
                                                rebuilt_lr=rebuilt_lr)
                macs = channels.keras_macs(pruned) / dense_macs
                name = (f"plan {label}, {macs:.2f}x MACs, distilled"
                        + (f", rebuilt at {rebuilt_lr:g}x lr" if rebuilt_lr != REBUILT_LR
                           else ""))
                variants[name] = (
                    pruned, f"plan_channels({label}, evaluate=float mAP@0.5 on 300 "
                    f"validation images, multiples of {multiple}), reached {plan.reached:.3f}x; "
                    "per group: " + ", ".join(f"{k} {v:g}" for k, v in plan.fractions.items())
                    + f"; {recipe(rebuilt_lr)} ({distill_note(box_mask)}); {total} epochs in all")
                channel_reports[name] = report
                log(f"{name} trained")
            shapes.append((label, pruned, macs))  # one architecture for every rebuilt lr

    for label, pruned, macs in shapes if args.detector_scratch_shape else ():
        for distilled in (True,) if args.detector_scratch_distilled_only else (False, True):
            keras.utils.set_random_seed(seed)
            model = keras.models.clone_model(pruned)  # its architecture, fresh weights
            name = f"scratch, shape of the {label} plan, {total} epochs"
            if distilled:
                model = train_(tfedge.wrap(model, teacher=dense, distill=distill_config(
                    box_mask)), total, lr).finish()
                name += ", distilled"
            else:
                model = train_(model, total, lr)
            variants[name] = (model, f"the plan's rebuilt architecture ({macs:.3f}x MACs) "
                              f"initialized afresh, {total} epochs from scratch"
                              + (f", distilled from the dense model ({distill_note(box_mask)})"
                                 if distilled else ""))
            log(f"{name} trained")

    targets = reached_ratios[:1]
    targets += [m for _, _, m in shapes] if args.detector_scratch_shape else []
    widths = (0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75)
    width_macs = [(w, channels.keras_macs(build(w, "probe"))) for w in widths]
    for width, macs in dict.fromkeys(
            min(width_macs, key=lambda wm: abs(wm[1] - t * dense_macs)) for t in targets):
        keras.utils.set_random_seed(seed)
        variants[f"scratch {macs / dense_macs:.2f}x MACs, {total} epochs"] = (
            train_(build(width, f"detector_w{width}"), total, lr),
            f"width {width} ({macs / dense_macs:.3f}x MACs), {total} epochs from scratch")
        log(f"scratch width {width} trained")

    artifacts = {n: tfedge.convert(m, data.x_calib) for n, (m, _) in variants.items()}
    report = tfedge.compare(artifacts, target=TARGETS, runs=args.runs, warmup=5,
                            emulation_runs=1)
    rows = []
    for name, bench_report, ratio in zip(artifacts, report.reports, report.ratios()):
        model, note = variants[name]
        int8 = detector.evaluate(tfedge.TFLiteRunner(artifacts[name].content).predict(
            data.test_images, output_names=list(model.output_names)), data, anchors)
        float_ = detector.evaluate(model.predict(data.test_images, batch_size=64, verbose=0),
                                   data, anchors)
        rows.append({"family": "detector", "variant": name, "note": note,
                     "tflite_accuracy": int8["map50"], "keras_accuracy": float_["map50"],
                     "int8_map": int8, "float_map": float_,
                     **bench_fields(artifacts[name], bench_report, ratio)})
    return rows, {"bench": report.to_dict(), "channel_reports": channel_reports,
                  "plans": plans, "num_train": data.num_train,
                  "test_images": len(data.test_images)}
