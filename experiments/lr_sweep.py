r"""The variance study's learning-rate sweep (Jordan 2024) with airbench94, as one ensemble.

The study swept 13 learning rates 2^-10 .. 2^2, a factor 2 apart, with its best
at 0.5. Here the same 13 factor-2 points are multipliers of airbench94's tuned
lr (11.5), placed so the tuned lr sits where the study's best did:
2^-10/0.5 .. 2^2/0.5 = 2^-9 .. 2^3 times 11.5. Every point gets
``seeds_per_point`` models; all G x S models train in one jitted step and each
point is one analysis group.

Variants:
  (none)  13 points x 64 seeds = 832 airbench94 models; an accelerator host.
  cpu     5 points (1/8 .. 2x) x 48 seeds of the narrow CPU model: enough to place
          the lowest-std point (tens of minutes on 2 CPU cores).
  smoke   2 points x 2 seeds of a tiny model; seconds, for tests.

Example:
  python -m varjax.main --config=experiments/lr_sweep.py:cpu --workdir=/tmp/lr_sweep
  python -m varjax.report --workdir=/tmp/lr_sweep
"""

from varjax.config import files as config_files
def get_config(arg=None):
  """Returns the sweep config for variant ``arg`` ('' | 'cpu' | 'smoke')."""
  variant = config_files.pick_variant(__file__, arg, ('default', 'cpu', 'smoke'))
  c = config_files.sibling_config(__file__, 'airbench.py',
                                 '' if variant == 'default' else variant)
  c.name = 'lr_sweep'
  c.variant = variant
  if variant == 'default':
    c.sweep.lr_multipliers = tuple(2.0 ** e for e in range(-9, 4))
    c.sweep.seeds_per_point = 64
  elif variant == 'cpu':
    c.sweep.lr_multipliers = (0.125, 0.25, 0.5, 1.0, 2.0)
    c.sweep.seeds_per_point = 48
  else:
    c.sweep.lr_multipliers = (0.5, 2.0)
    c.sweep.seeds_per_point = 2
  c.num_models = len(c.sweep.lr_multipliers) * c.sweep.seeds_per_point
  return c
