"""Layer 4 (beside ``train``, independent of it), ``runtime``: the deployment runtime - onnxruntime sessions in a
measuring process and their statistics (:mod:`.timing`, worker :mod:`._worker`), a model against its dense original
(:mod:`.pair`), the latency model (:mod:`.latency_model`: layer tables, the channel staircase, the predictor),
export with verification (:mod:`.export`), INT8 (:mod:`.quantize`) and bench gates (:mod:`.bench`). Never trains."""
