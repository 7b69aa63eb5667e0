"""The analysis's results as typed records, one per axis they live on.

``finalize`` returns a ``Results``: per model (N, ...), per group (G, ...), per
group and example (G, n, ...), per model and example (N, n) and per pair of
models (N, N). A field the analysis state did not accumulate (its switch was
off, or it needs two classes) is None. ``results['name']`` finds a field in
whichever record holds it, and ``'name' in results`` says whether it is there.

Example:
  >>> results = Results.from_flat({'accuracy': acc, 'mean_accuracy': mean})   # doctest: +SKIP
  >>> results.model.accuracy is results['accuracy']                           # doctest: +SKIP
  True
"""

from typing import Any, NamedTuple, Optional

Array = Any


class ModelStats(NamedTuple):
  """Per model, (N,) unless noted."""
  accuracy: Optional[Array] = None
  accuracy_even: Optional[Array] = None  # on the even-indexed examples (split-half)
  accuracy_odd: Optional[Array] = None
  ece: Optional[Array] = None  # 15 equal-width confidence bins
  margin_median: Optional[Array] = None  # of the true-class logit margin
  alpha_trim: Optional[Array] = None  # mean over the resamples in which a level passed
  alpha_trim_beyond_grid: Optional[Array] = None  # share of resamples in which none did
  margin_quantiles: Optional[Array] = None  # (N, Q)
  normalized_margin_quantiles: Optional[Array] = None  # (N, Q)
  mean_depth: Optional[Array] = None  # mean prediction depth over the examples


class GroupStats(NamedTuple):
  """Per group of models (one point of a sweep), (G,) unless noted; NaN where a
  statistic needs more models than the group has."""
  num_models: Optional[Array] = None
  mean_accuracy: Optional[Array] = None
  std_accuracy: Optional[Array] = None  # ddof 1
  std_accuracy_ci: Optional[Array] = None  # (G, 2), chi-squared, 95%: exact for normal accuracies
  std_accuracy_ci_bonett: Optional[Array] = None  # (G, 2), kurtosis-adjusted (Bonett 2006)
  accuracy_skewness: Optional[Array] = None
  accuracy_excess_kurtosis: Optional[Array] = None
  independent_std: Optional[Array] = None  # what independent per-example errors predict
  independence_ratio: Optional[Array] = None  # std^2 / independent std^2
  distribution_var: Optional[Array] = None  # unbiased distribution-wise variance (may be < 0)
  distribution_std: Optional[Array] = None  # its root, clamped at 0
  distribution_std_ci: Optional[Array] = None  # (G, 2)
  split_half_corr: Optional[Array] = None
  mean_disagreement: Optional[Array] = None  # of two distinct models
  mean_error: Optional[Array] = None
  disagreement_error_ratio: Optional[Array] = None  # 1 for a class-wise calibrated ensemble
  cace: Optional[Array] = None  # class-aggregated calibration error of the vote fraction
  error_consistency: Optional[Array] = None  # mean kappa over pairs
  mean_churn: Optional[Array] = None
  ensemble_accuracy_vote: Optional[Array] = None
  ensemble_accuracy_softmax: Optional[Array] = None
  ensemble_sizes: Optional[Array] = None  # (G, L), 0-padded
  ensemble_size_accuracy_vote: Optional[Array] = None  # (G, L), NaN-padded
  ensemble_size_accuracy_softmax: Optional[Array] = None  # (G, L)
  seeds_needed: Optional[Array] = None  # (G, D): seeds per arm for each difference
  seeds_needed_ci: Optional[Array] = None  # (G, D, 2): at the std interval's ends
  calibrated_binary_std: Optional[Array] = None  # two classes: Theorem 3's Eq. 6, sqrt(err / 2n)
  calibrated_binary_std_ci: Optional[Array] = None  # (G, 2)
  calibrated_binary_full_std: Optional[Array] = None  # Eq. 5, with the measured Var_D
  calibrated_binary_full_std_ci: Optional[Array] = None  # (G, 2)
  binary_premise_ratio: Optional[Array] = None  # V_ind / (err / 2n): 1 under calibration
  binary_premise_ratio_ci: Optional[Array] = None  # (G, 2)
  margin_quantile_accuracy_corr: Optional[Array] = None  # (G, Q), Pearson r across models
  normalized_margin_quantile_accuracy_corr: Optional[Array] = None  # (G, Q)
  mean_prediction_depth: Optional[Array] = None
  depth_accuracy_corr: Optional[Array] = None  # Pearson r across examples with p_i


class ExampleStats(NamedTuple):
  """Per group and example."""
  example_accuracy: Optional[Array] = None  # (G, n): p_i over the group's models
  vote_counts: Optional[Array] = None  # (G, n, K)
  depth_mean: Optional[Array] = None  # (G, n)
  depth_std: Optional[Array] = None  # (G, n)


class ModelExampleStats(NamedTuple):
  """Per model and example, (N, n)."""
  margin: Optional[Array] = None
  normalized_margin: Optional[Array] = None
  prediction_depth: Optional[Array] = None


class PairStats(NamedTuple):
  """Per pair of models, (N, N)."""
  churn: Optional[Array] = None
  error_kappa: Optional[Array] = None


class Results(NamedTuple):
  """Everything ``finalize`` computes, by the axis it lives on."""
  model: ModelStats
  group: GroupStats
  example: ExampleStats
  model_example: ModelExampleStats
  pair: PairStats

  @classmethod
  def from_flat(cls, values):
    """The Results of a {field name: array} dict; an unknown name is an error."""
    parts = [ModelStats, GroupStats, ExampleStats, ModelExampleStats, PairStats]
    unknown = set(values) - {f for p in parts for f in p._fields}
    if unknown:
      raise ValueError(f'Not analysis result fields: {sorted(unknown)}')
    return cls(*[p(**{f: values[f] for f in p._fields if f in values}) for p in parts])

  def present(self, part):
    """{name: array} of the fields of ``part`` ('model', 'group', ...) that were computed."""
    return {k: v for k, v in getattr(self, part)._asdict().items() if v is not None}

  def items(self):
    """(name, array) of every computed field, part by part (a flat view for iteration)."""
    return [(k, v) for part in self._fields for k, v in self.present(part).items()]

  def keys(self):
    return [k for k, _ in self.items()]

  def __getitem__(self, name):
    if isinstance(name, str):
      for part in tuple.__iter__(self):
        if name in part._fields and getattr(part, name) is not None:
          return getattr(part, name)
      raise KeyError(name)
    return tuple.__getitem__(self, name)

  def __contains__(self, name):
    try:
      self[name]  # pylint: disable=pointless-statement
    except KeyError:
      return False
    return True
