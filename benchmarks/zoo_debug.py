"""Where a zoo model's int8 file departs from its QAT Keras model, layer by layer.

The model is trained, wrapped (prune 50% -> QAT) and converted exactly as in
``benchmarks/zoo.py``. Then every Keras layer's output (the QAT model, with its
fake quantization) is compared with the int8 tensor LiteRT computes for it
(``experimental_preserve_all_tensors``; ops mapped to layers by
``tfedge.quant_debug.layer_groups``), in graph order: the relative RMSE and the
RMSE in steps of the tensor's int8 scale. A layer whose error jumps above its
input's is where the two disagree. The same comparison is made with each
layer fed its own int8 input (``isolated``: the Keras layer is called on the
dequantized tensors LiteRT fed the layer's first op), so a layer's own error
is told apart from the error it inherits. Top-1 agreement is also measured on the
logits (the tensor before the classifier's softmax), since TFLite's int8
SOFTMAX output has a step of 1/256 and ties there are broken by index.

    python benchmarks/zoo_debug.py [--model EfficientNetB0] [--samples 64]
        [--out benchmarks/results/zoo_debug.json]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

import zoo  # noqa: E402  (imports tfedge first)
import tfedge  # noqa: E402
from ai_edge_litert.interpreter import Interpreter  # noqa: E402
from tfedge._keras import keras  # noqa: E402
from tfedge._validate import quantize_array  # noqa: E402
from tfedge.flatbuffer import FlatbufferModel  # noqa: E402
from tfedge.quant_debug import layer_groups  # noqa: E402
from tfedge.report import format_table, write_json  # noqa: E402


def train_and_convert(name: str):
    size = zoo.SIZES[name]
    x, y, x_test, y_test = zoo.smoke_data(size)
    keras.utils.set_random_seed(0)
    model = zoo.train_plain(zoo.build(name, keras), keras, x, y)
    final = zoo.prune_qat(model, x, y).finish()
    art = tfedge.convert(final, x[:100])
    return final, art, x_test, y_test


def tflite_tensors(art, x: np.ndarray) -> tuple[dict[int, np.ndarray], Interpreter]:
    """Every tensor of the int8 model (dequantized) for each sample, stacked."""
    interp = Interpreter(model_content=art.content, experimental_preserve_all_tensors=True)
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]
    details = {d["index"]: d for d in interp.get_tensor_details()}
    values: dict[int, list[np.ndarray]] = {}
    for sample in x:
        interp.set_tensor(inp["index"], quantize_array(sample[None].astype(np.float32), inp))
        interp.invoke()
        for index, d in details.items():
            try:
                t = interp.get_tensor(index)
            except ValueError:
                continue
            if t.ndim == 0 or t.shape[0] != 1:
                continue  # constants and scalars: not activations of this sample
            if t.dtype in (np.int8, np.uint8, np.int32, np.int16) and d["quantization"][0]:
                t = (t.astype(np.float32) - d["quantization"][1]) * d["quantization"][0]
            values.setdefault(index, []).append(np.array(t, np.float32))
    return {i: np.concatenate(v) for i, v in values.items()}, interp


def _match(keras_values: list, tensors: dict, candidates: list) -> list | None:
    """LiteRT's tensors for a layer's Keras inputs, in order (None: no close match)."""
    matched = []
    for k in keras_values:
        same = [t for t in candidates if tensors[t].shape == k.shape]
        errors = {t: np.sqrt(np.mean((tensors[t] - k) ** 2)) for t in same}
        if not errors:
            return None
        best = min(errors, key=errors.get)
        if errors[best] > 0.5 * (np.sqrt(np.mean(k ** 2)) or 1.0):
            return None
        matched.append(best)
    return matched


def isolated_errors(final, groups: dict, tensors: dict, scales: dict, keras_in: dict) -> list:
    """Each layer's own int8 error: the Keras layers of an int8 op group called on
    the dequantized tensors LiteRT fed that group.

    An op group is named after its last Keras layer; the layers fused into it
    (Conv + BatchNorm + activation) are found by walking up from that layer to
    the first one whose Keras inputs match (RMSE under half the signal) input
    tensors of the group's ops. ``keras_in``: layer name -> its Keras input values.
    """
    rows = []
    for name, ops in groups.items():
        if name not in keras_in:
            continue
        written = {t for op in ops for t in op.outputs}
        candidates = [t for op in ops for t in op.inputs if t in tensors and t not in written]
        chain = [final.get_layer(name)]
        matched = _match(keras_in[name], tensors, candidates)
        while matched is None and len(chain) < 6:
            inbound = chain[0].inbound_nodes[0].inbound_layers
            if isinstance(inbound, list) or inbound.name not in keras_in:
                break
            chain.insert(0, inbound)
            matched = _match(keras_in[inbound.name], tensors, candidates)
        out = ops[-1].outputs[0]
        if matched is None or out not in tensors:
            continue
        value = [tensors[t] for t in matched]
        value = value if len(value) > 1 else value[0]
        for layer in chain:
            value = layer(value, training=False)
        own, t = np.asarray(value), tensors[out]
        if own.shape != t.shape:
            continue
        rmse = float(np.sqrt(np.mean((t - own) ** 2)))
        scale = scales.get(out) or 0.0
        rows.append({"layer": name, "keras_layers": [layer.name for layer in chain],
                     "ops": [o.name for o in ops],
                     "rel_rmse": rmse / (float(np.sqrt(np.mean(own ** 2))) or 1.0),
                     "rmse_over_scale": rmse / scale if scale else None, "scale": scale,
                     "max_abs_over_scale": float(np.max(np.abs(t - own))) / scale
                     if scale else None})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="EfficientNetB0")
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--out", default="benchmarks/results/zoo_debug.json")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    final, art, x_test, y_test = train_and_convert(args.model)
    x = x_test[:args.samples]
    fb = FlatbufferModel(art.content)
    groups = layer_groups(fb, final)
    # Keras outputs of every layer that has ops in the file.
    by_name = {layer.name: layer for layer in final.layers}
    names = [n for n in groups if n in by_name]
    probe = keras.Model(final.inputs, [by_name[n].output for n in names])
    keras_out = dict(zip(names, probe.predict(x, verbose=0)))
    tensors, interp = tflite_tensors(art, x)
    scales = {d["index"]: d["quantization"][0] for d in interp.get_tensor_details()}
    rows = []
    for n in names:
        op = groups[n][-1]
        index = op.outputs[0]
        if index not in tensors:
            continue
        k = np.asarray(keras_out[n], np.float32)
        t = tensors[index]
        if t.shape != k.shape:
            continue
        rmse = float(np.sqrt(np.mean((t - k) ** 2)))
        ref = float(np.sqrt(np.mean(k ** 2))) or 1.0
        scale = scales.get(index) or 0.0
        rows.append({"layer": n, "ops": [o.name for o in groups[n]], "rel_rmse": rmse / ref,
                     "rmse_over_scale": rmse / scale if scale else None, "scale": scale,
                     "max_abs": float(np.max(np.abs(t - k)))})
    # Each layer's own error, fed LiteRT's int8 inputs.
    inputs_of = {n: layer.input if isinstance(layer.input, list) else [layer.input]
                 for n, layer in by_name.items()
                 if not isinstance(layer, keras.layers.InputLayer)}
    flat = [(n, i) for n in inputs_of for i in range(len(inputs_of[n]))]
    probe_in = keras.Model(final.inputs, [inputs_of[n][i] for n, i in flat])
    values = probe_in.predict(x, verbose=0)
    keras_in: dict = {}
    for (n, _), v in zip(flat, values if len(flat) > 1 else [values]):
        keras_in.setdefault(n, []).append(np.asarray(v, np.float32))
    isolated = isolated_errors(final, groups, tensors, scales, keras_in)
    # Agreement on probabilities and on the logits (before the softmax).
    report = tfedge.validate(art, final, x_test, y_test)
    # The int8 logits: the input of the SOFTMAX op (argmax of the Keras probabilities is
    # the argmax of its logits).
    softmax = [op for op in fb.ops if op.name == "SOFTMAX"]
    logits_agreement = None
    if softmax and softmax[-1].inputs[0] in tensors:
        t_logits = tensors[softmax[-1].inputs[0]].reshape(len(x), -1)
        k_probs = final.predict(x, verbose=0)
        logits_agreement = float(np.mean(np.argmax(t_logits, 1) == np.argmax(k_probs, 1)))
        t_probs = tensors[softmax[-1].outputs[0]].reshape(len(x), -1)
        top2 = np.sort(t_probs, 1)[:, -2:]
        result_ties = int(np.sum(top2[:, 0] == top2[:, 1]))
        probs_agreement = float(np.mean(np.argmax(t_probs, 1) == np.argmax(k_probs, 1)))
        # How close the Keras model's own top-2 is on the samples the two disagree
        # on, in steps of the int8 logits' scale (Keras logits: log probabilities,
        # up to a constant per sample).
        step = scales.get(softmax[-1].inputs[0]) or 0.0
        k_sorted = np.sort(np.log(np.maximum(k_probs, 1e-30)), 1)
        margins = (k_sorted[:, -1] - k_sorted[:, -2]) / step if step else None
        differ = np.flatnonzero(np.argmax(t_probs, 1) != np.argmax(k_probs, 1))
        disagreements = {
            "samples": differ.tolist(), "logits_step": step,
            "keras_top2_margin_steps": None if margins is None else margins[differ].tolist(),
            "median_margin_steps_all": None if margins is None else float(np.median(margins))}
    else:
        result_ties = probs_agreement = disagreements = None
    worst = sorted(rows, key=lambda r: -r["rel_rmse"])[:15]
    jumps = []
    for prev, cur in zip(rows, rows[1:]):
        jumps.append({"layer": cur["layer"], "ops": cur["ops"],
                      "rel_rmse": cur["rel_rmse"], "previous": prev["layer"],
                      "jump": cur["rel_rmse"] - prev["rel_rmse"]})
    jumps.sort(key=lambda r: -r["jump"])
    result = {"model": args.model, "samples": len(x), "agreement": report.agreement,
              "qat_keras_accuracy": report.keras_accuracy, "int8_accuracy": report.tflite_accuracy,
              "agreement_first_samples_on_probabilities": probs_agreement,
              "agreement_first_samples_on_logits": logits_agreement,
              "int8_softmax_top2_ties_first_samples": result_ties,
              "disagreements_first_samples": disagreements,
              "layers_in_order": rows, "worst": worst, "largest_jumps": jumps[:15],
              "isolated_worst": sorted(isolated, key=lambda r: -(r["rmse_over_scale"] or 0))[:15],
              "isolated_in_order": isolated,
              "seconds": time.perf_counter() - t0}
    write_json(args.out, result)
    print(format_table(["layer", "ops", "rel RMSE", "RMSE/scale"],
                       [[r["layer"], "+".join(r["ops"]), r["rel_rmse"], r["rmse_over_scale"]]
                        for r in rows], title=f"{args.model}: int8 vs QAT Keras, by layer"))
    print(format_table(["layer", "ops", "rel RMSE", "jump"],
                       [[r["layer"], "+".join(r["ops"]), r["rel_rmse"], r["jump"]]
                        for r in jumps[:15]], title="largest error jumps"))
    print(format_table(["layer", "ops", "rel RMSE", "RMSE/scale", "max/scale"],
                       [[r["layer"], "+".join(r["ops"]), r["rel_rmse"], r["rmse_over_scale"],
                         r["max_abs_over_scale"]] for r in result["isolated_worst"]],
                       title="largest own errors (each layer fed its int8 input)"))
    print("agreement", report.agreement, "first samples: probabilities", probs_agreement,
          "logits", logits_agreement, "softmax top-2 ties", result_ties,
          "disagreements", disagreements)
    return 0


if __name__ == "__main__":
    sys.exit(main())
