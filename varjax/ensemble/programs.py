"""Each ensemble program compiled once, then its executable reused.

A ``Program`` wraps a jitted function. ``compile(*args)`` compiles it ahead of
time for the shapes and dtypes of ``args`` (arrays, or ShapeDtypeStructs with
shardings for compile-only devices) and keeps the executable; calling the
program runs the kept executable for its arguments' signature, compiling on
the first call of a new one. So the executables that fitting
``models_per_chunk`` compiles are the ones the run executes, and a program
compiled before training (the step after the whitening bias freezes) never
stalls a step.

Example:
  >>> step = Program('train_step', jax.jit(fn, donate_argnums=0))   # doctest: +SKIP
  >>> step.compile(*abstract_args).memory_analysis()                  # doctest: +SKIP
  >>> state, metrics = step(state, *args)                             # doctest: +SKIP
"""

import time

import jax


def signature(args):
  """What an executable is specialised to: the pytree structure, shapes and dtypes."""
  leaves, treedef = jax.tree.flatten(args)
  return treedef, tuple((tuple(x.shape), str(x.dtype)) for x in leaves)


class Program:
  """A jitted function whose compiled executables are kept, one per argument signature."""

  def __init__(self, name, jitted):
    self.name = name
    self.jitted = jitted
    self.executables = {}
    self.compile_seconds = 0.0

  def compile(self, *args):
    """The executable for ``args``' signature, compiled now unless it already is."""
    key = signature(args)
    if key not in self.executables:
      start = time.perf_counter()
      self.executables[key] = self.jitted.trace(*args).lower().compile()
      self.compile_seconds += time.perf_counter() - start
    return self.executables[key]

  def __call__(self, *args):
    return self.compile(*args)(*args)
