"""On-device variance analysis of an ensemble's test logits (Jordan 2024 and the run-to-run
metrics around it).

Pure maths: this package imports nothing else from varjax.

Logits of N models arrive one test batch at a time and fold into small
accumulators that stay on the device; only ``finalize``'s results come back.

Example:
  >>> state = init(num_models, num_examples, num_classes, groups)          # doctest: +SKIP
  >>> for ids, x, y in batches:                                             # doctest: +SKIP
  ...   state = update(state, logits_fn(x), y, ids)
  >>> print('\\n'.join(report_lines(finalize(state))))                     # doctest: +SKIP
"""

from varjax.analysis.accumulate import init
from varjax.analysis.accumulate import update
from varjax.analysis.core import analyze
from varjax.analysis.core import finalize
from varjax.analysis.difficulty import forgetting_stats
from varjax.analysis.lenses import lens_stats
from varjax.analysis.report import report_lines
from varjax.analysis.results import Results
from varjax.analysis.variance import CI_LEVEL

__all__ = ['init', 'update', 'finalize', 'analyze', 'forgetting_stats', 'lens_stats',
           'report_lines', 'Results', 'CI_LEVEL']
