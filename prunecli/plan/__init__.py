"""Layer 6, ``plan``: which channels go - budget targets (:mod:`.targets`), the plan config (:mod:`.config`),
criteria (:mod:`.criteria`), allocators, one per file or folder (:mod:`.allocators`: ``Uniform``, ``Global``,
``Latency``, ``Sensitivity``, ``Learned``), the exact budget fit (:mod:`.budget`), the latency fit and its
measurements (:mod:`.latency_fit`, :mod:`.latency_bench`), the constraints (:mod:`.constraints`) and the stage
(:mod:`.stage`: ``plan_model``). Writes no files."""
