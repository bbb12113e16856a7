"""The worker: the claim -> train -> tell loop, signals, devices."""
