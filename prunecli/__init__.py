"""prunecli: prune a trained PyTorch model to an explicit budget, verify and measure it.

The package import stays light (no torch); the command line lives in :mod:`prunecli.cli`.
The code is layered, bottom first: core < models < graph < runtime | train < artifacts < plan < pipeline < cli
(README "How the code is laid out").
"""

from prunecli.core.version import __version__

__all__ = ["__version__", "load_bundle"]


def load_bundle(path, arch=None):
    """Rebuild a pruned model from a prunecli bundle directory (no pickles, no code named in the bundle).

    ``arch`` is the architecture spec to rebuild from when the bundle was made from user code
    (``file.py:factory``): prunecli never runs code named inside a file, so pass the spec you trust.
    See :mod:`prunecli.artifacts.bundle`.
    """
    from prunecli.artifacts.bundle import load_bundle as _load

    return _load(path, arch=arch)
