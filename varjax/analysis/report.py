"""A short human-readable variance report per group.

Example:
  >>> for line in report_lines(results, group_names=['lr=0.5', 'lr=1.0']):   # doctest: +SKIP
  ...   print(line)
"""

import numpy as np


def _pct(x):
  return f'{100 * float(x):.3f}%'


def _seed_count(x):
  return 'n/a' if np.isnan(x) else f'{int(x)}'


def report_lines(results, group_names=None, seeds_needed_deltas=None):
  """One block of lines per group from ``finalize``'s results (host or device arrays).

  ``seeds_needed_deltas``: the differences ``seeds_needed`` was computed for
  (init's), to label them; None leaves that line out.

  Example:
    >>> report_lines(analyze(logits, labels))   # doctest: +SKIP
    ['group 0 (16 models): accuracy 93.912% ± 0.152% ...', ...]
  """
  r = {k: np.asarray(v) for k, v in results.items()}  # Results or a {name: array} dict
  lines = []
  for g in range(len(r['num_models'])):
    name = group_names[g] if group_names is not None else f'group {g}'
    m = int(r['num_models'][g])
    lo, hi = r['std_accuracy_ci'][g]
    dlo, dhi = r['distribution_std_ci'][g]
    sizes = [int(s) for s in r['ensemble_sizes'][g] if s > 0]
    curve = ', '.join(f"{s}: {_pct(r['ensemble_size_accuracy_vote'][g][i])} / "
                      f"{_pct(r['ensemble_size_accuracy_softmax'][g][i])}"
                      for i, s in enumerate(sizes))
    seeds = ', '.join(
        f'{100 * float(d):g}pp: {_seed_count(n)} ({_seed_count(c[0])} .. {_seed_count(c[1])})'
        for d, n, c in zip(seeds_needed_deltas, r['seeds_needed'][g], r['seeds_needed_ci'][g])
    ) if seeds_needed_deltas is not None else ''
    lines += [
        f"{name} ({m} models): accuracy {_pct(r['mean_accuracy'][g])} ± "
        f"{_pct(r['std_accuracy'][g])} (95% CI of std {_pct(lo)} .. {_pct(hi)})",
        f"  independent-errors std {_pct(r['independent_std'][g])}, ratio "
        f"{float(r['independence_ratio'][g]):.3f}; distribution-wise std "
        f"{_pct(r['distribution_std'][g])} (95% CI {_pct(dlo)} .. {_pct(dhi)}; var "
        f"{float(r['distribution_var'][g]):.3g}); split-half corr "
        f"{float(r['split_half_corr'][g]):.3f}",
        f"  disagreement {_pct(r['mean_disagreement'][g])} vs error {_pct(r['mean_error'][g])} "
        f"(CACE {_pct(r['cace'][g])} at M={m}, biased upward for small M); churn "
        f"{_pct(r['mean_churn'][g])}; error consistency {float(r['error_consistency'][g]):.3f}",
        f"  ensemble accuracy: vote {_pct(r['ensemble_accuracy_vote'][g])}, softmax "
        f"{_pct(r['ensemble_accuracy_softmax'][g])}; by size (vote / softmax) {curve}",
    ]
    if seeds:
      lines.append(f'  seeds per arm to detect a difference (95% CI): {seeds}')
  return lines
