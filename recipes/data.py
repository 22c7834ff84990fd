"""Datasets for the recipes: offline defaults and real ``tensorflow_datasets`` loaders.

Every loader returns images as float32 RGB in [0, 1] (pixel / 255), which is
what the recipes' models take, so a phone feeding uint8 pixels needs only the
model's own input quantization (scale 1/255).

Classification:
    * ``digits`` (default, offline): scikit-learn's 1,797 real handwritten
      digits, upsampled from 8x8 and tiled to RGB.
    * ``tf_flowers``, ``cifar10``, ``imagenette`` (or any tfds image
      classification set with ``image`` and ``label``): loaded with
      ``tfds.load``; they are downloaded by tfds itself the first time, so
      they need a machine that can reach the datasets' hosts.

Detection:
    * ``shapes`` (default, offline): generated circles, squares and triangles
      on textured backgrounds, with exact boxes.
    * ``voc`` (``voc/2007``) and ``coco`` (``coco/2017``) through tfds.

Boxes everywhere are ``[ymin, xmin, ymax, xmax]`` as fractions of the image
(the tfds and TFLite ``DetectionPostProcess`` convention).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import tensorflow as tf

from tfedge.data import DIGIT_LABELS, load_digits

CLASSIFICATION_DATASETS = ("digits", "tf_flowers", "cifar10", "imagenette")
DETECTION_DATASETS = ("shapes", "voc", "coco")
SHAPE_LABELS = ["circle", "square", "triangle"]

# tfds names and (train, test) splits of the real datasets.
_TFDS_CLASSIFICATION = {
    "tf_flowers": ("tf_flowers", "train[:85%]", "train[85%:]"),
    "cifar10": ("cifar10", "train", "test"),
    "imagenette": ("imagenette/160px", "train", "validation"),
}
_TFDS_DETECTION = {
    "voc": ("voc/2007", "train+validation", "test"),
    "coco": ("coco/2017", "train", "validation"),
}


def _tfds():
    try:
        import tensorflow_datasets as tfds
    except ImportError as err:
        raise ImportError("Real datasets are loaded with tensorflow-datasets: "
                          "pip install 'tfedge[recipes]' (or tensorflow-datasets).") from err
    return tfds


# ----------------------------------------------------------------------------
# Classification
# ----------------------------------------------------------------------------
@dataclasses.dataclass
class ClassificationData:
    """A classification dataset ready for a recipe.

    Attributes:
        name: dataset name.
        train: ``tf.data.Dataset`` of batched, augmented ``(image, label)``.
        steps_per_epoch: batches in one pass over ``train``.
        x_calib: unaugmented training images for int8 calibration.
        x_test, y_test: held-out images (float32, [0, 1]) and int labels.
        labels: class names in output order.
        input_size: image height and width.
    """

    name: str
    train: tf.data.Dataset
    steps_per_epoch: int
    x_calib: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    labels: list[str]
    input_size: int

    @property
    def num_classes(self) -> int:
        return len(self.labels)


def augment_image(image: tf.Tensor, *, flip: bool, pad_fraction: float = 0.125,
                  pad_mode: str = "REFLECT") -> tf.Tensor:
    """Random shift (pad and crop back) and optional horizontal flip, in tf.data.

    Args:
        image: one [H, W, C] image.
        flip: also flip left-right at random.
        pad_fraction: largest shift, as a fraction of the image size.
        pad_mode: ``tf.pad`` mode of the border: ``"REFLECT"`` for photos,
            ``"CONSTANT"`` (zeros) for digits on a black background.
    """
    size = tf.shape(image)[0]
    pad = tf.cast(tf.cast(size, tf.float32) * pad_fraction, tf.int32)
    padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]], mode=pad_mode)
    image = tf.image.random_crop(padded, tf.shape(image))
    if flip:
        image = tf.image.random_flip_left_right(image)
    return image


def digits_rgb(x: np.ndarray, size: int) -> np.ndarray:
    """8x8x1 digits in [0, 1] -> ``size`` x ``size`` x 3 (bilinear, gray tiled to RGB)."""
    up = tf.image.resize(x, (size, size), method="bilinear").numpy()
    return np.clip(np.repeat(up, 3, axis=-1), 0.0, 1.0).astype(np.float32)


def _train_pipeline(ds: tf.data.Dataset, batch_size: int, seed: int, shuffle: int,
                    **augment: Any) -> tf.data.Dataset:
    return (ds.shuffle(shuffle, seed=seed, reshuffle_each_iteration=True)
            .map(lambda x, y: (augment_image(x, **augment), y),
                 num_parallel_calls=tf.data.AUTOTUNE)
            .batch(batch_size).prefetch(tf.data.AUTOTUNE))


def load_classification(name: str = "digits", *, input_size: int = 32, batch_size: int = 32,
                        max_train: int | None = None, max_test: int | None = 2000,
                        seed: int = 0, data_dir: str | None = None) -> ClassificationData:
    """Loads a classification dataset, resized to ``input_size``, in [0, 1].

    The training split of a tfds dataset is streamed (decode, resize,
    shuffle, augment, batch in ``tf.data``); only the test images and 500
    calibration images are held in memory.

    Args:
        name: one of :data:`CLASSIFICATION_DATASETS`.
        input_size: square image size the model takes.
        batch_size: training batch size.
        max_train: keep at most this many training examples (None: all).
        max_test: keep at most this many test examples (None: all).
        seed: shuffling seed.
        data_dir: tfds data directory (tfds' default when None).

    Returns:
        A :class:`ClassificationData`.

    Raises:
        ValueError: unknown dataset name, or an empty split.
    """
    if name == "digits":
        (x_train, y_train), (x_test, y_test) = load_digits(seed=seed)
        x_train, x_test = digits_rgb(x_train, input_size), digits_rgb(x_test, input_size)
        if max_train:
            x_train, y_train = x_train[:max_train], y_train[:max_train]
        if max_test:
            x_test, y_test = x_test[:max_test], y_test[:max_test]
        # a mirrored digit is not the same digit; shift by at most 1 source pixel
        train = _train_pipeline(tf.data.Dataset.from_tensor_slices((x_train, y_train)),
                                batch_size, seed, shuffle=len(x_train), flip=False,
                                pad_fraction=1 / 16, pad_mode="CONSTANT")
        return ClassificationData(
            name=name, train=train, steps_per_epoch=-(-len(x_train) // batch_size),
            x_calib=x_train[:500], x_test=x_test, y_test=y_test.astype(np.int64),
            labels=list(DIGIT_LABELS), input_size=input_size)
    if name not in _TFDS_CLASSIFICATION:
        raise ValueError(f"Unknown classification dataset {name!r}; use one of "
                         f"{', '.join(CLASSIFICATION_DATASETS)}.")
    tfds = _tfds()
    tfds_name, train_split, test_split = _TFDS_CLASSIFICATION[name]

    def read(split, limit):
        ds, info = tfds.load(tfds_name, split=split, as_supervised=True, with_info=True,
                             data_dir=data_dir)
        ds = ds.take(limit) if limit else ds
        return ds.map(lambda x, y: (_resize(x, input_size), y),
                      num_parallel_calls=tf.data.AUTOTUNE), info

    train_ds, info = read(train_split, max_train)
    num_train = int(train_ds.cardinality())
    if num_train < 0:  # unknown: count once
        num_train = int(train_ds.reduce(0, lambda n, _: n + 1))
    x_calib, _ = _to_arrays(train_ds.take(500))
    x_test, y_test = _to_arrays(read(test_split, max_test)[0])
    if num_train == 0 or len(x_test) == 0:
        raise ValueError(f"tfds {tfds_name}: the {train_split} or {test_split} split is empty.")
    train = _train_pipeline(train_ds, batch_size, seed, shuffle=min(num_train, 2000), flip=True)
    return ClassificationData(
        name=name, train=train, steps_per_epoch=-(-num_train // batch_size), x_calib=x_calib,
        x_test=x_test, y_test=y_test, labels=list(info.features["label"].names),
        input_size=input_size)


def _resize(image: tf.Tensor, size: int) -> tf.Tensor:
    """uint8 image of any size -> float32 [size, size, 3] in [0, 1]."""
    image = tf.image.resize(tf.cast(image, tf.float32) / 255.0, (size, size), antialias=True)
    return tf.clip_by_value(image, 0.0, 1.0)


def _to_arrays(ds: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for x, y in ds.batch(256).as_numpy_iterator():
        xs.append(x)
        ys.append(y)
    if not xs:
        return np.zeros((0,), np.float32), np.zeros((0,), np.int64)
    return np.concatenate(xs).astype(np.float32), np.concatenate(ys).astype(np.int64)


# ----------------------------------------------------------------------------
# Detection
# ----------------------------------------------------------------------------
@dataclasses.dataclass
class DetectionData:
    """A detection dataset ready for a recipe.

    Attributes:
        name: dataset name.
        train: unbatched ``tf.data.Dataset`` of ``(image, boxes, classes)``:
            image float32 [S, S, 3] in [0, 1]; boxes [M, 4] and classes [M]
            padded to ``max_objects`` (padding rows have class -1).
        num_train: training images.
        x_calib: training images for int8 calibration.
        test_images: float32 [N, S, S, 3].
        test_boxes: per image, float32 [k, 4] boxes (fractions, yxyx).
        test_classes: per image, int64 [k] classes.
        labels: class names.
        input_size: S.
        max_objects: M.
    """

    name: str
    train: tf.data.Dataset
    num_train: int
    x_calib: np.ndarray
    test_images: np.ndarray
    test_boxes: list[np.ndarray]
    test_classes: list[np.ndarray]
    labels: list[str]
    input_size: int
    max_objects: int

    @property
    def num_classes(self) -> int:
        return len(self.labels)


def _pad_objects(boxes: np.ndarray, classes: np.ndarray, max_objects: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    b = np.zeros((max_objects, 4), np.float32)
    c = np.full((max_objects,), -1, np.int64)
    k = min(len(boxes), max_objects)
    b[:k], c[:k] = boxes[:k], classes[:k]
    return b, c


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A textured background: smooth color noise, a random grating and grain."""
    coarse = rng.uniform(0.0, 1.0, (rng.integers(3, 7), rng.integers(3, 7), 3))
    image = tf.image.resize(coarse[None], (size, size), method="bicubic").numpy()[0]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    angle, period = rng.uniform(0, np.pi), rng.uniform(4, 16)
    grating = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)
    image = 0.6 * image + 0.15 * grating[..., None] * rng.uniform(0, 1, 3)
    image += rng.normal(0, 0.04, image.shape)
    return np.clip(image, 0.0, 1.0).astype(np.float32)


def _shape_mask(kind: int, size: int, cy: float, cx: float, r: float,
                rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    if kind == 0:  # circle
        return (yy - cy) ** 2 + (xx - cx) ** 2 <= r ** 2
    if kind == 1:  # square
        return (np.abs(yy - cy) <= r) & (np.abs(xx - cx) <= r)
    # triangle, randomly rotated: inside all three half-planes
    start = rng.uniform(0, 2 * np.pi)
    angles = start + np.array([0.0, 2 * np.pi / 3, 4 * np.pi / 3])
    vy, vx = cy + r * np.sin(angles), cx + r * np.cos(angles)
    inside = np.ones((size, size), bool)
    for i in range(3):
        j = (i + 1) % 3
        cross = (vx[j] - vx[i]) * (yy - vy[i]) - (vy[j] - vy[i]) * (xx - vx[i])
        inside &= cross >= 0
    return inside


def generate_shapes(num_images: int, size: int = 96, *, max_per_image: int = 4,
                    min_radius: float = 0.06, max_radius: float = 0.22, seed: int = 0
                    ) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """Generates the offline detection set: shapes on textured backgrounds.

    Each image holds 1 to ``max_per_image`` non-overlapping circles, squares
    and triangles (random color and size) on a background of smooth color
    noise, a grating and grain. Boxes are the exact extent of the painted
    pixels.

    Args:
        num_images: images to generate.
        size: image height and width in pixels.
        max_per_image: most objects in one image.
        min_radius: smallest shape radius, as a fraction of ``size``.
        max_radius: largest shape radius, as a fraction of ``size``.
        seed: the same seed gives the same images.

    Returns:
        ``(images, boxes, classes)``: float32 [N, size, size, 3] in [0, 1];
        per image float32 [k, 4] boxes (``[ymin, xmin, ymax, xmax]``
        fractions) and int64 [k] classes indexing :data:`SHAPE_LABELS`.

    Example:

    >>> images, boxes, classes = generate_shapes(2, size=64)
    >>> images.shape, boxes[0].shape[1]
    ((2, 64, 64, 3), 4)
    """
    rng = np.random.default_rng(seed)
    images = np.empty((num_images, size, size, 3), np.float32)
    all_boxes, all_classes = [], []
    for n in range(num_images):
        image = _background(rng, size)
        boxes, classes = [], []
        for _ in range(int(rng.integers(1, max_per_image + 1))):
            for _attempt in range(20):
                r = rng.uniform(min_radius, max_radius) * size
                cy, cx = rng.uniform(r, size - r, 2)
                kind = int(rng.integers(0, len(SHAPE_LABELS)))
                mask = _shape_mask(kind, size, cy, cx, r, rng)
                ys, xs = np.nonzero(mask)
                if len(ys) < 9:
                    continue
                box = np.array([ys.min(), xs.min(), ys.max() + 1, xs.max() + 1], np.float32)
                if any(_overlaps(box, b, margin=2) for b in boxes):
                    continue
                color = rng.uniform(0, 1, 3)
                # keep the shape visible: push its color away from the background's
                local = image[mask].mean(0)
                if np.abs(color - local).max() < 0.35:
                    color = np.where(local > 0.5, local - 0.5, local + 0.5)
                image[mask] = np.clip(color + rng.normal(0, 0.03, (len(ys), 3)), 0, 1)
                boxes.append(box)
                classes.append(kind)
                break
        images[n] = image
        all_boxes.append(np.array(boxes, np.float32).reshape(-1, 4) / size)
        all_classes.append(np.array(classes, np.int64))
    return images, all_boxes, all_classes


def _overlaps(a: np.ndarray, b: np.ndarray, margin: float) -> bool:
    return not (a[2] + margin <= b[0] or b[2] + margin <= a[0] or
                a[3] + margin <= b[1] or b[3] + margin <= a[1])


def _flip_boxes(image: tf.Tensor, boxes: tf.Tensor, classes: tf.Tensor):
    """Random horizontal flip of an image and its (padded) boxes."""
    def flipped():
        ymin, xmin, ymax, xmax = tf.unstack(boxes, axis=-1)
        return tf.image.flip_left_right(image), tf.stack([ymin, 1 - xmax, ymax, 1 - xmin], -1)
    do = tf.random.uniform(()) < 0.5
    image, new_boxes = tf.cond(do, flipped, lambda: (image, boxes))
    new_boxes = tf.where(classes[:, None] >= 0, new_boxes, tf.zeros_like(new_boxes))
    return image, new_boxes, classes


def load_detection(name: str = "shapes", *, input_size: int = 96, num_train: int = 4000,
                   num_test: int = 500, max_objects: int = 8, seed: int = 0,
                   data_dir: str | None = None) -> DetectionData:
    """Loads a detection dataset, images resized to ``input_size`` square.

    Args:
        name: one of :data:`DETECTION_DATASETS`.
        input_size: square image size the model takes.
        num_train: training images (generated, or the first of the tfds split).
        num_test: test images.
        max_objects: objects kept per image (the rest are dropped).
        seed: generation and shuffling seed.
        data_dir: tfds data directory.

    Returns:
        A :class:`DetectionData`. Its ``train`` is unbatched and unshuffled;
        the recipe shuffles, encodes targets and batches it.

    Raises:
        ValueError: unknown dataset name.
    """
    if name == "shapes":
        x_train, b_train, c_train = generate_shapes(num_train, input_size, seed=seed)
        x_test, b_test, c_test = generate_shapes(num_test, input_size, seed=seed + 10_000)
        calib = x_train[:300].copy()
        x_train = np.round(x_train * 255).astype(np.uint8)  # a quarter of the memory
        padded = [_pad_objects(b, c, max_objects) for b, c in zip(b_train, c_train)]
        train = tf.data.Dataset.from_tensor_slices(
            (x_train, np.stack([p[0] for p in padded]), np.stack([p[1] for p in padded])))
        train = train.map(lambda x, b, c: (tf.cast(x, tf.float32) / 255.0, b, c))
        return DetectionData(name, train.map(_flip_boxes), num_train, calib, x_test,
                             b_test, c_test, list(SHAPE_LABELS), input_size, max_objects)
    if name not in _TFDS_DETECTION:
        raise ValueError(f"Unknown detection dataset {name!r}; use one of "
                         f"{', '.join(DETECTION_DATASETS)}.")
    tfds = _tfds()
    tfds_name, train_split, test_split = _TFDS_DETECTION[name]
    builder_info = None

    def read(split, limit):
        nonlocal builder_info
        ds, info = tfds.load(tfds_name, split=split, with_info=True, data_dir=data_dir)
        builder_info = info
        return ds.take(limit).map(lambda ex: _tfds_detection_example(ex, input_size,
                                                                     max_objects),
                                  num_parallel_calls=tf.data.AUTOTUNE)

    # cache the resized images as uint8 (a quarter of float32), once
    train_ds = (read(train_split, num_train)
                .map(lambda x, b, c: (tf.cast(tf.round(x * 255.0), tf.uint8), b, c)).cache()
                .map(lambda x, b, c: (tf.cast(x, tf.float32) / 255.0, b, c)))
    test_images, test_boxes, test_classes = [], [], []
    for image, boxes, classes in read(test_split, num_test).as_numpy_iterator():
        keep = classes >= 0
        test_images.append(image)
        test_boxes.append(boxes[keep])
        test_classes.append(classes[keep])
    calib = np.stack([x for x, _, _ in train_ds.take(300).as_numpy_iterator()])
    labels = list(builder_info.features["objects"]["label"].names)
    num_train = int(train_ds.reduce(0, lambda n, _: n + 1))  # the split may be shorter
    return DetectionData(name, train_ds.map(_flip_boxes), num_train, calib,
                         np.stack(test_images), test_boxes, test_classes, labels, input_size,
                         max_objects)


def _tfds_detection_example(example: dict[str, Any], size: int, max_objects: int):
    """A tfds detection example -> (image [S,S,3] in [0,1], boxes [M,4], classes [M])."""
    image = _resize(example["image"], size)
    objects = example["objects"]
    boxes = tf.reshape(tf.cast(objects["bbox"], tf.float32), (-1, 4))
    classes = tf.cast(objects["label"], tf.int64)
    if "is_crowd" in objects:  # COCO crowd regions are not objects to detect
        keep = tf.logical_not(objects["is_crowd"])
        boxes, classes = tf.boolean_mask(boxes, keep), tf.boolean_mask(classes, keep)
    n = tf.minimum(tf.minimum(tf.shape(boxes)[0], tf.shape(classes)[0]), max_objects)
    boxes, classes = boxes[:n], classes[:n]
    pad = max_objects - n
    boxes = tf.pad(boxes, [[0, pad], [0, 0]])
    classes = tf.pad(classes, [[0, pad]], constant_values=-1)
    boxes = tf.ensure_shape(boxes, (max_objects, 4))
    classes = tf.ensure_shape(classes, (max_objects,))
    return image, boxes, classes
