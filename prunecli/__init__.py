"""prunecli: prune a trained PyTorch model to an explicit budget, verify and measure it.

The package import stays light (no torch); the command line lives in :mod:`prunecli.cli`.
"""

__version__ = "0.1.0"


def load_bundle(path):
    """Rebuild a pruned model from a prunecli bundle directory (no pickles). See prunecli.bundle."""
    from .bundle import load_bundle as _load

    return _load(path)
