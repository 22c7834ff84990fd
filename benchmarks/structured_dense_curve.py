"""The dense MobileNetV2 0.35/96 reference of ``structured.py``, epoch by epoch.

Why the 12-epoch dense model is weak on some seeds: it is trained as
``structured.py`` trains it (Adam, the family's learning rate cosine-decayed
to 0 over the run, batch 32, digits at 96x96) and its float test accuracy is
recorded after every epoch, for each ``--epochs`` budget (a budget is its own
run: the cosine schedule spans the whole run), per ``--seeds``. Float
accuracy in Keras inference mode per epoch; the last epoch's model is also
converted to full int8 (calibrated on 300 training images, as
``structured.py``) and validated: the int8 accuracy ``structured.py``
reports for its dense row.

    python benchmarks/structured_dense_curve.py --seeds 1 --epochs 12 32 \\
        --out benchmarks/results/structured_dense_curve.json
    python benchmarks/structured_dense_curve.py --seeds 0 1 2 --epochs 52 \\
        --out benchmarks/results/structured_dense_curve_52.json

At 12 epochs (seed 1) the test accuracy ends at 95.56% (train 100% only on the
last epoch); at 32 it passes 98% from epoch 12 on but ends at 97.33%; alone at
52 epochs, seeds 0-4 give 97.56/97.11/98.67/97.78/97.56% int8: the seed moves
the dense reference more than the budget does past 32 epochs.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tfedge  # noqa: E402
from tfedge import keras  # noqa: E402
from tfedge.report import write_json  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from structured_models import FAMILIES, compile_, progress  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                   "structured_dense_curve.json")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", nargs="+", type=int, default=[1])
    parser.add_argument("--epochs", nargs="+", type=int, default=[12, 32],
                        help="Budgets, one run each (the cosine schedule spans the run).")
    parser.add_argument("--out", default=OUT)
    args = parser.parse_args(argv)
    spec, log = FAMILIES["mobilenet_v2"], progress("dense curve")
    (x, y), (x_test, y_test) = spec["data"]()
    runs = []
    for seed, epochs in ((s, e) for s in args.seeds for e in args.epochs):
        keras.utils.set_random_seed(seed)
        model = compile_(spec["build"](spec["width"], "dense"), spec["lr"],
                         -(-len(x) // 32) * epochs)
        start = time.time()
        history = model.fit(x, y, epochs=epochs, batch_size=32, verbose=0,
                            validation_data=(x_test, y_test)).history
        seconds = time.time() - start
        int8 = tfedge.validate(tfedge.convert(model, x[:300]), model, x_test,
                               y_test).tflite_accuracy
        runs.append({"seed": seed, "epochs": epochs, "lr": spec["lr"], "seconds": seconds,
                     "train_accuracy": history["accuracy"],
                     "test_accuracy": history["val_accuracy"], "int8_accuracy": int8})
        log(f"seed {seed}, {epochs} epochs: int8 {int8:.4f}, float test "
            f"{history['val_accuracy'][-1]:.4f} (best {max(history['val_accuracy']):.4f}), "
            f"train {history['accuracy'][-1]:.4f}")
    write_json(args.out, {"settings": vars(args) | {"out": os.path.relpath(args.out)},
                          "runs": runs})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
