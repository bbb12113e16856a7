"""The `hpsearch` command; the only place that turns errors into exit codes."""
