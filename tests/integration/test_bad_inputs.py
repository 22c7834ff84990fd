"""Bad inputs, as a new user makes them: each gets a clear error, a warning, or just works.

One table (:data:`CASES`) of mistakes across wrap, convert, validate, bench,
export, check and the CLI. Every case states what a good outcome is:

* ``raise``: an exception of ``error`` (a ``tfedge.errors`` class, or the
  builtin ``ValueError``/``TypeError``/``FileNotFoundError`` convention) whose
  message names every word in ``names`` (the argument or file, and the fix);
* ``warn``: a logged warning naming ``names``, no exception;
* ``work``: the call succeeds and ``check`` finds the result right;
* ``cli``: ``tfedge.cli.main`` returns non-zero, prints no traceback, and its
  last stderr line names ``names``; ``forbid`` names work that must not start
  (the paths are checked first).

And for every case: the user's Keras model and the input files are unchanged,
and nothing is written where the failed call would have written.

The same table classifies the current code as clear / cryptic / silent /
lost (``python tests/integration/test_bad_inputs.py`` prints it; ``--json FILE``
saves it)
so the before and after tables of issue 17 come from one harness.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib
import io
import json
import logging as py_logging
import os
import shutil
import sys
import tempfile
import time
import traceback
from typing import Any, Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import tfedge  # noqa: E402
from tfedge import keras  # noqa: E402
from tfedge.data import load_digits  # noqa: E402


# ----------------------------------------------------------------------------
# The environment every case runs in: a tiny trained model and files on disk
# ----------------------------------------------------------------------------
def build_cnn(input_shape=(8, 8, 1), name="tiny_cnn", lambda_layer=False):
    """A few-layer digits CNN (logits); optionally with a Lambda layer in the middle."""
    inputs = keras.Input(input_shape, name="image")
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    if lambda_layer:
        h = keras.layers.Lambda(lambda t: t * 0.5, name="halve")(h)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Flatten()(h)
    outputs = keras.layers.Dense(10, name="logits")(h)
    model = keras.Model(inputs, outputs, name=name)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  ["accuracy"])
    return model


def unpreparable(content: bytes) -> bytes:
    """The model with every op's version set to 99: it parses, but LiteRT cannot prepare it."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    from tfedge import metadata

    model = schema.ModelT.InitFromPackedBuf(content, 0)
    for code in model.operatorCodes:
        code.version = 99
    for buffer in model.buffers or []:
        buffer.__class__ = metadata._AlignedBufferT  # pylint: disable=protected-access
    builder = flatbuffers.Builder(len(content) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


PNG = (b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + b"\x00" * 64)


@dataclasses.dataclass
class Env:
    root: str
    model: Any
    x: np.ndarray
    y: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    art: Any
    other: Any                      # a second artifact (another model)
    good: str                       # good.tflite with its card
    keras_file: str                 # the model as .keras
    bad: str                        # unpreparable.tflite (parses, LiteRT cannot prepare it)
    png_tflite: str                 # a PNG named .tflite
    samples_txt: str                # a text file, not an array
    npy: str                        # x_test[:32] as .npy
    npy_255: str                    # x * 255 as .npy


def make_env(root: str) -> Env:
    (x, y), (x_test, y_test) = load_digits()
    keras.utils.set_random_seed(0)
    model = build_cnn()
    model.fit(x, y, epochs=4, batch_size=64, verbose=0)
    art = tfedge.convert(model, x[:200])
    keras.utils.set_random_seed(1)
    other = tfedge.convert(build_cnn(name="other"), x[:200])
    inputs = os.path.join(root, "inputs")
    os.makedirs(inputs)
    good = art.save(os.path.join(inputs, "good.tflite"))
    keras_file = os.path.join(inputs, "model.keras")
    model.save(keras_file)
    bad = os.path.join(inputs, "unpreparable.tflite")
    with open(bad, "wb") as f:
        f.write(unpreparable(art.content))
    png = os.path.join(inputs, "picture.tflite")
    with open(png, "wb") as f:
        f.write(PNG)
    txt = os.path.join(inputs, "samples.txt")
    with open(txt, "w") as f:
        f.write("not an array\n")
    npy = os.path.join(inputs, "x.npy")
    np.save(npy, x_test[:32])
    npy_255 = os.path.join(inputs, "x255.npy")
    np.save(npy_255, (x[:200] * 255).round())
    return Env(root, model, x, y, x_test, y_test, art, other, good, keras_file, bad, png, txt,
               npy, npy_255)


# ----------------------------------------------------------------------------
# Cases
# ----------------------------------------------------------------------------
@dataclasses.dataclass
class Case:
    name: str
    area: str
    expect: str                           # raise / warn / work / cli
    run: Callable[[Env, str], Any]        # (env, per-case tmp dir) -> result
    names: tuple[str, ...] = ()
    error: type | tuple[type, ...] = Exception
    check: Callable[[Any, Env, str], str | None] | None = None   # "work": problem or None
    setup: Callable[[Env, str], None] | None = None
    outputs: tuple[str, ...] = ()         # paths (in tmp) a failing call must not create
    forbid: tuple = ()                    # "module:attr" (or alternatives) that must not run
    writes: bool = False                  # the case itself writes into tmp (not "lost")
    issue: str = ""                       # where issue 17 lists it


CASES: list[Case] = []


def case(name, area, expect, names=(), **kw):
    def add(fn):
        CASES.append(Case(name, area, expect, fn, tuple(names), **kw))
        return fn
    return add


# -- wrap ------------------------------------------------------------------------
def _fit(edge, e, epochs=1):
    edge.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    edge.fit(e.x[:256], e.y[:256], epochs=epochs, batch_size=64, verbose=0)
    return edge


@case("prune end_epoch beyond the fit", "wrap", "warn", ("end_epoch", "10", "2"),
      issue="2: PruneConfig(end_epoch=10) with fit(epochs=2)")
def _(e, tmp):
    return _fit(tfedge.wrap(e.model, prune=tfedge.PruneConfig(0.5, end_epoch=10)), e, 2)


@case("teacher input shape differs", "wrap", "raise", ("teacher", "(16, 16, 1)", "(8, 8, 1)"),
      error=ValueError, issue="3: teacher whose input shape differs")
def _(e, tmp):
    return _fit(tfedge.wrap(e.model, teacher=build_cnn((16, 16, 1), name="big")), e)


@case("QAT on a model with a Lambda layer", "wrap", "warn", ("halve", "Lambda", "float"),
      issue="3: QAT on a model with a Lambda layer")
def _(e, tmp):
    return _fit(tfedge.wrap(build_cnn(lambda_layer=True), quantize=True), e)


@case("QAT, Lambda layer in skip=", "wrap", "work", issue="3: ... even with skip=[name]",
      check=lambda r, e, t: None if r.qat_plan and "halve" in r.qat_plan.skipped
      else "the Lambda layer is not listed as skipped")
def _(e, tmp):
    return _fit(tfedge.wrap(build_cnn(lambda_layer=True),
                            quantize=tfedge.QATConfig(skip=["halve"])), e)


@case("QAT strict, Lambda layer", "wrap", "raise", ("halve", "strict"),
      error=tfedge.UnsupportedModelError, issue="3: ... whether strict is on or off")
def _(e, tmp):
    return tfedge.wrap(build_cnn(lambda_layer=True), quantize=tfedge.QATConfig(strict=True))


@case("no optimization asked", "wrap", "raise", ("prune", "quantize"), error=ValueError)
def _(e, tmp):
    return tfedge.wrap(e.model)


@case("a string instead of a model", "wrap", "raise", ("str",), error=TypeError)
def _(e, tmp):
    return tfedge.wrap("model.keras", prune=0.5)


@case("final_sparsity outside [0, 1)", "wrap", "raise", ("final_sparsity",), error=ValueError)
def _(e, tmp):
    return tfedge.wrap(e.model, prune=tfedge.PruneConfig(1.5))


@case("distill without a teacher", "wrap", "raise", ("teacher",), error=ValueError)
def _(e, tmp):
    return tfedge.wrap(e.model, distill=tfedge.DistillConfig())


@case("QAT skip names a missing layer", "wrap", "raise", ("no_such_layer",),
      error=tfedge.UnsupportedModelError)
def _(e, tmp):
    return tfedge.wrap(e.model, quantize=tfedge.QATConfig(skip=["no_such_layer"]))


# -- convert -----------------------------------------------------------------------
@case("num_samples=0", "convert", "raise", ("num_samples",), error=ValueError,
      issue="2: num_samples <= 0 is accepted")
def _(e, tmp):
    return tfedge.convert(e.model, e.x[:200], num_samples=0)


@case("num_samples=-5", "convert", "raise", ("num_samples", "-5"), error=ValueError,
      issue="2: num_samples <= 0 is accepted")
def _(e, tmp):
    return tfedge.convert(e.model, e.x[:200], num_samples=-5)


@case("0..255 calibration, 0..1 eval_data", "convert", "warn",
      ("representative_data", "eval_data", "255"),
      issue="2: calibrating a 0..1 model on 0..255 data")
def _(e, tmp):
    return tfedge.convert(e.model, (e.x[:200] * 255).round(), eval_data=(e.x_test, e.y_test))


@case("0..255 calibration, strict", "convert", "raise", ("representative_data", "255"),
      error=ValueError, issue="2: ... or raise under a strict flag")
def _(e, tmp):
    return tfedge.convert(e.model, (e.x[:200] * 255).round(), eval_data=(e.x_test, e.y_test),
                          strict=True)


@case("0..255 calibration, no eval_data", "convert", "warn", ("representative_data", "255"),
      issue="2: calibrating a 0..1 model on 0..255 data")
def _(e, tmp):
    return tfedge.convert(e.model, (e.x[:200] * 255).round())


@case("PNG renamed .tflite", "convert", "raise", ("picture.tflite", "PNG"),
      error=tfedge.UnsupportedModelError, issue="3: convert on a PNG renamed .tflite")
def _(e, tmp):
    return tfedge.convert(e.png_tflite, e.x[:200])


@case("a .tflite file named .keras", "convert", "raise", ("model.keras", "TFLite", "tfedge.load"),
      error=tfedge.UnsupportedModelError, issue="3: judge files by their bytes",
      setup=lambda e, t: shutil.copy(e.good, os.path.join(t, "model.keras")))
def _(e, tmp):
    return tfedge.convert(os.path.join(tmp, "model.keras"), e.x[:200])


@case("missing model file", "convert", "raise", ("nothere.keras",), error=FileNotFoundError)
def _(e, tmp):
    return tfedge.convert(os.path.join(tmp, "nothere.keras"), e.x[:200])


@case("unknown mode", "convert", "raise", ("int4", "int8"), error=ValueError)
def _(e, tmp):
    return tfedge.convert(e.model, e.x[:200], mode="int4")


@case("no representative data", "convert", "raise", ("representative_data",), error=ValueError)
def _(e, tmp):
    return tfedge.convert(e.model)


@case("representative data of the wrong shape", "convert", "raise", ("(8, 8, 1)",),
      error=ValueError)
def _(e, tmp):
    return tfedge.convert(e.model, np.zeros((20, 16, 16, 1), np.float32))


@case("NaN representative data", "convert", "raise", ("NaN",), error=ValueError)
def _(e, tmp):
    x = e.x[:200].copy()
    x[3, 0, 0, 0] = np.nan
    return tfedge.convert(e.model, x)


@case("tolerance without eval_data", "convert", "raise", ("eval_data",), error=ValueError)
def _(e, tmp):
    return tfedge.convert(e.model, e.x[:200], tolerance=0.01)


@case("batch_size=0", "convert", "raise", ("batch_size",), error=ValueError)
def _(e, tmp):
    return tfedge.convert(e.model, e.x[:200], batch_size=0)


@case("directory that is not a SavedModel", "convert", "raise", ("saved_model.pb",),
      error=tfedge.UnsupportedModelError)
def _(e, tmp):
    return tfedge.convert(tmp, e.x[:200])


# -- load / inspect ----------------------------------------------------------------
@case("load: LiteRT cannot prepare the model", "load", "raise", ("unpreparable.tflite", "99"),
      error=tfedge.InvalidModelFileError, issue="2: a flatbuffer LiteRT cannot prepare")
def _(e, tmp):
    return tfedge.load(e.bad)


@case("load: the card's sha256 no longer matches", "load", "warn", ("sha256", "model_card.json"),
      issue="2: a card whose sha256 no longer matches", writes=True,
      setup=lambda e, t: (e.art.save(os.path.join(t, "model.tflite")),
                          open(os.path.join(t, "model.tflite"), "wb").write(e.other.content)))
def _(e, tmp):
    return tfedge.load(os.path.join(tmp, "model.tflite"))


@case("load: a PNG", "load", "raise", ("picture.tflite", "TFL3"),
      error=tfedge.InvalidModelFileError)
def _(e, tmp):
    return tfedge.load(e.png_tflite)


@case("load: a truncated file", "load", "raise", ("cut.tflite", "truncated"),
      error=tfedge.InvalidModelFileError,
      setup=lambda e, t: open(os.path.join(t, "cut.tflite"), "wb").write(e.art.content[:1000]))
def _(e, tmp):
    return tfedge.load(os.path.join(tmp, "cut.tflite"))


@case("load: a directory", "load", "raise", ("directory",), error=tfedge.InvalidModelFileError)
def _(e, tmp):
    return tfedge.load(tmp)


# -- validate -------------------------------------------------------------------------
@case("validate: labels out of range", "validate", "raise", ("y", "12", "10"),
      error=ValueError, issue="2: validate with labels out of range")
def _(e, tmp):
    y = e.y_test.copy()
    y[:5] = 12
    return tfedge.validate(e.art, e.model, e.x_test, y)


@case("validate: NaN inputs", "validate", "raise", ("x", "NaN"), error=ValueError,
      issue="2: validate with NaN inputs")
def _(e, tmp):
    x = e.x_test.copy()
    x[2, 1, 1, 0] = np.nan
    return tfedge.validate(e.art, e.model, x, e.y_test)


@case("validate: 0..255 inputs for a 0..1 model", "validate", "warn", ("x", "255", "range"),
      issue="2: uint8 0..255 inputs for a 0..1 model")
def _(e, tmp):
    return tfedge.validate(e.art, e.model, (e.x_test * 255).astype(np.uint8), e.y_test)


@case("validate: x of the wrong shape", "validate", "raise", ("x", "(8, 8, 1)"),
      error=ValueError, issue="3: validate x of the wrong shape")
def _(e, tmp):
    return tfedge.validate(e.art, e.model, e.x_test.reshape(len(e.x_test), 64), e.y_test)


@case("validate: x as a tf.data.Dataset", "validate", "work",
      issue="3: x as a tf.data.Dataset",
      check=lambda r, e, t: None if r.num_samples == len(e.x_test) and r.agreement > 0.9
      else f"report on {r.num_samples} samples, agreement {r.agreement}")
def _(e, tmp):
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((e.x_test, e.y_test)).batch(32)
    return tfedge.validate(e.art, e.model, ds)


@case("validate: no Keras model", "validate", "raise", ("keras_model",), error=TypeError,
      issue="3: a missing model")
def _(e, tmp):
    return tfedge.validate(e.art, None, e.x_test, e.y_test)


@case("validate: one sample without a batch axis", "validate", "work",
      issue="3: one sample without a batch axis",
      check=lambda r, e, t: None if r.num_samples == 1 else f"{r.num_samples} samples")
def _(e, tmp):
    return tfedge.validate(e.art, e.model, e.x_test[0], e.y_test[:1])


@case("validate: empty x", "validate", "raise", ("x",), error=ValueError)
def _(e, tmp):
    return tfedge.validate(e.art, e.model, e.x_test[:0])


@case("validate: y shorter than x", "validate", "raise", ("x", "y"), error=ValueError)
def _(e, tmp):
    return tfedge.validate(e.art, e.model, e.x_test, e.y_test[:10])


@case("validate: missing .tflite", "validate", "raise", ("gone.tflite",), error=FileNotFoundError)
def _(e, tmp):
    return tfedge.validate(os.path.join(tmp, "gone.tflite"), e.model, e.x_test)


# -- bench ------------------------------------------------------------------------------
@case("bench: compare= one artifact", "bench", "work", issue="3: bench(compare=artifact)",
      check=lambda r, e, t: None if len(getattr(r, "reports", [])) == 2 else repr(type(r)))
def _(e, tmp):
    return tfedge.bench(e.art, compare=e.other, runs=2, warmup=0)


@case("bench: unknown target", "bench", "raise", ("rpi9",), error=ValueError)
def _(e, tmp):
    return tfedge.bench(e.art, target="rpi9", runs=2, warmup=0)


@case("bench: runs=0", "bench", "raise", ("runs",), error=ValueError)
def _(e, tmp):
    return tfedge.bench(e.art, runs=0)


@case("bench: missing file", "bench", "raise", ("gone.tflite",), error=FileNotFoundError)
def _(e, tmp):
    return tfedge.bench(os.path.join(tmp, "gone.tflite"), runs=2, warmup=0)


# -- export ------------------------------------------------------------------------------
@case("export: LiteRT cannot prepare the model", "export", "raise", ("99",),
      error=tfedge.TFEdgeError, outputs=("android",),
      issue="3: export of a file LiteRT cannot prepare")
def _(e, tmp):
    with open(e.bad, "rb") as f:
        content = f.read()
    return tfedge.export_android(content, os.path.join(tmp, "android"))


@case("export: out_dir is an existing file", "export", "raise", ("out_dir", "taken"),
      error=ValueError, writes=True,
      setup=lambda e, t: open(os.path.join(t, "taken"), "w").write("mine\n"))
def _(e, tmp):
    return tfedge.export_android(e.art, os.path.join(tmp, "taken"))


@case("export: wrong number of labels", "export", "raise", ("labels", "3", "10"),
      error=ValueError, outputs=("android",))
def _(e, tmp):
    return tfedge.export_android(e.art, os.path.join(tmp, "android"), labels=["a", "b", "c"])


@case("export: sample_inputs of the wrong shape", "export", "raise",
      ("sample_inputs", "(8, 8, 1)"), error=ValueError, outputs=("micro",))
def _(e, tmp):
    return tfedge.export_micro(e.art, os.path.join(tmp, "micro"),
                               sample_inputs=np.zeros((4, 5, 5, 1), np.float32))


def _android_then_micro(e, tmp):
    tfedge.export_android(e.art, os.path.join(tmp, "bundle"), labels=list("0123456789"),
                          sample_inputs=e.x_test[:4])


def _one_bundle(result, e, tmp):
    directory = os.path.join(tmp, "bundle")
    on_disk = set(os.listdir(directory))
    listed = set(result.files)
    check = tfedge.check_bundle(directory)
    if on_disk != listed:
        return f"stale files beside the micro bundle: {sorted(on_disk - listed)}"
    return None if check.ok else f"check failed: {check}"


@case("export: micro into an Android bundle's folder", "export", "work", writes=True,
      setup=_android_then_micro, check=_one_bundle,
      issue="1: stale metadata.json / labels.txt that check called fine")
def _(e, tmp):
    return tfedge.export_micro(e.art, os.path.join(tmp, "bundle"), sample_inputs=e.x_test[:4])


# -- check ---------------------------------------------------------------------------------
def _bundle_with_stray_file(e, tmp):
    tfedge.export_android(e.art, os.path.join(tmp, "bundle"), sample_inputs=e.x_test[:4])
    with open(os.path.join(tmp, "bundle", "labels.txt"), "w") as f:
        f.write("stale\n")


def _check_flags(*words):
    def check(result, e, tmp):
        text = str(result)
        if result.ok:
            return "check_bundle says the bundle is OK"
        missing = [w for w in words if w.lower() not in text.lower()]
        return f"the report does not name {missing}" if missing else None
    return check


@case("check: a file not in the manifest", "check", "work", setup=_bundle_with_stray_file,
      check=_check_flags("labels.txt"), writes=True,
      issue="1: check_bundle flags files not in the bundle's manifest")
def _(e, tmp):
    return tfedge.check_bundle(os.path.join(tmp, "bundle"))


def _bundle_with_other_model(e, tmp):
    tfedge.export_android(e.art, os.path.join(tmp, "bundle"), sample_inputs=e.x_test[:4])
    with open(os.path.join(tmp, "bundle", "model.tflite"), "wb") as f:
        f.write(e.other.content)


@case("check: model.tflite replaced", "check", "work", setup=_bundle_with_other_model,
      check=_check_flags("model.tflite", "sha256"), writes=True)
def _(e, tmp):
    return tfedge.check_bundle(os.path.join(tmp, "bundle"))


@case("check: no such folder", "check", "work", check=_check_flags("nowhere"))
def _(e, tmp):
    return tfedge.check_bundle(os.path.join(tmp, "nowhere"))


# -- CLI -------------------------------------------------------------------------------------
_CONVERTER = "tensorflow:lite.TFLiteConverter.from_concrete_functions"
_BENCH_HOST = ("tfedge._bench:_run_host", "tfedge.bench:_run_host")
_EXPORT = "tfedge.handoff:litert_outputs"


@case("cli convert -o <directory>", "cli", "cli", ("-o", "directory"), forbid=(_CONVERTER,),
      issue="4: convert -o <directory>")
def _(e, tmp):
    return ["convert", e.keras_file, "-o", tmp, "--representative-data", e.npy]


@case("cli convert -o in a missing folder's file", "cli", "cli", ("--output",),
      forbid=(_CONVERTER,), writes=True,
      setup=lambda e, t: open(os.path.join(t, "blocker"), "w").write("x"))
def _(e, tmp):
    return ["convert", e.keras_file, "-o", os.path.join(tmp, "blocker", "m.tflite"),
            "--representative-data", e.npy]


@case("cli convert --representative-data missing", "cli", "cli",
      ("--representative-data", "nothere.npy"), forbid=(_CONVERTER,))
def _(e, tmp):
    return ["convert", e.keras_file, "-o", os.path.join(tmp, "m.tflite"),
            "--representative-data", os.path.join(tmp, "nothere.npy")]


@case("cli bench --output <directory>", "cli", "cli", ("--output", "directory"),
      forbid=(_BENCH_HOST,), issue="4: bench --output <directory>")
def _(e, tmp):
    return ["bench", e.good, "--runs", "2", "--warmup", "0", "--output", tmp]


@case("cli export --android <existing file>", "cli", "cli", ("--android", "taken"),
      forbid=(_EXPORT,), writes=True, issue="4: export into an existing file",
      setup=lambda e, t: open(os.path.join(t, "taken"), "w").write("mine\n"))
def _(e, tmp):
    return ["export", e.good, "--android", os.path.join(tmp, "taken")]


@case("cli export --samples <not an array>", "cli", "cli", ("--samples", "samples.txt"),
      forbid=(_EXPORT,), issue="4: export --samples <not an array>")
def _(e, tmp):
    return ["export", e.good, "--micro", os.path.join(tmp, "micro"), "--samples", e.samples_txt]


@case("cli export --labels missing", "cli", "cli", ("--labels", "labels.txt"),
      forbid=(_EXPORT,))
def _(e, tmp):
    return ["export", e.good, "--android", os.path.join(tmp, "a"),
            "--labels", os.path.join(tmp, "labels.txt")]


@case("cli convert --num-samples 0", "cli", "cli", ("--num-samples", "0"), forbid=(_CONVERTER,))
def _(e, tmp):
    return ["convert", e.keras_file, "-o", os.path.join(tmp, "m.tflite"),
            "--representative-data", e.npy, "--num-samples", "0"]


@case("cli bench --runs 0", "cli", "cli", ("--runs",), forbid=(_BENCH_HOST,))
def _(e, tmp):
    return ["bench", e.good, "--runs", "0"]


@case("cli export without a bundle flag", "cli", "cli", ("--android", "--micro"))
def _(e, tmp):
    return ["export", e.good]


@case("cli tune --model <not a model>", "cli", "cli", ("--model", "samples.txt"),
      issue="4: tune --model <not a model>")
def _(e, tmp):
    return ["tune", "--model", e.samples_txt, "--max-trials", "1", "--epochs", "1",
            "--directory", os.path.join(tmp, "tune")]


@case("cli inspect: LiteRT cannot prepare it", "cli", "cli", ("unpreparable.tflite",),
      issue="2: ... passes tfedge inspect (exit 0)")
def _(e, tmp):
    return ["inspect", e.bad]


@case("cli inspect: missing file", "cli", "cli", ("gone.tflite",))
def _(e, tmp):
    return ["inspect", os.path.join(tmp, "gone.tflite")]


@case("cli check: not a bundle", "cli", "cli", ())
def _(e, tmp):
    return ["check", tmp]


# ----------------------------------------------------------------------------
# Running and classifying a case
# ----------------------------------------------------------------------------
class _Records(py_logging.Handler):
    def __init__(self):
        super().__init__(py_logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        try:
            self.messages.append(record.getMessage())
        except Exception:  # noqa: BLE001
            self.messages.append(str(record.msg))


@contextlib.contextmanager
def _warnings_logged():
    handler = _Records()
    logger = py_logging.getLogger("absl")
    logger.addHandler(handler)
    try:
        yield handler.messages
    finally:
        logger.removeHandler(handler)


def _snapshot(*roots: str) -> dict[str, str]:
    files = {}
    for root in roots:
        for folder, _, names in os.walk(root):
            for name in names:
                path = os.path.join(folder, name)
                with open(path, "rb") as f:
                    files[path] = hashlib.sha256(f.read()).hexdigest()
    return files


def _weights_digest(model) -> str:
    digest = hashlib.sha256()
    for w in model.get_weights():
        digest.update(np.ascontiguousarray(w).tobytes())
    digest.update(json.dumps(model.get_config(), sort_keys=True, default=str).encode())
    return digest.hexdigest()


class _Forbidden(AssertionError):
    pass


def _resolve(spec: str):
    module_name, attr = spec.split(":")
    try:
        owner = importlib.import_module(module_name)
    except ImportError:
        return None
    *path, last = attr.split(".")
    for part in path:
        owner = getattr(owner, part, None)
        if owner is None:
            return None
    return (owner, last) if hasattr(owner, last) else None


@contextlib.contextmanager
def _forbidden(specs: tuple[str, ...]):
    """Replaces the named functions by ones that fail the case (work before the checks)."""
    patched = []
    for entry in specs:
        group = (entry,) if isinstance(entry, str) else tuple(entry)
        found = [r for r in (_resolve(s) for s in group) if r is not None]
        if not found:
            raise RuntimeError(f"none of {group} exists: update the case's forbid=")
        for owner, attr in found:
            original = (owner.__dict__[attr] if isinstance(owner, type) and attr in owner.__dict__
                        else getattr(owner, attr))

            def refuse(*args, __name=f"{getattr(owner, '__name__', owner)}.{attr}", **kwargs):
                raise _Forbidden(f"{__name} ran before the command line was checked")
            setattr(owner, attr, refuse)
            patched.append((owner, attr, original))
    try:
        yield
    finally:
        for owner, attr, original in reversed(patched):
            setattr(owner, attr, original)


def _run_cli(argv: list[str], forbid: tuple[str, ...]) -> tuple[int, str, bool]:
    """(exit status, stderr, traceback shown) of ``tfedge.cli.main(argv)``, in process."""
    from tfedge import cli

    err, out = io.StringIO(), io.StringIO()
    tb = False
    with _forbidden(forbid), contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            status = cli.main(argv)
        except SystemExit as exit_:
            status = exit_.code if isinstance(exit_.code, int) else 1
        except _Forbidden:
            raise
        except BaseException:  # what a user sees: Python prints the traceback  # noqa: BLE001
            err.write(traceback.format_exc())
            status, tb = 1, True
    text = err.getvalue()
    return status, text, tb or "Traceback (most recent call last)" in text


@dataclasses.dataclass
class Outcome:
    label: str            # clear / cryptic / silent / lost
    detail: str
    seconds: float


def _names_in(text: str, names: tuple[str, ...]) -> list[str]:
    return [n for n in names if n.lower() not in text.lower()]


def classify(c: Case, env: Env) -> Outcome:
    tmp = tempfile.mkdtemp(prefix="case_", dir=env.root)
    if c.setup:
        c.setup(env, tmp)
    before_files = _snapshot(os.path.join(env.root, "inputs"), tmp)
    before_model = _weights_digest(env.model)
    started = time.perf_counter()
    error: BaseException | None = None
    result = None
    with _warnings_logged() as warned:
        if c.expect == "cli":
            try:
                status, stderr, tb = _run_cli(c.run(env, tmp), c.forbid)
            except _Forbidden as err:
                status, stderr, tb = None, f"work started before the checks: {err}", False
        else:
            try:
                result = c.run(env, tmp)
            except Exception as err:  # noqa: BLE001
                error = err
    seconds = time.perf_counter() - started
    after_files = _snapshot(os.path.join(env.root, "inputs"), tmp)
    changed = sorted(p for p in set(before_files) | set(after_files)
                     if before_files.get(p) != after_files.get(p))
    created = [p for p in changed if p not in before_files]
    altered = [p for p in changed if p in before_files]
    lost = []
    if _weights_digest(env.model) != before_model:
        lost.append("the user's model was changed")
    if altered and not c.writes:
        lost.append(f"changed {[os.path.relpath(p, env.root) for p in altered]}")
    if altered and c.writes and any(p.startswith(os.path.join(env.root, "inputs"))
                                    for p in altered):
        lost.append("changed an input file")
    failed_call = c.expect in ("raise", "cli") or error is not None
    if failed_call and not c.writes:
        stray = [os.path.relpath(p, tmp) for p in created]
        if stray:
            lost.append(f"a failed call wrote {stray}")
    for out in c.outputs:
        if failed_call and os.path.exists(os.path.join(tmp, out)) and not c.writes:
            lost.append(f"a failed call left {out}")
    problem = None
    if c.expect == "work" and error is None and c.check is not None and not lost:
        try:
            problem = c.check(result, env, tmp)
        except Exception as err:  # noqa: BLE001
            problem = f"{type(err).__name__}: {err}"
    shutil.rmtree(tmp, ignore_errors=True)
    if lost:
        return Outcome("lost", "; ".join(lost), seconds)

    if c.expect == "cli":
        if status is None:
            return Outcome("cryptic", stderr, seconds)
        lines = [line for line in stderr.strip().splitlines() if line.strip()]
        last = lines[-1] if lines else ""
        if status == 0:
            return Outcome("silent", "exit status 0", seconds)
        if tb:
            return Outcome("cryptic", f"traceback: {last[:160]}", seconds)
        missing = _names_in(last, c.names)
        if missing:
            return Outcome("cryptic", f"stderr does not name {missing}: {last[:160]}", seconds)
        return Outcome("clear", last[:200], seconds)
    if error is not None:
        message = f"{type(error).__name__}: {str(error).strip()}"
        if c.expect != "raise":
            return Outcome("cryptic", message[:200], seconds)
        if not isinstance(error, c.error):
            return Outcome("cryptic", f"not a {getattr(c.error, '__name__', c.error)}: "
                                      f"{message[:200]}", seconds)
        missing = _names_in(str(error), c.names)
        if missing:
            return Outcome("cryptic", f"does not name {missing}: {message[:200]}", seconds)
        return Outcome("clear", message[:200].replace("\n", " "), seconds)
    if c.expect == "raise":
        return Outcome("silent", f"no error; returned {type(result).__name__}", seconds)
    if c.expect == "warn":
        hits = [m for m in warned if not _names_in(m, c.names)]
        if hits:
            return Outcome("clear", "warning: " + hits[0][:200].replace("\n", " "), seconds)
        return Outcome("silent", f"no warning naming {list(c.names)} "
                                 f"({len(warned)} other warning(s))", seconds)
    if problem:
        return Outcome("silent", problem, seconds)
    return Outcome("clear", "works", seconds)


# ----------------------------------------------------------------------------
# The test
# ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return make_env(str(tmp_path_factory.mktemp("bad_inputs")))


def test_the_table_has_the_issues_cases():
    assert len(CASES) >= 60
    assert len({c.name for c in CASES}) == len(CASES)
    assert {c.area for c in CASES} >= {"wrap", "convert", "validate", "bench", "export",
                                       "check", "cli"}
    assert sum(1 for c in CASES if c.issue) >= 25


@pytest.mark.parametrize("c", CASES, ids=[c.name for c in CASES])
def test_bad_input(c, env):
    outcome = classify(c, env)
    assert outcome.label == "clear", f"{c.name}: {outcome.label}: {outcome.detail}"


def test_the_command_prints_one_line_and_the_traceback_only_with_debug(tmp_path):
    """The real ``tfedge`` process: exit status 2, one stderr line; ``--debug``: a traceback."""
    import subprocess

    missing = str(tmp_path / "gone.tflite")
    command = [sys.executable, "-m", "tfedge.cli", "inspect", missing]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    plain = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    debug = subprocess.run(command + ["--debug"], capture_output=True, text=True, timeout=120,
                           env=env)
    lines = plain.stderr.strip().splitlines()
    assert plain.returncode == 2 and len(lines) == 1, plain.stderr
    assert "gone.tflite" in lines[0] and "Traceback" not in plain.stderr
    assert debug.returncode != 0 and "Traceback (most recent call last)" in debug.stderr


def _print_table(env: Env, json_path: str | None, skip: dict[str, str]) -> None:
    from tfedge.report import format_table, write_json

    rows, counts = [], {}
    for c in CASES:
        # A case that kills the process (a TF CHECK failure) is classified by hand.
        o = Outcome(*skip[c.name].split(":", 1), 0.0) if c.name in skip else classify(c, env)
        counts[o.label] = counts.get(o.label, 0) + 1
        rows.append({"case": c.name, "area": c.area, "result": o.label,
                     "seconds": round(o.seconds, 2), "detail": o.detail, "issue": c.issue})
        print(f"{o.label:8s} {c.area:8s} {c.name}: {o.detail[:110]}", flush=True)
    print(format_table(["case", "area", "result"],
                       [[r["case"], r["area"], r["result"]] for r in rows]))
    print(format_table(["result", "cases"], sorted(counts.items())))
    if json_path:
        write_json(json_path, {"counts": counts, "cases": rows})


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Classify the bad-input cases.")
    parser.add_argument("--json", help="Also write the table as JSON here.")
    parser.add_argument("--skip", action="append", default=[], metavar="CASE=LABEL:DETAIL",
                        help="Do not run CASE (it aborts the process); record LABEL instead.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        _print_table(make_env(root), args.json, dict(s.split("=", 1) for s in args.skip))
