"""The queue of trials: the plan and its issuing, claims, faults (reaping, retries) and a configuration's
other seeds; each through the study's storage backend (hpsearch.storage.protocol), whichever it is."""

import optuna

# hpsearch says what happens itself; Optuna's per-trial INFO lines would bury it.
optuna.logging.set_verbosity(optuna.logging.WARNING)
