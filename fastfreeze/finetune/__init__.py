"""Training recipes: `fine_tune` and its strategies, one-cycle schedules, `lr_find`, the automatic base lr, the
few-images decision (a probe of the head) and the feature cache."""
