from pathlib import Path

import pytest

HERE = Path(__file__).parent


@pytest.fixture(scope="session", autouse=True)
def _factories_on_path():
    """Make ``factories:...`` importable as a user model path, for in-process and CLI runs."""
    import os
    import sys

    sys.path.insert(0, str(HERE))
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(HERE) + (os.pathsep + old if old else "")
    yield
    sys.path.remove(str(HERE))
    if old is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = old
