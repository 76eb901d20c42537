"""A device that computes wrong results fails the run (exit 16), and compare counts the regression.

Real programs on the real aarch64 runner under real qemu: ``-cpu max`` turns on SME, under which
XNNPACK's int8 kernels compute wrong results here (the board's CPU model, cortex-a76, computes them
right). The URI ``qemu-aarch64://?cpu=max`` is refused, so the wrong device is a local device whose
inventory entry wraps its programs in ``qemu-aarch64 -cpu max``. Skips, saying so, on a qemu whose ``max`` model computes them correctly.
"""

from __future__ import annotations

import json

import pytest

pytestmark = [pytest.mark.qemu, pytest.mark.slow]


def _profile(cli, art, device, store, *extra):
    return cli("profile", str(art), "--device", device, "--iterations", "2", "--warmup", "0", "--no-etdump",
               "--store", str(store), "--json", *extra, timeout=900)


def test_wrong_outputs_on_the_device_fail_the_run_and_compare_counts_it(cli, aarch64_bundle, artifacts, qemu_board,
                                                                        tmp_path):
    store = tmp_path / "s.sqlite"
    art = artifacts["int8"]
    # `qemu-aarch64://?cpu=max` is refused up front; an inventory's explicit wrapper still reaches it
    inv = tmp_path / "devices.toml"
    inv.write_text('[devices.emu-max]\nuri = "local://"\nwrapper = ["qemu-aarch64", "-cpu", "max"]\n')
    bad = _profile(cli, art, "emu-max", store, "--inventory", str(inv))
    out = json.loads(bad.stdout)
    run = out["runs"][0]
    snrs = [o["snr_db"] for o in run["accuracy"]["outputs"]]  # null: bit-exact
    if all(x is None or x > 30 for x in snrs):
        pytest.skip("this qemu-aarch64 computes XNNPACK int8 correctly under -cpu max")
    assert bad.returncode == 16, bad.stderr[-2000:]
    assert out["ok"] is False and run["accuracy"]["passed"] is False
    [failure] = out["failures"]
    assert failure["error"]["type"] == "AccuracyFailed" and failure["error"]["run_id"] == run["run_id"]
    assert "miss the artifact's accuracy thresholds" in failure["error"]["message"]
    assert "SNR" in failure["error"]["message"] and "cpu max" in failure["error"]["message"]

    good = _profile(cli, art, "qemu-aarch64://?cpu=cortex-a76", store)
    assert good.returncode == 0, good.stderr[-2000:]
    good_run = json.loads(good.stdout)["runs"][0]
    assert good_run["accuracy"]["passed"] is True

    cmp = cli("compare", good_run["run_id"], run["run_id"], "--store", str(store), "--json")
    c = json.loads(cmp.stdout)
    assert c["accuracy_regressions"], c
    assert any("thresholds" in r or "SNR" in r for r in c["accuracy_regressions"])
