"""labgrid places as edgerun devices, against a real lab on loopback.

A real ``labgrid-coordinator`` and two real ``labgrid-exporter`` processes (labgrid 26.0, from the lab
venv scripts/setup builds, or the ``lab`` extra) on 127.0.0.1; places made with the real
``labgrid-client``. Exporter ``exp1`` publishes the suite's sshd as a ``NetworkService`` (place
``pi-ssh``, tag board=rpi5), a pty whose other end runs edgerun's serial agent as a ``RawSerialPort``
(exported through a real ser2net as a ``NetworkSerialPort``, rfc2217; place ``pi-uart``) and an
``AndroidDevice`` (place ``phone``: its mapping only -- no adbd can run here); ``exp2`` publishes the same
sshd again as place ``pi-b`` (tag board=rpi5), so a bench over the tag runs on two places and one
exporter can be killed.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).parent
ROOT = HERE.parents[1]
EDGERUN = [str(Path(sys.executable).with_name("edgerun"))]


def run_cli(*args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([*EDGERUN, *args], capture_output=True, text=True, env={**os.environ, **(env or {})},
                          timeout=timeout)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def _until(pred, what: str, timeout: float = 20.0, step: float = 0.1):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = pred()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"{what}: not within {timeout} s")


MAKE_PLACES = """
import json, sys
from labgrid.remote.client import start_session
from labgrid.remote.generated import labgrid_coordinator_pb2 as pb
s = start_session(sys.argv[1])
for name, match, key, value in json.loads(sys.argv[2]):
    s.loop.run_until_complete(s.stub.AddPlace(pb.AddPlaceRequest(name=name)))
    s.loop.run_until_complete(s.stub.AddPlaceMatch(pb.AddPlaceMatchRequest(placename=name, pattern=match)))
    s.loop.run_until_complete(s.stub.SetPlaceTags(pb.SetPlaceTagsRequest(placename=name, tags={key: value})))
s.loop.run_until_complete(s.stop())
"""


class Lab:
    def __init__(self, root: Path, bin_dir: Path, sshd, serial_path: str):
        self.root, self.bin, self.sshd = root, bin_dir, sshd
        self.port = _free_port()
        self.addr = f"127.0.0.1:{self.port}"
        self.procs: dict[str, subprocess.Popen] = {}
        self._start("coordinator", [str(bin_dir / "labgrid-coordinator"), "--listen", self.addr])
        _wait_port(self.port)
        (root / "exp1.yaml").write_text(
            "pi:\n  NetworkService:\n    address: 127.0.0.1\n    username: %s\n    port: %d\n"
            "uart:\n  RawSerialPort:\n    port: %s\n    speed: 115200\n"
            "phone:\n  AndroidDevice:\n    serial: R58M1\n    host: 127.0.0.1\n    port: 5037\n"
            % (sshd.user, sshd.port, serial_path))
        (root / "exp2.yaml").write_text(
            "b:\n  NetworkService:\n    address: 127.0.0.1\n    username: %s\n    port: %d\n" % (sshd.user, sshd.port))
        for name in ("exp1", "exp2"):
            self.start_exporter(name, wait=False)
        for name in ("exp1", "exp2"):
            self.wait_exporter(name)
        # the places, as `labgrid-client -p P create / add-match / set-tags` makes them, in one client session
        # (twelve labgrid-client runs cost a second each)
        places = [("pi-ssh", "exp1/pi/*/*", "board", "rpi5"), ("pi-b", "exp2/b/*/*", "board", "rpi5"),
                  ("pi-uart", "exp1/uart/*/*", "board", "uart"), ("phone", "exp1/phone/*/*", "board", "phone")]
        subprocess.run([str(bin_dir / "python"), "-I", "-c", MAKE_PLACES, self.addr, json.dumps(places)], check=True,
                       timeout=60)

    def _start(self, name: str, argv: list[str]) -> None:
        log = open(self.root / f"{name}.log", "ab")
        self.procs[name] = subprocess.Popen(argv, cwd=self.root, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL)

    def start_exporter(self, name: str, wait: bool = True) -> None:
        self._start(name, [str(self.bin / "labgrid-exporter"), "--coordinator", self.addr, "--name", name,
                           "--hostname", "127.0.0.1", str(self.root / f"{name}.yaml")])
        if wait:
            self.wait_exporter(name)

    def wait_exporter(self, name: str) -> None:
        log = self.root / f"{name}.log"
        _until(lambda: b"connected to coordinator" in log.read_bytes(), f"exporter {name} connected", timeout=60)

    def client(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.bin / "labgrid-client"), "-x", self.addr, *args], capture_output=True,
                              text=True, timeout=60, check=args[-1] not in ("resources",) and "show" not in args)

    def holder(self, place: str) -> str | None:
        out = self.client("-p", place, "show").stdout
        line = next(ln for ln in out.splitlines() if ln.strip().startswith("acquired:"))
        value = line.split(":", 1)[1].strip()
        return None if value == "None" else value

    def uri(self, place: str, **query) -> str:
        q = {"coordinator": self.addr, "identity_file": self.sshd.client_key, "known_hosts": self.sshd.known_hosts,
             **query}
        return f"labgrid://{place}?" + "&".join(f"{k}={v}" for k, v in q.items())

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture(scope="module")
def lab(tmp_path_factory, sshd):
    from edgerun.core.errors import EnvironmentProblem
    from edgerun.devices.labgrid import lab_python

    try:
        bin_dir = Path(lab_python()).parent
    except EnvironmentProblem as exc:
        pytest.skip(exc.paragraph())
    import shutil

    if not shutil.which("ser2net"):
        pytest.skip("ser2net not installed (Debian ser2net; scripts/setup installs it)")
    ptylink = sys.modules["edgerun_tests_devices_ptylink"]
    root = tmp_path_factory.mktemp("lab")
    link = ptylink.PtyLink()
    agent = subprocess.Popen([sys.executable, "-m", "edgerun.devices.serial_agent", link.agent_path,
                              str(root / "sandbox")], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
    assert "serving" in agent.stdout.readline()
    lab = Lab(root, bin_dir, sshd, link.host_path)
    yield lab
    lab.stop()
    agent.terminate()
    agent.wait(timeout=10)
    link.close()


def test_places_by_tag_map_to_ssh_serial_and_adb_and_are_held_while_open(lab, tmp_path):
    from edgerun.devices import parse_device_list, resolve_device
    from edgerun.devices.labgrid import list_places, transport_spec

    specs = parse_device_list(lab.uri("", tag="board=rpi5", work_dir=tmp_path / "wd"))
    assert sorted(s.place for s in specs) == ["pi-b", "pi-ssh"]
    # each expanded device has a URI that resolves back to it (commands pass refs around)
    assert [parse_device_list(s.ref)[0].place for s in specs] == [s.place for s in specs]

    with resolve_device(lab.uri("pi-ssh", work_dir=tmp_path / "wd")) as dev:
        assert lab.holder("pi-ssh") is not None and lab.holder("pi-b") is None
        assert dev.exec(["sh", "-c", "echo $((6*7))"], timeout=30).stdout_text.strip() == "42"
        info = dev.info()
        assert (info.transport, info.lab_place, info.lab_exporter) == ("ssh", "pi-ssh", "exp1")
    assert lab.holder("pi-ssh") is None

    uart = list_places(lab.addr, place="pi-uart")[0]  # RawSerialPort, exported by ser2net as a NetworkSerialPort
    serial_spec, res = transport_spec(parse_device_list(lab.uri("pi-uart"))[0], uart["resources"])
    assert (serial_spec.transport, res["cls"]) == ("serial", "NetworkSerialPort")
    assert serial_spec.path.startswith("rfc2217://127.0.0.1:")

    phone = list_places(lab.addr, place="phone")[0]
    adb_spec, res = transport_spec(parse_device_list(lab.uri("phone"))[0], phone["resources"])
    assert (adb_spec.transport, adb_spec.serial, adb_spec.server, res["exporter"]) == ("adb", "R58M1",
                                                                                       "127.0.0.1:5037", "exp1")


def test_a_busy_place_fails_naming_the_holder_or_is_waited_for(lab, tmp_path):
    """Two edgerun processes, one place: the second fails at once (exit 8, the holder named), or waits."""
    hold = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom edgerun.devices import resolve_device\n"
         "with resolve_device(sys.argv[1]) as dev:\n    print('held', flush=True)\n    sys.stdin.readline()\n",
         lab.uri("pi-ssh", work_dir=tmp_path / "wd")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert hold.stdout.readline().strip() == "held"
        holder = lab.holder("pi-ssh")
        res = run_cli("devices", "probe", lab.uri("pi-ssh", work_dir=tmp_path / "wd"), "--json", timeout=120)
        assert res.returncode == 8, res.stderr
        err = json.loads(res.stdout)["error"]
        assert err["type"] == "PlaceBusy" and f"acquired by {holder}" in err["message"], err
        assert "--wait SECONDS" in err["hint"]

        waiter = subprocess.Popen([*EDGERUN, "devices", "probe", lab.uri("pi-ssh", work_dir=tmp_path / "wd"),
                                   "--wait", "60", "--json"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(2.0)
        assert waiter.poll() is None, "the second edgerun did not wait for the place"
        hold.stdin.write("\n")
        hold.stdin.flush()
        out, err_text = waiter.communicate(timeout=90)
        assert waiter.returncode == 0, err_text
        assert json.loads(out)["info"]["lab_place"] == "pi-ssh"
    finally:
        if hold.poll() is None:
            hold.kill()
        hold.wait()
    _until(lambda: lab.holder("pi-ssh") is None, "pi-ssh released after both")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "sigkill"])
def test_an_interrupted_or_killed_edgerun_leaves_the_place_released(lab, tmp_path, sig):
    """Ctrl-C unwinds edgerun, which releases; SIGKILL leaves that to the lock-holding client, whose pipe closes."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys\nfrom edgerun.devices import resolve_device\n"
         "with resolve_device(sys.argv[1]) as dev:\n    print('held', flush=True)\n"
         "    dev.exec(['sleep', '60'], timeout=120)\n", lab.uri("pi-ssh", work_dir=tmp_path / "wd")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # a background suite's child ignores it
    assert proc.stdout.readline().strip() == "held"
    assert lab.holder("pi-ssh") is not None
    os.kill(proc.pid, sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -sig, err  # an uncaught KeyboardInterrupt ends Python by SIGINT
    if sig == signal.SIGINT:
        assert "KeyboardInterrupt" in err and lab.holder("pi-ssh") is None  # released before edgerun exited
    _until(lambda: lab.holder("pi-ssh") is None, f"the place released after {sig.name}", timeout=15)


def test_a_place_whose_exporter_dies_mid_run_stops_its_program_with_a_device_error(lab, tmp_path):
    import threading

    from edgerun.devices import TransportDropped, resolve_device

    caught: list = []
    started = threading.Event()
    with resolve_device(lab.uri("pi-b", work_dir=tmp_path / "wd")) as dev:
        def run():
            try:
                dev.exec(["sh", "-c", "echo started; exec sleep 60"], timeout=120,
                         on_stdout=lambda chunk: started.set())
            except Exception as exc:  # noqa: BLE001 - the test looks at what it was
                caught.append(exc)

        worker = threading.Thread(target=run)
        worker.start()
        assert started.wait(30), "the program on pi-b did not start"
        t0 = time.monotonic()
        lab.procs["exp2"].kill()
        worker.join(timeout=30)
        assert not worker.is_alive(), "the program on the lost place was not stopped"
        assert isinstance(caught[0], TransportDropped) and "pi-b was lost" in caught[0].message, caught
        assert caught[0].exit_code == 8 and time.monotonic() - t0 < 15
        with pytest.raises(TransportDropped, match="was lost"):  # and so is everything after it
            dev.exec(["true"], timeout=10)
    _until(lambda: lab.holder("pi-b") is None, "pi-b released")
    lab.start_exporter("exp2")  # the lab as it was, for the tests after this one


def _settings(**kw):
    from edgerun.profiling import ProfileSettings

    return ProfileSettings(**{"warmup": 0, "iterations": 20, "etdump": False, "task_accuracy": False, "threads": [1],
                              **kw})


def test_profile_runs_on_places_over_ssh_and_over_serial(lab, runner_bundle, tmp_path, monkeypatch):
    from edgerun.cells import CellFailure
    from edgerun.devices import parse_device_list
    from edgerun.profiling import ensure_artifact, profile

    runner_bundle("host")
    monkeypatch.syspath_prepend(str(ROOT / "tests" / "export"))
    # the export bench makes (and reuses within the session's EDGERUN_HOME, as other bench tests do)
    artifact = ensure_artifact("factories:tiny", "host", "fp32")
    refs = [s.ref for s in parse_device_list([lab.uri("pi-ssh", work_dir=tmp_path / "wd"), lab.uri("pi-uart")])]
    results = profile(str(artifact), refs, _settings(), store_path=tmp_path / "s.sqlite")
    assert not [r for r in results if isinstance(r, CellFailure)], results
    got = sorted((r.device.lab_place, r.device.lab_exporter, r.device.transport, sum(not s.warmup for s in r.samples))
                 for r in results)
    assert got == [("pi-ssh", "exp1", "ssh", 20), ("pi-uart", "exp1", "serial", 20)]
    assert all(r.accuracy.min_snr_db > 40 for r in results)
    assert lab.holder("pi-ssh") is None and lab.holder("pi-uart") is None


def test_bench_over_a_tag_runs_every_place_and_a_lost_place_fails_only_its_cells(lab, runner_bundle, tmp_path,
                                                                                 monkeypatch):
    """Both places of the tag run at once; exporter exp2 is killed as soon as its place pi-b is held (the sweep is
    deploying to it): pi-b's cell fails with a device error, pi-ssh's record is stored with its place and exporter."""
    import threading

    from edgerun.devices import parse_device_list
    from edgerun.profiling import bench
    from edgerun.store import Store

    runner_bundle("host")
    monkeypatch.syspath_prepend(str(ROOT / "tests" / "export"))
    refs = [s.ref for s in parse_device_list(lab.uri("", tag="board=rpi5", work_dir=tmp_path / "wd"))]
    assert sorted(r.split("?")[0] for r in refs) == ["labgrid://pi-b", "labgrid://pi-ssh"]

    def kill_exp2():
        _until(lambda: lab.holder("pi-b") is not None, "pi-b held by the bench", timeout=120, step=0.05)
        lab.procs["exp2"].kill()

    killer = threading.Thread(target=kill_exp2)
    killer.start()
    with Store(tmp_path / "s.sqlite") as store:
        summary = bench("factories:tiny", ["host"], ["fp32"], refs, _settings(iterations=200), store=store)
        devs = [store.get(run_id).device for run_id in summary["run_ids"]]
    killer.join()
    assert [(d.lab_place, d.lab_exporter, d.transport) for d in devs] == [("pi-ssh", "exp1", "ssh")]
    failed = summary["failures"]
    assert len(failed) == 1 and "pi-b" in failed[0]["device"], failed
    assert failed[0]["error"]["exit_code"] == 8 and "pi-b was lost" in failed[0]["error"]["message"], failed
    _until(lambda: lab.holder("pi-b") is None and lab.holder("pi-ssh") is None, "both places released")


def test_labgrid_uris_are_checked_before_any_lab_is_asked(monkeypatch):
    from edgerun.devices import InventoryError, parse_device_list, parse_uri

    monkeypatch.setenv("LG_COORDINATOR", "lab.example:20408")
    spec = parse_uri("labgrid://pi5-a?via=serial&wait=30")
    assert (spec.place, spec.coordinator, spec.via, spec.wait) == ("pi5-a", "lab.example:20408", "serial", 30.0)
    assert parse_uri("labgrid://pi5-a?coordinator=10.0.0.2:20408").coordinator == "10.0.0.2:20408"
    for uri, words in [("labgrid://", "give a place"), ("labgrid://a?tag=board=rpi5", "one of them"),
                       ("labgrid://?tag=Board", "KEY=VALUE"), ("labgrid://a?via=telnet", "via must be"),
                       ("labgrid://a?wait=-1", "wait must be"), ("labgrid://a?coordinator=-x", "not HOST:PORT"),
                       ("labgrid://a/b", "names a place")]:
        with pytest.raises(InventoryError, match=words):
            parse_device_list(uri)
