"""tfedge: from a Keras model to a validated int8 TFLite model for the edge.

The pipeline, one module per stage::

    wrap -> (distill, prune, cluster, QAT: phases of one fit) -> convert -> validate

Importing tfedge makes ``tf.keras`` resolve to tf_keras (Keras 2), which the
TensorFlow Model Optimization Toolkit requires; see :mod:`tfedge._keras`.
"""

from tfedge._keras import keras  # noqa: F401  (must come first: sets TF_USE_LEGACY_KERAS)
from tfedge.convert import (MODES, TFLiteArtifact, check_full_integer, convert, load,
                            representative_from_dataset, runtime_settings)
from tfedge.quant_debug import QuantizationDebugReport, debug_quantization
from tfedge.errors import (ConversionError, InvalidModelFileError, TFEdgeError,
                           UnsupportedModelError, VerificationError)
from tfedge.export import Bundle, BundleCheck, check_bundle, export_android, export_micro
from tfedge.prune import ConstantSparsity, PolynomialDecay, PruneConfig, SparsityReport, sparsity_report
from tfedge.quantize import QATConfig, QuantizationPlan
from tfedge.distill import DistillConfig
from tfedge.cluster import ClusterConfig
from tfedge.validate import TFLiteRunner, ValidationReport, validate
from tfedge import bench  # callable module: tfedge.bench(...), tfedge.bench.estimate_latency
from tfedge.bench import BenchReport, CompareReport, HostResult, LatencyEstimate, TargetResult
from tfedge.cost import ModelCost, model_cost
from tfedge.devices import PROFILES, DeviceProfile
from tfedge.tune import Budget, SearchSpace, TuneResult, tune
from tfedge.wrap import EdgeModel, wrap
from tfedge import keras3  # Keras 3 models: to_tf_keras / to_keras3 (wrap uses them)

__version__ = "0.1.0"

__all__ = [
    "wrap", "EdgeModel", "PruneConfig", "PolynomialDecay", "ConstantSparsity",
    "sparsity_report", "SparsityReport", "convert", "load", "check_full_integer",
    "TFLiteArtifact", "MODES", "validate", "ValidationReport", "TFLiteRunner",
    "representative_from_dataset", "runtime_settings", "debug_quantization",
    "QuantizationDebugReport",
    "TFEdgeError", "ConversionError", "InvalidModelFileError", "UnsupportedModelError",
    "VerificationError", "export_android", "export_micro", "check_bundle", "Bundle",
    "BundleCheck",
    "tune", "Budget", "SearchSpace", "TuneResult",
    "bench", "BenchReport", "CompareReport", "HostResult", "TargetResult", "LatencyEstimate",
    "model_cost", "ModelCost", "DeviceProfile", "PROFILES",
    "QATConfig", "QuantizationPlan", "DistillConfig", "ClusterConfig",
    "keras", "keras3", "__version__",
]
