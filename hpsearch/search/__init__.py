"""Search: samplers, pruners and the sampler filters."""
