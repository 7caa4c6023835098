"""Layer 2, ``models``: what a model is before it is pruned - architecture specs, data vs code (:mod:`.arch`), the
built-in zoo (:mod:`.zoo`), presets (:mod:`.presets`) and weight-file readers that never unpickle code
(:mod:`.formats`). Never prunes."""
