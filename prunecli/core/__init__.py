"""Layer 1, ``core``: what every stage shares and no stage owns - the error family and its exit codes
(:mod:`.errors`), registries with helpful misses (:mod:`.registry`), validation helpers (:mod:`.checks`), the user
cache (:mod:`.cache`), stage deadlines (:mod:`.deadline`), interrupts (:mod:`.interrupts`), device placement
(:mod:`.device`), torchrun ranks (:mod:`.distributed`) and safe output writing (:mod:`.outputs`). Knows nothing of
models. Imports nothing above it."""
