"""tfedge recipes: whole pipelines you run, read and copy.

Each recipe goes data -> train (float, or from ImageNet weights) -> prune /
QAT / distill as flagged -> full-int8 convert -> validate in LiteRT ->
benchmark -> export, and leaves in ``tflite_models/<name>/`` the ``.tflite``,
its model card, labels and a short report for the team that ships it.

* :mod:`recipes.classifier`: MobileNetV2 / MobileNetV3-Small (keras.applications)
  and a small CNN; ``python -m recipes.classifier --help``.
* :mod:`recipes.detector`: a YOLO-style single-stage detector with shared
  float post-processing and COCO mAP; ``python -m recipes.detector --help``.
* :mod:`recipes.data`: the offline default datasets (digits, generated shapes)
  and the ``tensorflow_datasets`` loaders.

Run them from the repository root (``python -m recipes.classifier``).

Quiet by default: TensorFlow's C++ start-up lines (oneDNN, CUDA,
cpu_feature_guard) are hidden: ``TF_CPP_MIN_LOG_LEVEL`` is set to 2 here and
TensorFlow imported through ``tfedge._quiet``, before any recipe imports it;
``--verbose 1`` or ``--verbose 2`` brings them back, and a level set in the
environment is kept. Keras' progress output is not affected.
"""

import os
import sys


def _verbose_requested(argv: list[str]) -> bool:
    """Whether the command line asks for ``--verbose`` 1 or 2."""
    for i, arg in enumerate(argv):
        value = (arg.split("=", 1)[1] if arg.startswith("--verbose=")
                 else argv[i + 1] if arg == "--verbose" and i + 1 < len(argv) else None)
        if value is not None:
            return value.strip() not in ("0", "")
    return False


if not _verbose_requested(sys.argv[1:]):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tfedge import _quiet  # noqa: E402  (imports no TensorFlow itself)

_quiet.import_tensorflow()  # every recipe needs it: import it now, held to the level
