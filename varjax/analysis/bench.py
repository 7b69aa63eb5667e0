r"""Cost of the analysis kernel against the forward pass that feeds it.

  python -m varjax.analysis.bench --config=experiments/airbench.py:cpu \
      --models=16,128,512 --batch=200

For each N: seconds per test batch of ``analysis.update`` (jitted, on random
logits of shape (N, batch, 10)) and of the ensemble's evaluation forward pass
(``Ensemble.logits`` at the config's TTA level) on the same batch, their ratio,
``finalize``'s seconds for a 10,000-example state, and the state's bytes. One
JSON line per N.
"""

import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app
from absl import flags
from ml_collections import config_flags

from varjax import analysis
from varjax import ensemble as ensemble_lib
from varjax.models import airbench

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file[:variant].')
_MODELS = flags.DEFINE_list('models', ['16', '128', '512'], 'Ensemble sizes.')
_BATCH = flags.DEFINE_integer('batch', 200, 'Test images per batch.')
_EXAMPLES = flags.DEFINE_integer('examples', 10_000, 'Test-set size n of the analysis state.')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Timed repetitions (after one warm-up).')


def timed(fn, repeats):
  jax.block_until_ready(fn())
  start = time.perf_counter()
  for _ in range(repeats):
    jax.block_until_ready(fn())
  return (time.perf_counter() - start) / repeats


def main(argv):
  del argv
  config = _CONFIG.value
  b, n, repeats = _BATCH.value, _EXAMPLES.value, _REPEATS.value
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.integers(0, 256, (b, 32, 32, 3), dtype=np.uint8))
  labels = jnp.asarray(rng.integers(0, 10, b).astype(np.int32))
  ids = jnp.arange(b, dtype=jnp.int32)
  for num_models in map(int, _MODELS.value):
    config.num_models = num_models
    ens = ensemble_lib.Ensemble(config, num_train=1024)
    kernel = airbench.whitening_kernel_for(np.asarray(rng.integers(
        0, 256, (256, 32, 32, 3), dtype=np.uint8)), config.model)
    state = ens.init(kernel)
    forward_s = timed(lambda: ens.logits(state, images), repeats)
    logits = jnp.asarray(rng.normal(size=(num_models, b, 10)).astype(np.float32))
    groups = np.arange(num_models) % 2
    stats = analysis.init(num_models, n, 10, groups,
                          num_bootstrap=config.analysis.num_bootstrap,
                          alpha_trim_resamples=config.analysis.alpha_trim_resamples)
    update = jax.jit(analysis.update)
    update_s = timed(lambda: update(stats, logits, labels, ids), repeats)
    for start in range(0, n, b):  # fill the state so finalize sees real values
      stats = update(stats, logits, labels, (ids + start) % n)
    finalize = jax.jit(analysis.finalize)
    finalize_s = timed(lambda: finalize(stats), 1)
    state_bytes = sum(x.nbytes for x in jax.tree.leaves(stats))
    print(json.dumps({
        'backend': jax.default_backend(), 'num_models': num_models, 'batch': b,
        'tta_level': config.eval.tta_level, 'forward_s_per_batch': round(forward_s, 4),
        'update_s_per_batch': round(update_s, 5),
        'update_over_forward': round(update_s / forward_s, 4),
        'finalize_s': round(finalize_s, 2), 'num_examples': n,
        'alpha_trim_resamples': config.analysis.alpha_trim_resamples,
        'state_mbytes': round(state_bytes / 2**20, 1)}), flush=True)


if __name__ == '__main__':
  flags.mark_flags_as_required(['config'])
  app.run(main)
