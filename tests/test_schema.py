"""hpsearch.schema is what is stored: every attribute a real study holds is declared there, with its type.

A real study on PostgreSQL (the storage whose attribute writes are hpsearch's own statements):
create-study, one worker through a grid with a repeat seed and a divergent point, stop; then every
study and trial attribute is checked against the schema. A key written as a literal somewhere, or
a value stored as another type than declared (the creation time was declared a string and stored
as a float), fails here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna

from conftest import run_cli, start_worker, tiny_spec, unique, write_spec
from hpsearch import schema


def _declared(on: str) -> dict[str, Any]:
    return {a.key: a.type for a in schema.SCHEMA.values() if a.on == on}


def _wrong(attrs: dict[str, Any], declared: dict[str, Any], where: str) -> list[str]:
    wrong = []
    for key, value in attrs.items():
        if key not in declared:
            wrong.append(f"{where}: {key!r} is not in hpsearch.schema")
            continue
        want = declared[key]
        ok = value is None or isinstance(value, want) or (want is float and isinstance(value, int))
        if not ok or (want in (int, float) and isinstance(value, bool)):
            wrong.append(f"{where}: {key!r} is {type(value).__name__} {value!r}, declared {want.__name__}")
    return wrong


def test_every_stored_attribute_is_declared_with_its_type(tmp_path: Path, pg_url: str) -> None:
    name = unique("schema")
    # lr 1e20 with sgd diverges (a divergent trial's attributes), 0.05 trains; 2 repeat seeds each.
    spec = tiny_spec(name, repeats=2, space={"lr": {"choices": [0.05, 1.0e20]}, "optimizer": {"choices": ["sgd"]}},
                     constraints={"n_params": {"max": 100000}})  # the constraint attributes too
    run_cli("create-study", str(write_spec(tmp_path, spec)), "--storage", pg_url, check=True)
    worker = start_worker(name, pg_url)
    out, _ = worker.communicate(timeout=300)
    assert worker.returncode == 0, out
    run_cli("stop", name, "--storage", pg_url, check=True)

    study = optuna.load_study(study_name=name, storage=pg_url)
    wrong = _wrong(study.user_attrs, _declared("study"), "study")
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 4 and any(t.user_attrs.get(schema.DIVERGENT) for t in trials)
    for t in trials:
        wrong += _wrong(t.user_attrs, _declared("trial"), f"trial {t.number}")
        # Optuna's own system attributes are not hpsearch's: Trial.set_constraint's "constraints:NAME".
        system = {k: v for k, v in getattr(t, "system_attrs", {}).items()
                  if not k.startswith(("_", "constraints:"))}
        wrong += _wrong(system, _declared("trial system"), f"trial {t.number} system")
    assert not wrong, "\n".join(wrong)
