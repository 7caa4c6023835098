"""Layer 3, ``graph``: the channel dependency graph and everything measured on it - Torch-Pruning tracing and its
mends (:mod:`.tracing`), channel groups and their steps (:mod:`.groups`), attention heads (:mod:`.attention`),
shuffle widths (:mod:`.widths`), cost counting (:mod:`.cost`), the Plan data (:mod:`.plans`), and physical shrink
with the check against the dense model (:mod:`.shrink`: ``remove_channels_``, ``shrink_copy``). Never chooses
ratios."""
