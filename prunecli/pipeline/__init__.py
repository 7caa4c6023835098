"""Layer 7, ``pipeline``: stages in sequence - schedules (:mod:`.schedules`: ``OneShot``, ``Agp``, ``Soft``), the
prune config (:mod:`.config`), refusals before work (:mod:`.preflight`), ``run_prune`` (:mod:`.prune`), its report
(:mod:`.report`, :mod:`.markdown`, :mod:`.plots`), inspect (:mod:`.inspection`), the sensitivity command's stage
(:mod:`.sensitivity`) and the demo (:mod:`.demo`). Parses no flags."""
