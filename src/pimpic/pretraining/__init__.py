"""Self-supervised pretraining: box geometry (:mod:`.geometry`), losses (:mod:`.losses`), the
per-volume samplers (:mod:`.samplers`), the pretext tasks (:mod:`.methods`) and the loop that
trains them (:mod:`.engine`)."""
