"""Training one trial (or a fused group): settings, data, models, optimizers, the objective, tracking."""
