"""One interface, every transport at once: the same program deployed and run concurrently on a
local, a qemu-aarch64, an ssh (loopback sshd, aarch64 under a qemu wrapper) and a serial (pty
agent) device, with matching outputs."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from edgerun.devices import parse_uri, resolve_device, sync_files

pytestmark = pytest.mark.qemu


def test_same_program_on_four_transports_concurrently(sshd, serial_line, host_bundle, aarch64_bundle,
                                                      bundle_argv, tmp_path):
    serial_uri, *_ = serial_line()
    jobs = {
        "local": (f"local://?work_dir={tmp_path}/local", host_bundle, ["./prog"]),
        "qemu": (f"qemu-aarch64://?target=rpi5&work_dir={tmp_path}/qemu", aarch64_bundle, bundle_argv()),
        # a wrapper runs a command: only an inventory entry (here its options) may give one
        "ssh": (parse_uri(sshd.uri(work_dir=f"{tmp_path}/ssh"), name="ssh",
                          options={"wrapper": "qemu-aarch64 -cpu cortex-a76"}), aarch64_bundle, bundle_argv()),
        "serial": (serial_uri, host_bundle, ["./prog"]),
    }

    def deploy_and_run(name):
        uri, bundle, argv = jobs[name]
        with resolve_device(uri) as dev:
            synced = sync_files(dev, sorted(bundle.iterdir()))
            src = tmp_path / f"{name}-in.txt"
            src.write_text(f"hello from {name}\n")
            dev.push(src, f"{synced.dest}/in.txt")
            res = dev.exec(argv + ["copy", "in.txt", "out.txt"], timeout=120, cwd=synced.dest,
                           env={"EDGERUN_TEST": "same"})
            dev.pull(f"{synced.dest}/out.txt", tmp_path / f"{name}-out.txt")
            return res, dev.info(), (tmp_path / f"{name}-out.txt").read_text()

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = dict(zip(jobs, pool.map(deploy_and_run, jobs)))

    for name, (res, info, pulled) in results.items():
        assert res.rc == 0, (name, res.stderr_text)
        machine, rest = res.stdout_text.strip().split(" ", 1)
        assert rest == "[copy] [in.txt] [out.txt] env=same", name
        assert machine == f"machine={info.arch}", name
        assert pulled == f"HELLO FROM {name.upper()}\n", name
    assert results["qemu"][1].emulated and results["ssh"][1].emulated and results["serial"][1].emulated
    assert not results["local"][1].emulated
    assert results["ssh"][1].arch == results["qemu"][1].arch == "aarch64"
