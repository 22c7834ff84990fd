"""``tfedge.export``: handoff bundles for Android and embedded teams, verified.

A bundle is a folder the receiving team can use as is, whose every claim was
checked in the runtime that team uses:

- :func:`export_android`: ``model.tflite`` with its handoff facts (labels,
  input normalization, input/output quantization, name, version,
  description, signature names) embedded in the flatbuffer's metadata table
  and repeated in ``metadata.json`` for the app to read, ``labels.txt``,
  sample inputs/outputs, and the model card. Checked in LiteRT.
- :func:`export_micro`: ``model.tflite`` as an aligned C array
  (``model_data.cc``/``model_data.h``), ``op_resolver.h`` with a
  ``MicroMutableOpResolver`` sized for exactly the model's ops, the tensor
  arena measured in TensorFlow Lite for Microcontrollers, sample
  inputs/outputs and the model card. TFLM's outputs must equal LiteRT's.
- :func:`check_bundle`: re-validates a bundle (hashes, loading, samples).

Sample outputs come from LiteRT's builtin kernels without its default
XNNPACK delegate: those are the TFLite kernel semantics TFLM implements, and
on the digits CNN TFLM reproduces them bit for bit, while XNNPACK's int8
requantization differs by one step on a few values (11 of 320 there). The
XNNPACK comparison is recorded in the card as information for app teams.
Where LiteRT's optimized builtin kernels round differently from TFLM (on a
MobileNetV3-Small, by up to six steps), a micro bundle is checked against
LiteRT's reference kernels instead (``op_resolver="reference"``), of which
TFLM's kernels are ports; the card says which kernels the samples came from.

The module is the facade and the checker; the bundle writers are one module
each over a shared layer: :mod:`tfedge.handoff` (file names, results,
samples, the LiteRT comparison, the card), :mod:`tfedge.handoff_android` and
:mod:`tfedge.handoff_micro`. The flatbuffer, metadata and TFLM layers are
:mod:`tfedge.flatbuffer`, :mod:`tfedge.metadata` and :mod:`tfedge.micro`.
"""

from __future__ import annotations

import hashlib
import os

from tfedge import card as card_lib
from tfedge import handoff, handoff_android, handoff_micro
from tfedge.artifact import as_artifact
from tfedge.bundle_folder import is_temporary
from tfedge.handoff import Bundle, BundleCheck
from tfedge.handoff_android import export_android
from tfedge.handoff_micro import export_micro

__all__ = ["export_android", "export_micro", "check_bundle", "Bundle", "BundleCheck"]


def check_bundle(bundle_dir: str | os.PathLike) -> handoff.BundleCheck:
    """Re-validates a bundle written by :func:`export_android` or :func:`export_micro`.

    Checks that the folder holds only the files of the card's manifest, that
    every file's sha256 matches the model card, that the model
    loads in LiteRT and reproduces the saved sample outputs, and for Android
    bundles that the embedded metadata equals ``metadata.json`` and
    ``labels.txt``; for micro bundles that the C array holds the model's
    exact bytes, the ops all have TFLM kernels, and TFLM runs the model in
    the recorded arena and reproduces the samples.

    Args:
        bundle_dir: the bundle folder.

    Returns:
        A :class:`BundleCheck`; ``.ok`` is True when every check passed.
        It prints as a table.

    Example:

    >>> report = tfedge.check_bundle("tflite_models/digits/micro")  # doctest: +SKIP
    >>> report.ok  # doctest: +SKIP
    True
    """
    directory = os.fspath(bundle_dir)
    result = handoff.BundleCheck(directory=directory, kind="unknown")
    card = result.guard("model card", card_lib.read_model_card, directory)
    if card is None:
        return result
    facts = card.get("bundle") or {}
    result.kind = facts.get("kind", "unknown")
    if not result.add("model card", result.kind in ("android", "micro"),
                      f"{card.get('name')!r}, {result.kind} bundle"):
        return result

    listed = set(facts.get("files", {})) | {card_lib.CARD_FILENAME}
    extra = sorted(n for n in os.listdir(directory) if n not in listed and not is_temporary(n))
    result.add("only the manifest's files", not extra,
               f"not in the bundle's manifest: {', '.join(extra)} (left by another export? "
               "a bundle folder holds one bundle: export into a new folder)" if extra
               else f"{len(listed)} files, all in the manifest")
    for name, expected in facts.get("files", {}).items():
        path = os.path.join(directory, name)
        if not os.path.exists(path):
            result.add(f"file {name}", False, "missing")
            continue
        digest = handoff.sha256_file(path)
        result.add(f"file {name}", digest == expected["sha256"],
                   "sha256 matches the card" if digest == expected["sha256"]
                   else f"sha256 {digest[:12]}... but the card says {expected['sha256'][:12]}...")

    model_path = os.path.join(directory, handoff.MODEL_FILE)
    content = result.guard("model", lambda: open(model_path, "rb").read())
    if content is None:
        return result
    digest = hashlib.sha256(content).hexdigest()
    described = card.get("sha256") or (card.get("model") or {}).get("sha256")
    result.add("model hash", digest == described, "model.tflite is the model the card "
               "describes" if digest == described else "model.tflite differs from the card")
    artifact = result.guard("model", as_artifact, content)
    if artifact is None:
        return result
    samples = result.guard("samples", handoff.load_samples, directory)
    if samples is not None:
        inputs, saved = samples
        kernels = (facts.get("samples") or {}).get("litert_op_resolver", handoff.REFERENCE_RESOLVER)
        outputs = result.guard("LiteRT", handoff.litert_outputs, content, inputs, kernels)
        if outputs is not None:
            agreement = handoff.compare_outputs(saved, outputs)
            result.add("LiteRT reproduces samples", agreement["equal"], agreement["summary"])

    if result.kind == "android":
        handoff_android.check_android(result, directory, content)
    else:
        handoff_micro.check_micro(result, directory, artifact, facts, samples)
    return result
