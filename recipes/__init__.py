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
"""
