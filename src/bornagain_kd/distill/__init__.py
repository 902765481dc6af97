"""The born-again methods as plain functions of tensors: BAN losses (ban_losses.py, presets declared in
LOSS_PRESETS) and BAM's teacher-annealed targets (bam_targets.py, arms declared in TARGET_ARMS)."""
