"""Compiling once: JAX's persistent compilation cache, and what a run spent compiling.

The cache is on by default, one directory per user (not per workdir), so a
second identical run, a resume and every sweep point after the first load their
programs instead of compiling them: ``$VARJAX_COMPILATION_CACHE``, else
``$XDG_CACHE_HOME/varjax/jax`` (``~/.cache/varjax/jax``). Set the variable (or
a command's ``--compilation_cache``) to ``off`` to compile everything afresh.

``CompileStats`` counts what JAX compiled while it was open (from JAX's own
monitoring events): the programs compiled, those loaded from the cache instead,
and the seconds both took (tracing and lowering included).

Example:
  >>> enable_cache()                               # doctest: +SKIP
  >>> with CompileStats() as stats:                # doctest: +SKIP
  ...   train_and_evaluate(config, workdir)
  >>> stats.seconds, stats.compiles, stats.cache_hits   # doctest: +SKIP
"""

import os
import threading

import jax
from jax import monitoring

CACHE_ENV = 'VARJAX_COMPILATION_CACHE'
OFF = ('off', 'none', 'false', '0', '')
# Programs compiling faster than this are not worth a cache entry (the many small jits).
MIN_COMPILE_SECONDS = 0.5
# JAX's events: a backend compile (or its cache load) and the steps before it.
_COMPILE_EVENTS = ('/jax/core/compile/backend_compile_duration',
                   '/jax/core/compile/jaxpr_trace_duration',
                   '/jax/core/compile/jaxpr_to_mlir_module_duration')
_BACKEND_COMPILE = _COMPILE_EVENTS[0]
_CACHE_HIT = '/jax/compilation_cache/cache_hits'


def default_cache_dir(environ=None):
  """The cache directory this user's runs share, or None when turned off."""
  environ = os.environ if environ is None else environ
  if CACHE_ENV in environ:
    value = environ[CACHE_ENV]
    return None if value.strip().lower() in OFF else os.path.expanduser(value)
  base = environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
  return os.path.join(base, 'varjax', 'jax')


FLAG_HELP = ('Directory of the persistent compilation cache shared by this user\'s runs, or '
             f"'off' (default: ${CACHE_ENV}, else ~/.cache/varjax/jax).")


def enable_cache(directory=None):
  """Turns JAX's persistent compilation cache on at ``directory`` (default
  ``default_cache_dir()``); 'off' (or None from the default) leaves it off.
  Returns the directory used, or None."""
  if directory is None:
    directory = default_cache_dir()
  elif directory.strip().lower() in OFF:
    directory = None
  if directory is None:
    return None
  os.makedirs(directory, exist_ok=True)
  jax.config.update('jax_compilation_cache_dir', directory)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', MIN_COMPILE_SECONDS)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
  return directory


class _Listener:
  """One process-wide listener of JAX's compile events, feeding every open CompileStats."""

  def __init__(self):
    self.lock = threading.Lock()
    self.open = []
    monitoring.register_event_duration_secs_listener(self._duration)
    monitoring.register_event_listener(self._event)

  def _duration(self, event, seconds, **kwargs):
    del kwargs
    if event in _COMPILE_EVENTS:
      with self.lock:
        for stats in self.open:
          stats.seconds += seconds
          stats.backend_events += event == _BACKEND_COMPILE

  def _event(self, event, **kwargs):
    del kwargs
    if event == _CACHE_HIT:
      with self.lock:
        for stats in self.open:
          stats.cache_hits += 1


_LISTENER = None


class CompileStats:
  """What JAX compiled while this context was open: ``seconds`` (tracing, lowering
  and backend compiles or cache loads), ``compiles`` (programs compiled) and
  ``cache_hits`` (programs loaded from the persistent cache instead)."""

  def __init__(self):
    self.seconds, self.backend_events, self.cache_hits = 0.0, 0, 0

  @property
  def compiles(self):
    return self.backend_events - self.cache_hits

  def __enter__(self):
    global _LISTENER
    if _LISTENER is None:
      _LISTENER = _Listener()
    with _LISTENER.lock:
      _LISTENER.open.append(self)
    return self

  def __exit__(self, *exc):
    with _LISTENER.lock:
      _LISTENER.open.remove(self)
    return False

  def as_dict(self):
    return {'compile_seconds': self.seconds, 'compiles': self.compiles,
            'compile_cache_hits': self.cache_hits}
