"""Object detector recipe: a YOLO-style single-stage detector to a validated int8 TFLite body.

Data -> training (loss and targets below, plain ``keras.Model.fit``) ->
optional prune / QAT / distill fine-tune (one ``tfedge.wrap``) -> full-int8
``tfedge.convert`` of the network body -> the same float post-processing on
the Keras and the TFLite outputs -> COCO mAP (pycocotools) of both ->
``tflite_models/<name>/``.

The default run is offline: generated shapes on textured backgrounds::

    python -m recipes.detector
    python -m recipes.detector --dataset voc --input_size 160 --epochs 60

The network (all ReLU6, conv + BN, so it quantizes well):

* backbone: a stride-2 stem and depthwise-separable stages down to stride 32;
* neck: a small FPN (1x1 laterals, nearest upsampling, sums, a separable conv)
  giving P3, P4, P5 at strides 8, 16 and 32;
* head: per level, a separable conv then 1x1 convs to 4 box numbers and one
  logit per class, for one square anchor per grid cell (size
  ``anchor_scale * stride``).

It follows what made YOLO-style models survive int8 (see FIELD_NOTES):
boxes and scores are **separate** output tensors (each gets its own int8
scale), box numbers are small anchor-relative offsets (SSD's center-size
encoding, the one TFLite's ``DetectionPostProcess`` decodes), and decoding
(exp, sigmoid) and NMS stay out of the int8 body, in :func:`postprocess`,
which runs in float on the host for both models.

Targets: each ground-truth box belongs to the level whose anchor size is
closest (in log scale); the grid cells of that level whose centers are within
one stride of the box center (2-3 per axis) are its positives. Loss: focal
loss on the class logits plus GIoU loss on the decoded boxes of positives,
both normalized by the number of positives.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import os
import sys
from typing import Any, Sequence

import numpy as np
import tensorflow as tf

import tfedge
from tfedge._keras import keras
from tfedge.report import format_table

from recipes import common
from recipes import data as data_lib

STRIDES = (8, 16, 32)
# SSD / TFLite DetectionPostProcess box-encoding scales (y, x, h, w).
BOX_SCALES = (10.0, 10.0, 5.0, 5.0)


# ----------------------------------------------------------------------------
# Anchors and box coding (shared by targets, loss and post-processing)
# ----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Anchors:
    """One square anchor per grid cell per level, in fractions of the image.

    Attributes:
        centers_sizes: float32 [A, 4]: ``(ycenter, xcenter, h, w)`` per anchor,
            in the order of the model's outputs (level by level, row-major).
            This is the anchor table TFLite's ``DetectionPostProcess`` takes.
        strides: float32 [A]: each anchor's level stride, as a fraction.
        level_min: float32 [A]: smallest box size (sqrt of area, fraction)
            the anchor's level is responsible for.
        level_max: float32 [A]: largest such size (exclusive).
    """

    centers_sizes: np.ndarray
    strides: np.ndarray
    level_min: np.ndarray
    level_max: np.ndarray

    def __len__(self) -> int:
        return len(self.centers_sizes)


def make_anchors(input_size: int, strides: Sequence[int] = STRIDES,
                 anchor_scale: float = 4.0) -> Anchors:
    """The anchors of a detector with ``input_size`` square inputs.

    Args:
        input_size: image size in pixels (a multiple of the largest stride).
        strides: the levels' strides in pixels.
        anchor_scale: anchor side in strides.

    Returns:
        An :class:`Anchors`.
    """
    sizes = [anchor_scale * s / input_size for s in strides]
    # level boundaries: geometric means of neighbouring anchor sizes
    bounds = [0.0] + [float(np.sqrt(a * b)) for a, b in zip(sizes, sizes[1:])] + [np.inf]
    rows = []
    for level, stride in enumerate(strides):
        n = input_size // stride
        centers = (np.arange(n, dtype=np.float32) + 0.5) / n
        cy, cx = np.meshgrid(centers, centers, indexing="ij")
        k = n * n
        rows.append(np.stack([cy.ravel(), cx.ravel(), np.full(k, sizes[level]),
                              np.full(k, sizes[level]), np.full(k, stride / input_size),
                              np.full(k, bounds[level]), np.full(k, bounds[level + 1])], -1))
    table = np.concatenate(rows).astype(np.float32)
    return Anchors(table[:, :4], table[:, 4], table[:, 5], table[:, 6])


def decode_boxes(raw: Any, anchors: np.ndarray) -> tf.Tensor:
    """Box numbers -> ``[ymin, xmin, ymax, xmax]`` fractions (SSD center-size coding).

    ``ycenter = ty / 10 * ha + ya``, ``h = exp(th / 5) * ha`` (and the same
    for x, w): exactly what TFLite's ``DetectionPostProcess`` computes with
    scales (10, 10, 5, 5). Used by the loss and by :func:`postprocess`.

    Args:
        raw: [..., A, 4] box numbers ``(ty, tx, th, tw)``.
        anchors: [A, 4] ``(ycenter, xcenter, h, w)``.

    Returns:
        [..., A, 4] float32 boxes.
    """
    raw = tf.cast(raw, tf.float32)
    anchors = tf.constant(anchors, tf.float32)
    ya, xa, ha, wa = tf.unstack(anchors, axis=-1)
    ty, tx, th, tw = tf.unstack(raw, axis=-1)
    sy, sx, sh, sw = BOX_SCALES
    yc, xc = ty / sy * ha + ya, tx / sx * wa + xa
    # clip the log-size so an untrained model cannot overflow exp
    h = tf.exp(tf.clip_by_value(th / sh, -8.0, 4.0)) * ha
    w = tf.exp(tf.clip_by_value(tw / sw, -8.0, 4.0)) * wa
    return tf.stack([yc - h / 2, xc - w / 2, yc + h / 2, xc + w / 2], axis=-1)


def encode_boxes(boxes: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """``[ymin, xmin, ymax, xmax]`` boxes -> box numbers: the inverse of :func:`decode_boxes`.

    Args:
        boxes: [..., A, 4] boxes (fractions) with positive height and width.
        anchors: [A, 4] ``(ycenter, xcenter, h, w)``.

    Returns:
        [..., A, 4] float32 ``(ty, tx, th, tw)``.
    """
    boxes = np.asarray(boxes, np.float64)
    ya, xa, ha, wa = np.moveaxis(np.asarray(anchors, np.float64), -1, 0)
    h = np.maximum(boxes[..., 2] - boxes[..., 0], 1e-6)
    w = np.maximum(boxes[..., 3] - boxes[..., 1], 1e-6)
    yc, xc = boxes[..., 0] + h / 2, boxes[..., 1] + w / 2
    sy, sx, sh, sw = BOX_SCALES
    return np.stack([sy * (yc - ya) / ha, sx * (xc - xa) / wa, sh * np.log(h / ha),
                     sw * np.log(w / wa)], -1).astype(np.float32)


def encode_targets(boxes: tf.Tensor, classes: tf.Tensor, anchors: Anchors,
                   num_classes: int) -> dict[str, tf.Tensor]:
    """One image's padded ground truth -> dense per-anchor training targets.

    Args:
        boxes: [M, 4] ``[ymin, xmin, ymax, xmax]`` fractions (padding rows
            have class -1).
        classes: [M] int class ids, -1 for padding.
        anchors: the model's anchors.
        num_classes: number of classes.

    Returns:
        ``{"boxes": [A, 5], "scores": [A, num_classes]}``: the target box of
        each anchor plus a 0/1 positive flag, and one-hot classes (all zero
        for background anchors).
    """
    boxes = tf.cast(boxes, tf.float32)
    valid = classes >= 0
    gcy = (boxes[:, 0] + boxes[:, 2]) / 2
    gcx = (boxes[:, 1] + boxes[:, 3]) / 2
    size = tf.sqrt(tf.maximum((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), 0.0))
    acy = anchors.centers_sizes[:, 0:1]
    acx = anchors.centers_sizes[:, 1:2]
    stride = anchors.strides[:, None]
    in_level = ((size[None] >= anchors.level_min[:, None])
                & (size[None] < anchors.level_max[:, None]))
    near = (tf.abs(acy - gcy[None]) < stride) & (tf.abs(acx - gcx[None]) < stride)
    match = in_level & near & valid[None]  # [A, M]
    distance = tf.where(match, (acy - gcy[None]) ** 2 + (acx - gcx[None]) ** 2, np.inf)
    best = tf.argmin(distance, axis=1)
    positive = tf.cast(tf.reduce_any(match, axis=1), tf.float32)
    target_boxes = tf.gather(boxes, best)
    target_classes = tf.gather(tf.maximum(classes, 0), best)
    scores = tf.one_hot(target_classes, num_classes) * positive[:, None]
    return {"boxes": tf.concat([target_boxes, positive[:, None]], -1), "scores": scores}


# ----------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------
def _conv_bn(x: Any, filters: int, kernel: int, stride: int, name: str) -> Any:
    x = keras.layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False,
                            name=name)(x)
    x = keras.layers.BatchNormalization(name=name + "/bn")(x)
    return keras.layers.ReLU(6.0, name=name + "/relu6")(x)


def _separable(x: Any, filters: int, stride: int, name: str) -> Any:
    """Depthwise 3x3 + BN + ReLU6, then pointwise 1x1 + BN + ReLU6."""
    x = keras.layers.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False,
                                     name=name + "/dw")(x)
    x = keras.layers.BatchNormalization(name=name + "/dw/bn")(x)
    x = keras.layers.ReLU(6.0, name=name + "/dw/relu6")(x)
    return _conv_bn(x, filters, 1, 1, name + "/pw")


def build_detector(num_classes: int, *, input_size: int = 96, width: float = 1.0,
                   anchor_scale: float = 4.0, name: str = "yolo_edge") -> Any:
    """Builds the YOLO-style detector body (images in [0, 1] -> boxes, scores).

    Args:
        num_classes: object classes.
        input_size: square input size, a multiple of 32.
        width: channel multiplier (model size).
        anchor_scale: anchor side in strides (see :func:`make_anchors`); kept
            on the model as ``model.anchor_scale``.
        name: model name.

    Returns:
        A functional model with two outputs: ``boxes`` [N, A, 4] (anchor-
        relative box numbers, see :func:`decode_boxes`) and ``scores``
        [N, A, num_classes] (class logits).

    Raises:
        ValueError: an input size that is not a multiple of 32.
    """
    if input_size % STRIDES[-1]:
        raise ValueError(f"input_size={input_size} must be a multiple of {STRIDES[-1]} "
                         "(the detector's largest stride), e.g. 96, 128 or 160.")

    def ch(c):
        return max(8, int(round(c * width / 8)) * 8)

    inputs = keras.Input((input_size, input_size, 3), name="image")
    # no input Rescaling: the stem's conv + BN absorb the [0, 1] range, and tfmot's
    # prune-preserving QAT has no config for Rescaling
    x = _conv_bn(inputs, ch(16), 3, 2, "stem")                  # /2
    x = _separable(x, ch(32), 2, "stage1")                      # /4
    x = _separable(x, ch(32), 1, "stage1b")
    c3 = _separable(_separable(x, ch(64), 2, "stage2"), ch(64), 1, "stage2b")      # /8
    c4 = _separable(_separable(c3, ch(96), 2, "stage3"), ch(96), 1, "stage3b")     # /16
    c5 = _separable(_separable(c4, ch(128), 2, "stage4"), ch(128), 1, "stage4b")   # /32

    neck = ch(64)
    p5 = _conv_bn(c5, neck, 1, 1, "fpn/lateral5")
    p4 = keras.layers.Add(name="fpn/sum4")([
        _conv_bn(c4, neck, 1, 1, "fpn/lateral4"),
        keras.layers.UpSampling2D(2, name="fpn/up5")(p5)])
    p4 = _separable(p4, neck, 1, "fpn/p4")
    p3 = keras.layers.Add(name="fpn/sum3")([
        _conv_bn(c3, neck, 1, 1, "fpn/lateral3"),
        keras.layers.UpSampling2D(2, name="fpn/up4")(p4)])
    p3 = _separable(p3, neck, 1, "fpn/p3")

    box_parts, score_parts = [], []
    for level, p in zip((3, 4, 5), (p3, p4, p5)):
        h = _separable(p, neck, 1, f"head{level}")
        cells = (input_size // 2 ** level) ** 2
        b = keras.layers.Conv2D(4, 1, name=f"head{level}/box")(h)
        s = keras.layers.Conv2D(num_classes, 1, name=f"head{level}/cls",
                                bias_initializer=keras.initializers.Constant(-4.6))(h)
        box_parts.append(keras.layers.Reshape((cells, 4), name=f"head{level}/box_flat")(b))
        score_parts.append(keras.layers.Reshape((cells, num_classes),
                                                name=f"head{level}/cls_flat")(s))
    boxes = keras.layers.Concatenate(axis=1, name="boxes")(box_parts)
    scores = keras.layers.Concatenate(axis=1, name="scores")(score_parts)
    model = keras.Model(inputs, [boxes, scores], name=name)
    model.anchor_scale = anchor_scale
    return model


# ----------------------------------------------------------------------------
# Loss
# ----------------------------------------------------------------------------
def giou(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    """Generalized IoU of ``[ymin, xmin, ymax, xmax]`` boxes, elementwise over [..., 4]."""
    area_a = tf.maximum(a[..., 2] - a[..., 0], 0) * tf.maximum(a[..., 3] - a[..., 1], 0)
    area_b = tf.maximum(b[..., 2] - b[..., 0], 0) * tf.maximum(b[..., 3] - b[..., 1], 0)
    lo = tf.maximum(a[..., :2], b[..., :2])
    hi = tf.minimum(a[..., 2:], b[..., 2:])
    inter = tf.reduce_prod(tf.maximum(hi - lo, 0.0), axis=-1)
    union = area_a + area_b - inter
    iou = inter / tf.maximum(union, 1e-9)
    hull = tf.reduce_prod(tf.maximum(a[..., 2:], b[..., 2:]) - tf.minimum(a[..., :2], b[..., :2]),
                          axis=-1)
    return iou - (hull - union) / tf.maximum(hull, 1e-9)


class BoxLoss(keras.losses.Loss):
    """GIoU loss of the decoded boxes of positive anchors, per image.

    Args:
        anchors: ``Anchors.centers_sizes`` [A, 4].
        weight: loss weight.
    """

    def __init__(self, anchors: np.ndarray, weight: float = 2.0, name: str = "box_loss",
                 **kwargs):
        super().__init__(name=name, **kwargs)
        self.anchors = np.asarray(anchors, np.float32)
        self.weight = float(weight)

    def call(self, y_true, y_pred):
        positive = y_true[..., 4]
        predicted = decode_boxes(y_pred, self.anchors)
        loss = (1.0 - giou(predicted, y_true[..., :4])) * positive
        return self.weight * tf.reduce_sum(loss, -1) / tf.maximum(tf.reduce_sum(positive, -1), 1.0)

    def get_config(self):
        return {**super().get_config(), "anchors": self.anchors.tolist(), "weight": self.weight}


class ScoreLoss(keras.losses.Loss):
    """Focal loss on class logits, summed over anchors, per positive anchor.

    Wraps ``keras.backend.binary_focal_crossentropy`` (alpha 0.25, gamma 2).
    """

    def __init__(self, alpha: float = 0.25, gamma: float = 2.0, name: str = "score_loss",
                 **kwargs):
        super().__init__(name=name, **kwargs)
        self.alpha, self.gamma = float(alpha), float(gamma)

    def call(self, y_true, y_pred):
        focal = keras.backend.binary_focal_crossentropy(
            y_true, y_pred, apply_class_balancing=True, alpha=self.alpha, gamma=self.gamma,
            from_logits=True)
        positives = tf.reduce_sum(y_true, axis=[-2, -1])
        return tf.reduce_sum(focal, axis=[-2, -1]) / tf.maximum(positives, 1.0)

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha, "gamma": self.gamma}


def compile_detector(model: Any, anchors: Anchors, learning_rate: Any) -> None:
    """Compiles a detector (or its EdgeModel) with the detection losses and AdamW."""
    # losses as a list, in output order (boxes, scores)
    model.compile(optimizer=keras.optimizers.AdamW(learning_rate, weight_decay=1e-4),
                  loss=[BoxLoss(anchors.centers_sizes), ScoreLoss()])


# ----------------------------------------------------------------------------
# Post-processing and evaluation (the same for Keras and TFLite outputs)
# ----------------------------------------------------------------------------
@dataclasses.dataclass
class Detections:
    """Detections of a batch of images (padded to ``max_detections``).

    Attributes:
        boxes: float32 [N, K, 4] ``[ymin, xmin, ymax, xmax]`` fractions.
        scores: float32 [N, K].
        classes: int32 [N, K].
        count: int32 [N]: valid detections per image.
    """

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray
    count: np.ndarray


def postprocess(raw_boxes: Any, score_logits: Any, anchors: Anchors, *,
                score_threshold: float = 0.05, iou_threshold: float = 0.5,
                max_detections: int = 100) -> Detections:
    """Decodes the body's outputs and runs per-class NMS, in float.

    The same function turns the Keras model's and the TFLite model's
    (dequantized) outputs into detections, so any difference between them
    comes from the int8 body alone. NMS is TensorFlow's
    ``tf.image.combined_non_max_suppression``; its output layout (boxes,
    classes, scores, count) is that of TFLite's ``DetectionPostProcess``.

    Args:
        raw_boxes: [N, A, 4] box numbers (``boxes`` output).
        score_logits: [N, A, C] class logits (``scores`` output).
        anchors: the model's anchors.
        score_threshold: detections scoring below are dropped.
        iou_threshold: NMS overlap threshold.
        max_detections: detections kept per image.

    Returns:
        :class:`Detections`.
    """
    boxes = decode_boxes(raw_boxes, anchors.centers_sizes)
    scores = tf.sigmoid(tf.cast(score_logits, tf.float32))
    nms = tf.image.combined_non_max_suppression(
        boxes[:, :, None, :], scores, max_output_size_per_class=max_detections,
        max_total_size=max_detections, iou_threshold=iou_threshold,
        score_threshold=score_threshold, clip_boxes=True)
    return Detections(nms.nmsed_boxes.numpy(), nms.nmsed_scores.numpy(),
                      nms.nmsed_classes.numpy().astype(np.int32),
                      nms.valid_detections.numpy().astype(np.int32))


def coco_map(detections: Detections, gt_boxes: Sequence[np.ndarray],
             gt_classes: Sequence[np.ndarray], num_classes: int, image_size: int
             ) -> dict[str, float]:
    """COCO box mAP of detections against ground truth, with pycocotools.

    Args:
        detections: from :func:`postprocess`, one row per image.
        gt_boxes: per image, [k, 4] ``[ymin, xmin, ymax, xmax]`` fractions.
        gt_classes: per image, [k] class ids.
        num_classes: number of classes.
        image_size: pixels per side (boxes are scaled to pixels, so COCO's
            small / medium / large split has its usual meaning).

    Returns:
        ``{"map50_95": ..., "map50": ..., "map75": ...}`` (COCOeval stats 0-2).

    Raises:
        ImportError: pycocotools is missing (``pip install pycocotools``).
    """
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as err:
        raise ImportError("Detection mAP uses pycocotools: pip install pycocotools "
                          "(or pip install 'tfedge[recipes]').") from err

    def xywh(b):
        b = np.asarray(b, np.float64) * image_size
        return [b[1], b[0], b[3] - b[1], b[2] - b[0]]

    images, annotations = [], []
    for i, (boxes, classes) in enumerate(zip(gt_boxes, gt_classes)):
        images.append({"id": i, "width": image_size, "height": image_size})
        for box, cls in zip(boxes, classes):
            x, y, w, h = xywh(box)
            annotations.append({"id": len(annotations) + 1, "image_id": i,
                                "category_id": int(cls) + 1, "bbox": [x, y, w, h],
                                "area": w * h, "iscrowd": 0})
    gt = COCO()
    gt.dataset = {"images": images, "annotations": annotations,
                  "categories": [{"id": c + 1} for c in range(num_classes)]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    rows = []
    for i in range(len(images)):
        for k in range(int(detections.count[i])):
            rows.append([i, *xywh(detections.boxes[i, k]), float(detections.scores[i, k]),
                         int(detections.classes[i, k]) + 1])
    if not rows or not annotations:
        return {"map50_95": 0.0, "map50": 0.0, "map75": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(np.array(rows, np.float64))
        evaluator = COCOeval(gt, dt, "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = [max(0.0, float(s)) for s in evaluator.stats[:3]]  # -1 means "no such boxes"
    return {"map50_95": stats[0], "map50": stats[1], "map75": stats[2]}


def evaluate(outputs: Sequence[np.ndarray], data: data_lib.DetectionData,
             anchors: Anchors) -> dict[str, float]:
    """Post-processes ``[boxes, scores]`` outputs of a model and scores them."""
    detections = postprocess(outputs[0], outputs[1], anchors)
    return coco_map(detections, data.test_boxes, data.test_classes, data.num_classes,
                    data.input_size)


# ----------------------------------------------------------------------------
# The recipe
# ----------------------------------------------------------------------------
def training_dataset(data: data_lib.DetectionData, anchors: Anchors, batch_size: int,
                     seed: int) -> tf.data.Dataset:
    """Shuffled, target-encoded, batched training data for ``fit``."""
    def encode(image, boxes, classes):
        targets = encode_targets(boxes, classes, anchors, data.num_classes)
        return image, (targets["boxes"], targets["scores"])  # in output order

    return (data.train.shuffle(min(data.num_train, 10_000), seed=seed)
            .map(encode, num_parallel_calls=tf.data.AUTOTUNE)
            .batch(batch_size).prefetch(tf.data.AUTOTUNE))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m recipes.detector",
        description="Train a YOLO-style single-stage detector, optionally prune / "
                    "quantization-aware train / distill it, convert its body to a full-int8 "
                    "TFLite model, score the Keras and the TFLite model with the same float "
                    "post-processing and COCO mAP (pycocotools), and write "
                    "tflite_models/<name>/. The defaults run offline on generated shapes.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--dataset", default="shapes", choices=data_lib.DETECTION_DATASETS,
                        help="shapes: generated circles, squares and triangles on textured "
                             "backgrounds with exact boxes (offline). voc / coco: VOC 2007 or "
                             "COCO 2017 through tensorflow_datasets (downloaded by tfds).")
    parser.add_argument("--input_size", type=int, default=96,
                        help="Square input size in pixels, a multiple of 32.")
    parser.add_argument("--width", type=float, default=1.0,
                        help="Channel multiplier of the network (model size).")
    parser.add_argument("--anchor_scale", type=float, default=3.0,
                        help="Anchor side in strides (one square anchor per grid cell).")
    parser.add_argument("--num_train", type=int, default=3000,
                        help="Training images (generated, or the first N of the tfds split).")
    parser.add_argument("--num_test", type=int, default=500, help="Test images.")
    parser.add_argument("--learning_rate", type=float, default=4e-3,
                        help="Peak learning rate (AdamW, cosine decay).")
    common.add_common_flags(parser, epochs=20, batch_size=32, name="<dataset>_detector")
    return parser


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Runs the recipe for parsed flags; returns the measured results."""
    if args.quick:
        args.epochs = min(args.epochs, 1)
        args.finetune_epochs = 2 if args.prune and args.qat else 1
        args.num_train, args.num_test = min(args.num_train, 64), min(args.num_test, 16)
        args.input_size = min(args.input_size, 64)
        args.width = min(args.width, 0.5)
    if args.distill_from:
        raise ValueError("--distill_from is not supported by the detector recipe yet: "
                         "tfedge's distillation matches class logits of one output.")
    keras.utils.set_random_seed(args.seed)
    name = args.name or f"{args.dataset}_detector"
    out_dir = os.path.join(args.output_dir, name)
    timings: dict[str, float] = {}
    cpu: dict[str, float] = {}
    verbose = common.fit_verbosity(args)

    with common.stage(f"data: {args.dataset}", timings, cpu):
        data = data_lib.load_detection(args.dataset, input_size=args.input_size,
                                       num_train=args.num_train, num_test=args.num_test,
                                       seed=args.seed, data_dir=args.data_dir)
        print(f"   {data.num_train} training / {len(data.test_images)} test images, "
              f"{data.num_classes} classes, {args.input_size}x{args.input_size} RGB")

    anchors = make_anchors(args.input_size, anchor_scale=args.anchor_scale)
    with common.stage("model: YOLO-style detector", timings, cpu):
        model = build_detector(data.num_classes, input_size=args.input_size, width=args.width,
                               anchor_scale=args.anchor_scale, name=name)
        print(f"   {model.count_params():,} parameters, {len(anchors)} anchors")

    train = training_dataset(data, anchors, args.batch_size, args.seed)
    steps = -(-data.num_train // args.batch_size)
    with common.stage(f"training: {args.epochs} epochs", timings, cpu):
        compile_detector(model, anchors, common.cosine_schedule(args.learning_rate,
                                                                args.epochs * steps))
        model.fit(train, epochs=args.epochs, verbose=verbose)
        float_map = evaluate(model.predict(data.test_images, batch_size=64, verbose=0),
                             data, anchors)
        print(f"   float mAP@0.5 {float_map['map50']:.3f}, "
              f"mAP@0.5:0.95 {float_map['map50_95']:.3f}")
    if args.save_keras:
        os.makedirs(out_dir, exist_ok=True)
        model.save(os.path.join(out_dir, "keras_model.keras"))

    final, optimizations = model, []
    if common.wants_optimization(args):
        epochs = common.finetune_epochs(args)
        optimizations = [f for f, on in (("prune", args.prune), ("qat", args.qat)) if on]
        with common.stage(f"optimization fine-tune ({', '.join(optimizations)}): "
                          f"{epochs} epochs", timings, cpu):
            edge = common.wrap_for_flags(model, args, epochs)
            compile_detector(edge, anchors, common.cosine_schedule(args.learning_rate / 10,
                                                                   epochs * steps))
            edge.fit(train, epochs=epochs, verbose=verbose)
            final = common.plain_model(edge)

    with common.stage("convert: full-int8 body", timings, cpu):
        artifact = tfedge.convert(final, representative_data=data.x_calib)
        print(f"   {artifact.size_bytes:,} bytes; ops: "
              + ", ".join(f"{k} x{v}" for k, v in artifact.ops.items()))

    with common.stage("validate: Keras vs LiteRT, same post-processing", timings, cpu):
        keras_out = final.predict(data.test_images, batch_size=64, verbose=0)
        tflite_out = tfedge.TFLiteRunner(artifact.content).predict(
            data.test_images, output_names=list(final.output_names))
        keras_map = evaluate(keras_out, data, anchors)
        int8_map = evaluate(tflite_out, data, anchors)
        report = tfedge.validate(artifact, final, data.test_images[:64])
        print(format_table(["model", "mAP@0.5", "mAP@0.5:0.95"],
                           [["Keras (converted from)", keras_map["map50"], keras_map["map50_95"]],
                            ["TFLite int8", int8_map["map50"], int8_map["map50_95"]]]))

    with common.stage("benchmark: tfedge.bench", timings, cpu):
        bench_report = common.benchmark(artifact, args, name)

    results = {
        "name": name, "dataset": args.dataset, "input_size": args.input_size,
        "width": args.width, "epochs": args.epochs, "num_train": data.num_train,
        "test_images": len(data.test_images), "num_classes": data.num_classes,
        "optimizations": optimizations,
        "float_map": float_map, "keras_map": keras_map, "int8_map": int8_map,
        "size_bytes": artifact.size_bytes, "parameters": int(final.count_params()),
        "anchors": len(anchors), "seconds": timings, "cpu_seconds": cpu,
    }
    paths = common.write_outputs(
        out_dir, artifact, name=name, description=_describe(args, data.num_classes),
        labels=data.labels, validation=report, benchmark=bench_report,
        report=_report(results, artifact, args) + common.bench_section(bench_report),
        extra={"recipe": "recipes.detector", "command": common.command_line(),
               "input": "RGB float32 in [0, 1] (pixel / 255)",
               "outputs": {"boxes": "[1, A, 4] (ty, tx, th, tw) relative to anchors.csv, "
                                    "center-size coding with scales y=10, x=10, h=5, w=5 "
                                    "(TFLite DetectionPostProcess)",
                           "scores": "[1, A, classes] logits; sigmoid gives scores"},
               "map": {"keras": keras_map, "int8": int8_map},
               "training": {k: results[k] for k in ("dataset", "input_size", "width",
                                                     "epochs", "num_train", "optimizations")}})
    anchors_path = os.path.join(out_dir, "anchors.csv")
    np.savetxt(anchors_path, anchors.centers_sizes, fmt="%.6f", delimiter=",",
               header="ycenter,xcenter,h,w", comments="")
    paths["anchors"] = anchors_path
    with common.stage("export: Android and micro bundles", timings, cpu):
        results["bundles"] = common.export_bundles(
            artifact, out_dir, which=args.bundles, name=name,
            description=_describe(args, data.num_classes), labels=data.labels,
            sample_inputs=data.test_images[:8], validation=report, benchmark=bench_report)
    if results["bundles"]:
        with open(paths["report"], "a") as f:
            f.write("\n" + "\n".join(common.bundles_section(results["bundles"])))
    results["files"] = paths
    _print_summary(results)
    return results


def _describe(args: argparse.Namespace, num_classes: int) -> str:
    return (f"YOLO-style single-stage detector (width {args.width}, {args.input_size}x"
            f"{args.input_size} RGB input, FPN P3-P5) for {num_classes} classes of "
            f"{args.dataset}; full-int8 TFLite body with separate box and score outputs; "
            "decoding and NMS run on the host.")


def _report(r: dict[str, Any], artifact: Any, args: argparse.Namespace) -> str:
    table = format_table(
        ["model", "mAP@0.5", "mAP@0.5:0.95"],
        [["Keras float (after training)", f"{r['float_map']['map50']:.3f}",
          f"{r['float_map']['map50_95']:.3f}"],
         ["Keras (converted from)", f"{r['keras_map']['map50']:.3f}",
          f"{r['keras_map']['map50_95']:.3f}"],
         ["int8 TFLite (LiteRT)", f"{r['int8_map']['map50']:.3f}",
          f"{r['int8_map']['map50_95']:.3f}"]])
    return "\n".join([
        f"# {r['name']}", "",
        _describe(args, r["num_classes"]), "",
        f"Made by `{common.command_line()}` (tfedge {tfedge.__version__}).", "",
        "## Files", "",
        "- `model.tflite`: the full-int8 network body (int8 input, two int8 outputs).",
        "- `anchors.csv`: one anchor per output row: ycenter, xcenter, h, w (fractions).",
        "- `model_card.json`, `labels.txt` (class names in score-column order).", "",
        "## Input and output", "", "```", common.io_table(artifact), "```", "",
        "Input: RGB image resized to the input size (no letterbox), float pixel / 255 "
        "quantized with the input tensor's scale and zero point.",
        "Outputs, dequantized with their own scales: `boxes` holds (ty, tx, th, tw) per "
        "anchor: ycenter = ty / 10 * h_a + y_a, h = exp(th / 5) * h_a (same for x, w); "
        "`scores` holds class logits (sigmoid -> score). Then per-class NMS (IoU 0.5). "
        "This is TFLite's DetectionPostProcess with scales (10, 10, 5, 5) and the anchors in "
        "anchors.csv (after a LOGISTIC on the scores), so it can also run on the device as "
        "that op.", "",
        f"## mAP on {r['test_images']} held-out images (COCO metric, pycocotools)", "",
        "```", table, "```", "",
        "## Model", "",
        f"- {r['parameters']:,} parameters, {r['size_bytes']:,} bytes as int8 TFLite, "
        f"{r['anchors']} anchors (strides 8, 16, 32).",
        "- ops: " + ", ".join(f"{k} x{v}" for k, v in artifact.ops.items()),
        f"- training: {r['epochs']} epochs on {r['num_train']} images"
        + (f", then {', '.join(r['optimizations'])}" if r["optimizations"] else ""), "",
    ])


def _print_summary(r: dict[str, Any]) -> None:
    rows = [["float mAP@0.5", f"{r['keras_map']['map50']:.3f}"],
            ["int8 mAP@0.5", f"{r['int8_map']['map50']:.3f}"],
            ["float mAP@0.5:0.95", f"{r['keras_map']['map50_95']:.3f}"],
            ["int8 mAP@0.5:0.95", f"{r['int8_map']['map50_95']:.3f}"],
            ["int8 size", f"{r['size_bytes']:,} bytes"],
            ["total time", f"{sum(r['seconds'].values()):.0f} s"],
            ["output", os.path.dirname(r["files"]["tflite"])]]
    print("\n" + format_table(["result", "value"], rows, title=f"== {r['name']} =="))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except (tfedge.TFEdgeError, ValueError, FileNotFoundError) as err:
        print(f"recipes.detector: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
