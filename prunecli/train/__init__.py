"""Layer 4 (beside ``runtime``, independent of it), ``train``: data readers, one per source (:mod:`.data`),
fine-tuning with distillation and evaluation (:mod:`.finetune`). Never exports."""
