"""Evaluation: sample-quality metrics on features, the GAM battle and Label Spreading.

The metric functions take feature arrays (see :mod:`capsgen.eval.metrics` for shapes and
conventions); producing those features (the per-dataset evaluator network) is separate.
"""
from capsgen.eval.gam import accuracy, gam_ratios
from capsgen.eval.metrics import (
    MetricInputError, class_coverage, density_coverage, distance_blocks, fid, frechet_distance,
    inception_score, kid, kth_nn_distances, mmd2_unbiased, precision_recall,
)
from capsgen.eval.semisup import label_spreading_error, stratified_labelled_subset

__all__ = [
    "MetricInputError", "accuracy", "class_coverage", "density_coverage", "distance_blocks", "fid",
    "frechet_distance", "gam_ratios", "inception_score", "kid", "kth_nn_distances",
    "label_spreading_error", "mmd2_unbiased", "precision_recall", "stratified_labelled_subset",
]
