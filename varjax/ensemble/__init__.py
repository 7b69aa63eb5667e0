"""N models as one program: ``Ensemble`` and what it is built from.

``ensemble.py`` the programs of a run and the arrays that parameterise them;
``build.py`` the Ensemble a run uses, its chunk fitted to the compiled programs;
``programs.py`` a program compiled once and reused; ``abstract.py`` programs
compiled from abstract shapes; ``chunk_loop.py`` one model's function over a
device's models; ``mesh.py`` the 'models' mesh and its shardings; ``options.py``
the platform-dependent choices; ``chunk_fit.py`` how many models per chunk fit;
``grid.py`` per-model hyperparameters of a sweep inside one ensemble.
"""

from varjax.ensemble.build import build
from varjax.ensemble.ensemble import Ensemble

__all__ = ['Ensemble', 'build']
