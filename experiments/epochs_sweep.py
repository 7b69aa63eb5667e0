r"""Variance vs training length (the study's Table 1 law), one run per duration.

Training length changes the program (step count, schedule), so each point is
its own run under ``varjax.runner``; the merged summary has one group per point.
Short training should show an independence ratio well above 1 (distribution-wise
variance), longer training a ratio near 1.

Variants:
  (none)    airbench94, 64 seeds at 2, 4, 6.6 and 9.9 epochs; an accelerator host.
  cpu       the narrow CPU model, 16 seeds at 1, 2 and 4 epochs.
  converge  the same model trained to convergence: 1, 2, 4, 8 epochs x 32 seeds and
            16, 32, 64 epochs x 16 seeds (about an hour or two on 2 CPU cores).
  converge_1k  a subset the narrow model can fit (1,000 training images), 16 seeds at
            8, 32 and 128 epochs (about 20 minutes on 2 CPU cores): on 5,000 images
            'converge' is still at 86% training accuracy after 32 epochs.
  smoke     2 tiny points for tests.

Example:
  python -m varjax.runner --sweep=experiments/epochs_sweep.py:cpu --workdir=/tmp/epochs
  python -m varjax.report --workdir=/tmp/epochs
"""

from varjax.config import files as config_files
def get_sweep(arg=None):
  """Returns [{'name', 'values', 'config'}] for variant ``arg`` ('' | 'cpu' | 'converge' | 'converge_1k' | 'smoke')."""
  epochs = {'default': (2.0, 4.0, 6.6, 9.9), 'cpu': (1.0, 2.0, 4.0),
            'converge': (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0),
            'converge_1k': (8.0, 32.0, 128.0), 'smoke': (1.0, 2.0)}
  variant = config_files.pick_variant(__file__, arg, tuple(epochs))
  base = {'default': '', 'converge': 'cpu', 'converge_1k': 'cpu'}.get(variant, variant)
  points = []
  for e in epochs[variant]:
    c = config_files.sibling_config(__file__, 'airbench.py', base)
    c.name = 'epochs_sweep'
    c.train.epochs = e
    c.train.whiten_bias_epochs = min(c.train.whiten_bias_epochs, e)
    if variant == 'default':
      c.num_models = 64
    elif variant == 'converge':
      # Short runs are cheap: more seeds there; 16 (the floor) for the long ones.
      c.num_models = 32 if e <= 8 else 16
    elif variant == 'converge_1k':
      c.data.train_size = 1_000
    points.append({'name': f'epochs_{e:g}', 'values': {'epochs': e}, 'config': c})
  return points
