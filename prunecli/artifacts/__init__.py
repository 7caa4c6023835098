"""Layer 5, ``artifacts``: the bundle format (:mod:`.bundle`), loading any MODEL or bundle (:mod:`.load`), and an
ONNX file from any MODEL (:mod:`.resolve`). Decides nothing."""
