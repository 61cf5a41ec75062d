"""Directions to describe: sparse-autoencoder features, steering vectors, probe weights, any ``(n, d)`` tensor.

- :mod:`~patchscopes.vectors.sae`: :class:`SAE` and :func:`load_sae`, a sparse autoencoder read from a local
  folder in SAELens's saved layout (``cfg.json`` + ``sae_weights.safetensors``); its decoder rows are the
  feature directions.
- :mod:`~patchscopes.vectors.steering`: :func:`contrast_vector`, the mean difference of a layer's states over two
  prompt sets (a steering vector from contrast pairs), :func:`load_vectors` (a tensor file or an SAE folder) and
  :func:`check_vectors`, which refuses a vector of the wrong width, NaN or infinite entries, or zero length.

:func:`patchscopes.describe_vectors` (:mod:`patchscopes.experiments.vectors`) turns any of these into text.

Imports: the root framework (errors, specs), the engine's :func:`~patchscopes.engine.capture_states` and the
models; never the experiments, the CLI or the explorer.
"""

from patchscopes.vectors.sae import SAE, load_sae
from patchscopes.vectors.steering import check_vectors, contrast_vector, load_vectors

__all__ = ["SAE", "check_vectors", "contrast_vector", "load_sae", "load_vectors"]
