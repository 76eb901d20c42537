from pathlib import Path

import pytest

HERE = Path(__file__).parent


@pytest.fixture(scope="session", autouse=True)
def _factories_on_path():
    """Make ``factories:...`` importable as a user model path, for in-process and CLI runs."""
    import os

    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(HERE))
        mp.setenv("PYTHONPATH", str(HERE), prepend=os.pathsep)
        yield
