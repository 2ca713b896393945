"""Import Keras 3 on the torch backend (never TensorFlow): :func:`import_keras`.

Keras chooses its backend once, when it is first imported, from ``KERAS_BACKEND`` (else
``~/.keras/keras.json``, else TensorFlow). Setting that variable before the first import is
the only way to choose it, so this module (and nothing else of modelhost) writes it, and
only when Keras is not imported yet. A user's own ``KERAS_BACKEND`` is kept; if it names
another backend, or Keras was imported with another backend before, loading is refused.
"""

from __future__ import annotations

import os
import sys
from types import ModuleType

from modelhost.errors import ConfigError

BACKEND = "torch"


def import_keras() -> ModuleType:
    """Return the ``keras`` module, running on the torch backend.

    Raises:
        ImportError: Keras is not installed (``runtimes/registry.py`` names the extra).
        ConfigError: ``KERAS_BACKEND`` names another backend, Keras was imported on
            another one before, or it is Keras 2.

    Example:
        >>> import_keras().backend.backend()
        'torch'
    """
    if "keras" not in sys.modules:
        chosen = os.environ.setdefault("KERAS_BACKEND", BACKEND)
        if chosen != BACKEND:  # refused before the import: Keras would import that framework
            raise ConfigError(
                f"KERAS_BACKEND is {chosen!r}; modelhost runs Keras on {BACKEND!r} only: "
                f"unset KERAS_BACKEND or set it to {BACKEND}"
            )
    import keras as module

    keras: ModuleType = module
    version = str(getattr(keras, "__version__", "0"))
    if int(version.split(".")[0]) < 3:
        raise ConfigError(
            f"keras {version} is installed; modelhost needs Keras 3: pip install 'modelhost[keras]'"
        )
    backend = str(keras.backend.backend())
    if backend != BACKEND:
        raise ConfigError(
            f"Keras runs on the {backend!r} backend (it was imported before modelhost chose "
            f"one); modelhost runs Keras on {BACKEND!r} only: import modelhost's Keras runtime "
            f"first, or set KERAS_BACKEND={BACKEND}"
        )
    return keras
