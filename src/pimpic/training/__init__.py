"""Helpers of the pretraining engine (:mod:`pimpic.engine`): process group and device
(:mod:`.distributed`), checkpoints and resume checks (:mod:`.checkpoint`), metrics, TensorBoard
and the progress bar (:mod:`.monitor`)."""
