"""The worker: the claim loop (loop), one trial's life (trial), what trains it (train), stopping and signals (stopping), bookkeeping (record), its share of the machine: threads and GPU (share)."""
