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


def _home_at_import() -> Path:
    from edgerun.core.paths import edgerun_home

    return edgerun_home()


_STARTING_HOME = _home_at_import()   # read at collection, before any fixture points EDGERUN_HOME at the session's


@pytest.fixture(scope="session")
def arm_toolchain():
    """The Arm toolchain environment (issue 24): the one scripts/setup built in the EDGERUN_HOME the suite
    started with (reused when its pins match), else built once here; a skip only when pip cannot reach the
    package index."""
    import os

    from edgerun.export.arm import toolchain

    path = Path(os.environ.get("EDGERUN_ARM_TOOLCHAIN") or _STARTING_HOME / "cache" / "toolchains" / "arm")
    try:
        rec = toolchain.ensure(path)
    except toolchain.ToolchainError as exc:
        if "pip install" in exc.message and any(s in exc.message for s in (
                "No matching distribution", "Could not find a version", "Failed to establish", "Network is unreachable",
                "Temporary failure in name resolution")):
            pytest.skip(f"the package index is unreachable, so the Arm toolchain cannot be built: {exc.message[:300]}")
        raise
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGERUN_ARM_TOOLCHAIN", str(path))
        yield rec
