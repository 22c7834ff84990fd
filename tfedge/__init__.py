"""tfedge: from a Keras model to a validated int8 TFLite model for the edge.

The pipeline, one module per stage::

    wrap -> (distill, prune, cluster, QAT: phases of one fit) -> convert -> validate
         -> bench -> export          (plus tune, and the ``tfedge`` command line)

Importing tfedge makes ``tf.keras`` resolve to tf_keras (Keras 2), which the
TensorFlow Model Optimization Toolkit requires; see :mod:`tfedge._keras`.
The public names below are imported on first use (PEP 562), so ``import
tfedge`` itself does not import TensorFlow: ``tfedge inspect`` and ``tfedge
check`` start in a fraction of a second. ``tfedge.wrap`` (or any name that
needs TensorFlow) imports it then.

Where each name lives (the stage modules are private where a function of
the same name is the public entry point: ``tfedge.convert`` is the function,
its module is ``tfedge._convert``):
"""

import importlib
from typing import Any

from tfedge import _keras  # noqa: F401  (first: sets TF_USE_LEGACY_KERAS, or raises)

__version__ = "0.1.0"

_EXPORTS = {
    "tfedge._keras": ["keras"],
    "tfedge._wrap": ["wrap", "EdgeModel"],
    "tfedge.prune": ["PruneConfig", "PolynomialDecay", "ConstantSparsity", "sparsity_report",
                     "SparsityReport"],
    "tfedge.quantize": ["QATConfig", "QuantizationPlan"],
    "tfedge.qat_gradients": ["vectorized_per_channel_gradient",
                             "vectorized_per_channel_fake_quant"],
    "tfedge.prepare": ["prepare_model", "PreparationReport"],
    "tfedge.distill": ["DistillConfig"],
    "tfedge.cluster": ["ClusterConfig"],
    "tfedge.lowrank": ["LowRankConfig", "FactorizationReport"],
    "tfedge.channel_prune": ["ChannelReport"],
    "tfedge.channel_budget": ["plan_channels", "ChannelPlan", "BudgetError", "int8_instructions",
                              "Int8Count", "recalibrate_batch_norm"],
    "tfedge.artifact": ["TFLiteArtifact", "MODES", "LOWBIT_MODES", "load",
                        "check_full_integer", "runtime_settings"],
    "tfedge.calibration": ["representative_from_dataset"],
    "tfedge._convert": ["convert"],
    "tfedge.mixed_precision": ["MixedPrecisionReport"],
    "tfedge.quant_debug": ["debug_quantization", "QuantizationDebugReport"],
    "tfedge._validate": ["validate", "ValidationReport", "TFLiteRunner"],
    "tfedge._bench": ["bench", "compare", "estimate_latency", "LatencyEstimate"],
    "tfedge.bench_report": ["BenchReport", "CompareReport", "HostResult", "TargetResult"],
    "tfedge.cost": ["model_cost", "ModelCost"],
    "tfedge.devices": ["DeviceProfile", "PROFILES"],
    "tfedge.export": ["export_android", "export_micro", "check_bundle", "Bundle",
                      "BundleCheck"],
    "tfedge._tune": ["tune", "Budget", "SearchSpace", "TuneResult"],
    "tfedge.errors": ["TFEdgeError", "ConversionError", "InvalidModelFileError",
                      "UnsupportedModelError", "VerificationError"],
}
_SUBMODULES = ["keras3"]  # Keras 3 models: to_tf_keras / to_keras3 (wrap uses them)
_HOME = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = [name for names in _EXPORTS.values() for name in names] + _SUBMODULES + [
    "__version__"]
__doc__ += "\n".join(f"\n* :mod:`{module}`: {', '.join(names)}"
                     for module, names in _EXPORTS.items())


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        value = importlib.import_module(f"tfedge.{name}")
    elif name in _HOME:
        value = getattr(importlib.import_module(_HOME[name]), name)
    else:
        raise AttributeError(f"module 'tfedge' has no attribute {name!r}")
    globals()[name] = value  # found once; later lookups do not come here
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
