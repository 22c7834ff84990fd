"""The ``tfedge`` command line: one subcommand per pipeline stage.

Each subcommand has an ``_add_<name>`` function that declares its flags (with
help for every flag) and a ``_run_<name>`` function that does the work through
the public Python API. Library code logs; only this module prints results.
"""

from __future__ import annotations

import argparse
import json
import sys


def _add_inspect(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="Show a .tflite file's tensors, quantization and ops.",
                       description="Read a .tflite flatbuffer and print its inputs and "
                                   "outputs (shape, dtype, scale, zero point), op counts, "
                                   "and per-layer weight sparsity.")
    p.add_argument("model", help="Path to a .tflite file.")
    p.add_argument("--json", action="store_true", help="Print JSON instead of tables.")
    p.set_defaults(func=_run_inspect)


def _run_inspect(args: argparse.Namespace) -> int:
    from tfedge.convert import load

    artifact = load(args.model)
    if args.json:
        print(json.dumps({**artifact.to_dict(),
                          "weight_sparsity": artifact.flatbuffer.weight_sparsity()}, indent=2))
    else:
        print(artifact)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tfedge",
        description="tfedge: Keras models to validated int8 TFLite models for the edge.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_inspect(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``tfedge`` command. Returns the exit status."""
    from tfedge.errors import TFEdgeError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (TFEdgeError, FileNotFoundError, ValueError) as err:
        print(f"tfedge {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
