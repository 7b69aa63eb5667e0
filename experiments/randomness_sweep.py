r"""Which source of randomness makes the variance (the study's App. D), one run per source.

Each point lets one source differ between seeds and shares the others:
init (weights), order (data order), augment (crops and flips; keyed by image,
so 'order' alone changes no image's augmentation), and all three. At long
training the study found each source alone gives nearly the full variance; at
short training a single source gives 25-40% less. The sources change the
program's keys, so each point is its own run under ``varjax.runner``.

Variants:
  cpu          the narrow CPU model, 16 seeds x 8 epochs per point.
  power_short  short training (5,000 images, 4 epochs), 256 seeds per point:
               a two-sided F-test of one source's variance against all
               sources' then has 80% power to detect a 30% difference in
               variance at level 0.05 (249 seeds; analysis/power.py).
  power_long   the same comparison where the model fits its training set
               (1,000 images, 32 epochs), 256 seeds per point.
  smoke        2 tiny points for tests.

Example:
  python -m varjax.runner --sweep=experiments/randomness_sweep.py:cpu --workdir=/tmp/sources
  python -m varjax.report --workdir=/tmp/sources
"""

from varjax.config import files as config_files
SOURCES = {'init': ('init',), 'order': ('order',), 'augment': ('augment',),
           'all': ('init', 'order', 'augment')}


def get_sweep(arg=None):
  """Returns [{'name', 'values', 'config'}] for variant ``arg`` (see the module docstring)."""
  variant = config_files.pick_variant(__file__, arg, ('cpu', 'power_short', 'power_long',
                                                     'smoke'), default='cpu')
  names = ('order', 'all') if variant == 'smoke' else tuple(SOURCES)
  points = []
  for name in names:
    c = config_files.sibling_config(__file__, 'airbench.py', 'smoke' if variant == 'smoke'
                                    else 'cpu')
    c.name = 'randomness_sweep'
    c.randomness.vary = SOURCES[name]
    if variant == 'cpu':
      c.train.epochs = 8
    elif variant.startswith('power'):
      c.num_models = 256
      c.train.epochs = 4 if variant == 'power_short' else 32
      c.data.train_size = 5_000 if variant == 'power_short' else 1_000
    points.append({'name': f'vary_{name}', 'values': {'varies': name}, 'config': c})
  return points
