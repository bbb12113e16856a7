"""The public surface: what `hpsearch.__all__` promises resolves, and importing it stays light."""

from __future__ import annotations

import subprocess
import sys

import hpsearch


def test_every_public_name_resolves() -> None:
    for name in hpsearch.__all__:
        assert getattr(hpsearch, name) is not None, name
    assert hpsearch.register_dataset("public-test-never-used") is not None
    assert callable(hpsearch.should_stop) and issubclass(hpsearch.Preempted, Exception)
    assert issubclass(hpsearch.SpecError, hpsearch.HpsearchError)


def test_an_unknown_name_is_an_attribute_error() -> None:
    try:
        hpsearch.no_such_name  # noqa: B018
    except AttributeError as exc:
        assert "no_such_name" in str(exc)
    else:
        raise AssertionError("hpsearch.no_such_name is not public")


def test_a_user_objective_imports_without_torch() -> None:
    """A worker running a user objective never imports torch unless the objective does."""
    code = ("import sys, hpsearch; hpsearch.should_stop; hpsearch.Preempted; hpsearch.load_spec; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr
