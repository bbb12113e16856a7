"""The queue of trials: the plan and its issuing, claims, faults (reaping, retries) and repeats."""
