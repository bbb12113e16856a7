"""Operations: status, launching workers (local, SLURM, PBS), deployment, the dashboard, the proxy."""
