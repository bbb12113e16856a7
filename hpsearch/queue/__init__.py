"""The queue of trials: the plan and its issuing, claims, faults (reaping, retries) and repeats."""

import optuna

# hpsearch says what happens itself; Optuna's per-trial INFO lines would bury it.
optuna.logging.set_verbosity(optuna.logging.WARNING)
