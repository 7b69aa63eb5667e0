r"""Variance vs training length (the study's Table 1 law), one run per duration.

Training length changes the program (step count, schedule), so each point is
its own run under ``varjax.runner``; the merged summary has one group per point.
Short training should show an independence ratio well above 1 (distribution-wise
variance), longer training a ratio near 1.

Variants:
  (none)  airbench94, 64 seeds at 2, 4, 6.6 and 9.9 epochs; an accelerator host.
  cpu     the narrow CPU model, 16 seeds at 1, 2 and 4 epochs.
  smoke   2 tiny points for tests.

Example:
  python -m varjax.runner --sweep=experiments/epochs_sweep.py:cpu --workdir=/tmp/epochs
  python -m varjax.report --workdir=/tmp/epochs
"""

from varjax import config_files


def get_sweep(arg=None):
  """Returns [{'name', 'values', 'config'}] for variant ``arg`` ('' | 'cpu' | 'smoke')."""
  variant = arg or 'default'
  epochs = {'default': (2.0, 4.0, 6.6, 9.9), 'cpu': (1.0, 2.0, 4.0), 'smoke': (1.0, 2.0)}
  if variant not in epochs:
    raise ValueError(f"Unknown variant {arg!r} of experiments/epochs_sweep.py; "
                     "choose one of '', 'cpu', 'smoke'.")
  points = []
  for e in epochs[variant]:
    c = config_files.sibling_config(__file__, 'airbench.py',
                                    '' if variant == 'default' else variant)
    c.name = 'epochs_sweep'
    c.train.epochs = e
    c.train.whiten_bias_epochs = min(c.train.whiten_bias_epochs, e)
    if variant == 'default':
      c.num_models = 64
    points.append({'name': f'epochs_{e:g}', 'values': {'epochs': e}, 'config': c})
  return points
