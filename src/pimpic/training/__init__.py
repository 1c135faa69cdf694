"""What every training loop shares: the run folder and its create / resume / overwrite policy
(:mod:`.run_folder`), process group and device (:mod:`.distributed`), checkpoints
(:mod:`.checkpoint`), metrics, TensorBoard and the progress bar (:mod:`.monitor`)."""
