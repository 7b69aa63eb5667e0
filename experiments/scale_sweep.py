r"""The independence ratio against accuracy as models and data grow, one run per size.

The variance study finds errors independent (ratio ~1) only for models trained
to convergence (airbench at 64 epochs, 94.4%); short training leaves a large
distribution-wise variance (ratio ~6.5 at 4 epochs). Each point here is a
model and data size trained until its training accuracy stops rising, so the
trend of the ratio with accuracy can be read across sizes. The top of the
ladder is airbench94 itself on 40,000 images (experiments/airbench.py with
--config.data.test_split=holdout), run separately.

Variants:
  cpu    widths 16/32/32 on 5,000 images x 64 epochs (16 seeds) and widths
         32/64/64 on 20,000 images x 32 epochs (8 seeds), evaluated on the
         last 10,000 training images; a few hours on 2 CPU cores.
  smoke  2 tiny points for tests.

Example:
  python -m varjax.runner --sweep=experiments/scale_sweep.py:cpu --workdir=/tmp/scale
  python -m varjax.report --workdir=/tmp/scale
"""

from varjax.config import files as config_files

# (name, widths, training images, epochs, seeds)
POINTS = {'cpu': (('w16_5k', (16, 32, 32), 5_000, 64.0, 16),
                  ('w32_20k', (32, 64, 64), 20_000, 32.0, 8)),
          'smoke': (('small', (8, 16, 16), 512, 2.0, 4), ('large', (8, 16, 16), 1_024, 2.0, 4))}


def get_sweep(arg=None):
  """Returns [{'name', 'values', 'config'}] for variant ``arg`` ('cpu' | 'smoke')."""
  variant = config_files.pick_variant(__file__, arg, tuple(POINTS), default='cpu')
  points = []
  for name, widths, images, epochs, seeds in POINTS[variant]:
    c = config_files.sibling_config(__file__, 'airbench.py', variant)
    c.name = 'scale_sweep'
    c.model.widths = widths
    c.data.train_size = images
    c.train.epochs = epochs
    c.num_models = seeds
    points.append({'name': name, 'values': {'widths': '/'.join(map(str, widths)),
                                            'train_images': images, 'epochs': epochs},
                   'config': c})
  return points
