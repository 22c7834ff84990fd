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

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tfedge  # noqa: E402
from tfedge import channel_prune, channels, keras  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from structured_models import TARGETS, bench_fields, progress  # noqa: E402


def run_detector(args: argparse.Namespace) -> tuple[list[dict], dict]:
    """The recipe's YOLO-style detector (``recipes.detector``) on generated shapes.

    Dense (the recipe's 20 epochs), channel-pruned to ~0.5x MACs (gradual
    masking, rebuild, fine-tune of the narrow model, both distilled from the
    dense model: ``DistillConfig(outputs={"boxes": "mse", "scores": "bce"})``,
    once per ``--detector-multiples`` channel multiple), and the same
    architecture at the width nearest the first pruned model's MACs trained
    from scratch for the pruned model's whole epoch budget. Scored by COCO mAP of the int8
    TFLite body with the recipe's float post-processing.
    """
    from recipes import common as recipe_common
    from recipes import data as data_lib
    from recipes import detector

    size, epochs, lr = 96, args.detector_epochs, 4e-3
    prune_epochs, rebuilt = args.detector_prune_epochs, args.detector_rebuilt_epochs
    data = data_lib.load_detection("shapes", input_size=size, num_train=args.detector_train,
                                   num_test=300, seed=0)
    anchors = detector.make_anchors(size, anchor_scale=3.0)
    train = detector.training_dataset(data, anchors, 32, 0)
    steps = -(-data.num_train // 32)
    log = progress("detector")

    def build(width, name):
        return detector.build_detector(data.num_classes, input_size=size, width=width,
                                       anchor_scale=3.0, name=name)

    def train_(model, n, peak):
        detector.compile_detector(model, anchors, recipe_common.cosine_schedule(peak, n * steps))
        model.fit(train, epochs=n, steps_per_epoch=steps, verbose=0)
        return model

    keras.utils.set_random_seed(0)
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

    total = epochs + prune_epochs + rebuilt
    channel_reports, reached_ratios = {}, []
    runs = [(m, b) for m in args.detector_multiples for b in args.detector_box_mask]
    for multiple, box_mask in runs:
        distill = distill_config(box_mask)
        box_note = (f"boxes mse on the anchors the teacher scores > {box_mask:g}"
                    if box_mask else "boxes mse")
        # the reachable MAC ratio nearest 0.5 (multiples of 8 jump from 0.31x to 0.54x)
        options = []
        for target in (0.5, 0.55):
            with contextlib.suppress(ValueError):
                options.append(channel_prune.fraction_for_macs(dense, target, multiple=multiple))
        fraction, reached = min(options, key=lambda fr: abs(fr[1] - 0.5))
        keras.utils.set_random_seed(0)
        edge = train_(tfedge.wrap(dense, prune=tfedge.PruneConfig(
            fraction, structure="channel", end_epoch=prune_epochs, importance=args.importance,
            channel_multiple=multiple), teacher="self", distill=distill), prune_epochs, lr / 10)
        tuned = tfedge.wrap(edge.finish(), teacher=dense, distill=distill)
        pruned = train_(tuned, rebuilt, lr / 4).finish()
        name = (f"channel {reached:.2f}x MACs, multiples of {multiple}, distilled"
                + (f", boxes masked > {box_mask:g}" if box_mask else ""))
        variants[name] = (
            pruned, f"fraction {fraction:.3f} ({args.importance}, multiples of {multiple}); "
            f"+{prune_epochs} prune + {rebuilt} rebuilt fine-tune epochs, both distilled from "
            f"the dense model ({box_note}, scores bce at T={args.detector_temperature:g}, score "
            f"weight {args.detector_score_weight:g}, alpha {args.detector_alpha:g}); {total} "
            "epochs in all")
        channel_reports[name] = edge.channel_report().to_dict()
        reached_ratios.append(reached)
        log(f"channel pruned (multiple {multiple}, fraction {fraction:.3f}, reached "
            f"{reached:.3f}x)")
    target = reached_ratios[0] if reached_ratios else 0.5
    width, macs = min(((w, channels.keras_macs(build(w, "probe")))
                       for w in (0.5, 0.55, 0.6, 0.65, 0.7, 0.75)),
                      key=lambda wm: abs(wm[1] - target * dense_macs))
    keras.utils.set_random_seed(0)
    variants[f"scratch {macs / dense_macs:.2f}x MACs, {total} epochs"] = (
        train_(build(width, f"detector_w{width}"), total, lr),
        f"width {width} ({macs / dense_macs:.3f}x MACs), {total} epochs from scratch")
    log("scratch trained")

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
                  "num_train": data.num_train, "test_images": len(data.test_images)}
