"""Whether Ray is installed: the one check and the one line that says how to install it.

Ray is an optional extra (`pip install 'batchrun[ray]'`). Choosing the engine only asks whether
Ray is there (`require_ray`: importing Ray and Ray Data takes ~1.5 s, which a run overlaps with
its start); whatever imports Ray later does it through `load`, so that a Ray that is missing,
broken or without its Data library is the same one line and exit 2, never a traceback.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from batchrun.errors import UsageError

NO_RAY = "--engine ray needs Ray: pip install 'batchrun[ray]'"


def require_ray() -> None:
    """Exit 2 with how to install Ray when it is not installed; imports nothing."""
    if importlib.util.find_spec("ray") is None:
        raise UsageError(NO_RAY)


def load(module: str = "ray") -> ModuleType:
    """`module` (`ray`, or a part of it such as `ray.data`), imported; exit 2 with how to
    install Ray when the import fails."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UsageError(NO_RAY) from None
