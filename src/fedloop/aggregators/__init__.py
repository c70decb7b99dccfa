"""Aggregators (a strategy part): stateful (init, apply) pairs from a round's updates, sorted by client id, to the
reduced update's tensors. They receive the updates in client-id order (reduction.reduce), so the floating-point
order, and therefore the result, does not depend on the order in which replies arrived; counts and metrics are
built once by reduction.reduce, not by each aggregator. The robust ones read one tensor of every update at a time
and refuse a round with fewer updates than their assumption needs."""

from .base import Aggregator, AggState, Weighting, mean_metrics
from .clipping import CenteredClip, NormBound
from .coordinate import Median, TrimmedMean
from .geomed import GeometricMedian
from .krum import Bulyan, Krum, MultiKrum
from .mean import WeightedMean

AGGREGATORS: dict[str, type] = {cls.name: cls for cls in (
    WeightedMean, Median, TrimmedMean, Krum, MultiKrum, Bulyan, GeometricMedian, CenteredClip, NormBound)}

__all__ = ["AGGREGATORS", "AggState", "Aggregator", "Bulyan", "CenteredClip", "GeometricMedian", "Krum", "Median",
           "MultiKrum", "NormBound", "TrimmedMean", "Weighting", "WeightedMean", "mean_metrics"]
