"""The frame codec on its own: round trip, resync after garbage, corrupted header and body."""

from __future__ import annotations

import pytest

from edgerun.devices.serial_protocol import (MAX_PAYLOAD, FrameDecoder, Msg, ProtocolError, encode,
                                             encode_json, pack_put_data, unpack_put_data)


def test_round_trip_even_one_byte_at_a_time():
    frames = encode_json(Msg.HELLO, 1, {"protocol": 1}) + encode(Msg.PUT_DATA, 2, pack_put_data(7, b"abc"))
    dec = FrameDecoder()
    got = []
    for i in range(len(frames)):
        got += dec.feed(frames[i:i + 1])
    assert [(f.type, f.seq) for f in got] == [(Msg.HELLO, 1), (Msg.PUT_DATA, 2)]
    assert got[0].json() == {"protocol": 1} and unpack_put_data(got[1].payload) == (7, b"abc")
    assert dec.garbage_bytes == 0 and dec.bad_frames == 0


def test_garbage_before_and_between_frames_is_skipped_and_counted():
    a, b = encode(Msg.INFO, 5), encode(Msg.RUN, 6, b"{}")
    dec = FrameDecoder()
    got = dec.feed(b"\x00\xffnoise\xed" + a + b"\xed\x52junk" + b)
    assert [f.seq for f in got] == [5, 6]
    assert dec.garbage_bytes == len(b"\x00\xffnoise\xed") + len(b"\xed\x52junk")


def test_corrupted_body_is_dropped_and_its_seq_reported():
    bad = bytearray(encode(Msg.RUN, 9, b'{"argv":["x"]}'))
    bad[20] ^= 0x01
    dec = FrameDecoder()
    got = dec.feed(bytes(bad) + encode(Msg.INFO, 10))
    assert [f.seq for f in got] == [10]
    assert dec.bad_frames == 1 and dec.bad_seqs == [9]


def test_corrupted_length_cannot_stall_the_reader():
    """A flipped length bit would make a naive reader wait for bytes that never come."""
    bad = bytearray(encode(Msg.PUT_DATA, 3, b"x" * 100))
    bad[8] ^= 0x40  # inside the length field
    dec = FrameDecoder()
    assert [f.seq for f in dec.feed(bytes(bad) + encode(Msg.INFO, 4))] == [4]


def test_oversized_payload_is_refused():
    with pytest.raises(ProtocolError):
        encode(Msg.PUT_DATA, 1, b"x" * (MAX_PAYLOAD + 1))


def test_info_reply_from_firmware_fields_or_a_linux_probe():
    from edgerun.devices.serial_device import info_from_reply

    fw = info_from_reply({"info": {"arch": "armv8m", "cpu_model": "Cortex-M55", "mem_total_bytes": 4 << 20,
                                   "future_field": 1}}, {"emulated": False})
    assert (fw.arch, fw.cpu_model, fw.mem_total_bytes, fw.emulated, fw.transport) == \
        ("armv8m", "Cortex-M55", 4 << 20, False, "serial")
    linux = info_from_reply({"probe": "@@section arch\naarch64\n@@section nproc\n4\n"},
                            {"emulated": True, "emulator": "stand-in"})
    assert (linux.arch, linux.cores, linux.emulated, linux.emulator) == ("aarch64", 4, True, "stand-in")


def test_agent_refuses_a_run_meant_for_another_session_and_caches_by_whole_request(tmp_path):
    """The agent's side of "never twice", frame by frame: a RUN naming another session is not run;
    only a byte-identical repeat (type, seq, payload) is answered from the cache."""
    from edgerun.devices.serial_agent import Agent

    class Port:
        def __init__(self):
            self.out = FrameDecoder()
            self.frames = []

        def write(self, data):
            self.frames += self.out.feed(data)

    port = Port()
    agent = Agent(port, str(tmp_path / "sb"))
    count = tmp_path / "count"

    def run(seq, session, text="x"):
        port.frames.clear()
        agent.handle(FrameDecoder().feed(encode_json(Msg.RUN, seq, {
            "argv": ["sh", "-c", f"echo {text} >> {count}"], "env": {}, "cwd": None, "timeout": 10,
            "session": session}))[0])
        return [f for f in port.frames if f.type != Msg.ACK][-1]

    refused = run(1, "0123456789abcdef")
    assert refused.type == Msg.ERROR and refused.json()["kind"] == "session"
    assert refused.json()["session"] == agent.session and not count.exists()
    assert run(2, agent.session).type == Msg.RUN | Msg.REPLY
    assert run(2, agent.session).type == Msg.RUN | Msg.REPLY  # the resend: from the cache
    assert run(2, agent.session, "y").type == Msg.RUN | Msg.REPLY  # same seq, another request: run
    assert count.read_text() == "x\ny\n"
    hello = FrameDecoder().feed(encode_json(Msg.HELLO, 3, {"protocol": 2}))[0]
    agent.handle(hello)
    assert port.frames[-1].json()["session"] == agent.session and len(agent.session) >= 16
