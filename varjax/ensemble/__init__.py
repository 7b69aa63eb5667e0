"""N models as one program: ``Ensemble`` and what it is built from.

``ensemble.py`` the programs of a run and the arrays that parameterise them;
``programs.py`` each program from abstract shapes; ``chunk_loop.py`` one
model's function over a device's models; ``mesh.py`` the 'models' mesh and its
shardings; ``options.py`` the platform-dependent choices; ``chunk_fit.py`` how
many models per chunk fit; ``grid.py`` per-model hyperparameters of a sweep
inside one ensemble.
"""

from varjax.ensemble.ensemble import Ensemble
from varjax.ensemble.ensemble import model_key

__all__ = ['Ensemble', 'model_key']
