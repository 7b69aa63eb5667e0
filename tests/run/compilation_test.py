"""The persistent compilation cache: where it lives, how to turn it off, and what it saves."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp

from varjax.run import compilation


def test_default_cache_dir_per_user_and_overridable():
  assert compilation.default_cache_dir({'HOME': '/h'}) == os.path.join(
      os.path.expanduser('~'), '.cache', 'varjax', 'jax')
  assert compilation.default_cache_dir({'XDG_CACHE_HOME': '/x'}) == '/x/varjax/jax'
  assert compilation.default_cache_dir({compilation.CACHE_ENV: '/c'}) == '/c'
  for off in ('off', 'OFF', 'none', '0', ''):
    assert compilation.default_cache_dir({compilation.CACHE_ENV: off}) is None


def test_compile_stats_count_compiles_and_their_seconds():
  with compilation.CompileStats() as stats:
    jax.jit(lambda x: jnp.sin(x) * 3 + 1)(jnp.arange(7.0)).block_until_ready()
  assert stats.compiles >= 1 and stats.seconds > 0 and stats.cache_hits == 0
  with compilation.CompileStats() as again:  # already compiled in this process
    jax.jit(lambda x: x)(jnp.arange(3.0))
    assert again.compiles >= 1
  assert stats.compiles == stats.backend_events  # closed: not counting the second


_SECOND_PROCESS = '''
import jax, jax.numpy as jnp, sys
from varjax.run import compilation
compilation.enable_cache(sys.argv[1])
compilation.MIN_COMPILE_SECONDS = 0
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
f = jax.jit(lambda x: jnp.tanh(x @ x.T).sum() + jnp.linalg.norm(x))
with compilation.CompileStats() as s:
  f(jnp.ones((64, 64))).block_until_ready()
print(s.compiles, s.cache_hits)
'''


def test_a_second_process_loads_the_program_from_the_cache(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  run = lambda: subprocess.run([sys.executable, '-c', _SECOND_PROCESS, str(tmp_path)], env=env,
                               capture_output=True, text=True, check=True).stdout.split()
  first, second = run(), run()
  assert int(first[1]) == 0 and int(first[0]) >= 1
  assert int(second[1]) >= 1  # the program came from the cache
  assert os.listdir(tmp_path)
