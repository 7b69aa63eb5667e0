"""A short human-readable variance report per group.

Example:
  >>> for line in report_lines(results, group_names=['lr=0.5', 'lr=1.0']):   # doctest: +SKIP
  ...   print(line)
"""

import numpy as np


def _pct(x):
  return f'{100 * float(x):.3f}%'


def report_lines(results, group_names=None):
  """One block of lines per group from ``finalize``'s results (host or device arrays).

  Example:
    >>> report_lines(analyze(logits, labels))   # doctest: +SKIP
    ['group 0 (16 models): accuracy 93.912% ± 0.152% ...', ...]
  """
  r = {k: np.asarray(v) for k, v in results.items()}
  lines = []
  for g in range(len(r['num_models'])):
    name = group_names[g] if group_names is not None else f'group {g}'
    lo, hi = r['std_accuracy_ci'][g]
    lines += [
        f"{name} ({int(r['num_models'][g])} models): accuracy {_pct(r['mean_accuracy'][g])} ± "
        f"{_pct(r['std_accuracy'][g])} (95% CI of std {_pct(lo)} .. {_pct(hi)})",
        f"  independent-errors std {_pct(r['independent_std'][g])}, ratio "
        f"{float(r['independence_ratio'][g]):.3f}; distribution-wise std "
        f"{_pct(r['distribution_std'][g])} (var {float(r['distribution_var'][g]):.3g}); "
        f"split-half corr {float(r['split_half_corr'][g]):.3f}",
        f"  disagreement {_pct(r['mean_disagreement'][g])} vs error {_pct(r['mean_error'][g])} "
        f"(CACE {_pct(r['cace'][g])}); churn {_pct(r['mean_churn'][g])}; error consistency "
        f"{float(r['error_consistency'][g]):.3f}",
        f"  ensemble accuracy: vote {_pct(r['ensemble_accuracy_vote'][g])}, softmax "
        f"{_pct(r['ensemble_accuracy_softmax'][g])}",
    ]
  return lines
