"""The study spec: loading and validating YAML, the search space, the catalogue of names."""
