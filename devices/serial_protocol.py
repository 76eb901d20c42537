"""The framed protocol spoken over a UART between edgerun and a board-side agent (protocol 2, frames v1).

See ``SERIAL_PROTOCOL.md`` next to this file for the specification; this module is its reference
implementation, shared by the host side (:mod:`edgerun.devices.serial_device`) and the Python
agent (:mod:`edgerun.devices.serial_agent`).

A frame (all integers little-endian)::

    offset size  field
    0      2     magic      0xED 0x52
    2      1     version    1 (FRAME_VERSION: the framing; unchanged since protocol 1)
    3      1     type       message type (replies: request type | 0x80)
    4      2     seq        request number; a reply echoes its request's seq
    6      4     length     payload bytes, <= MAX_PAYLOAD
    10     4     hcrc       CRC-32 of bytes 0..9 (a corrupted length cannot stall the reader)
    14     len   payload
    14+len 4     crc        CRC-32 of bytes 0..14+len-1

The decoder resynchronises after garbage or a corrupted frame by dropping one byte and searching
for the next magic; it counts what it dropped.

Two versions: ``FRAME_VERSION`` is the byte in every header (the framing above, still 1), and
``PROTOCOL`` is what HELLO negotiates (the messages and their payloads). Protocol 2 added agent
sessions: the agent names itself with a random ``session`` in its HELLO reply, and a RUN carries
the session it is meant for, so a resend can never execute in a restarted agent.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass, field
from enum import IntEnum

MAGIC = b"\xedR"
FRAME_VERSION = 1                  # the header's version byte: the framing, unchanged by protocol 2
PROTOCOL = 2                       # the newest protocol (HELLO); 2 added agent sessions
PROTOCOLS = (1, 2)                 # protocols this codebase speaks, host and agent alike
HEADER = struct.Struct("<2sBBHI")  # magic, version, type, seq, length
HEADER_SIZE = HEADER.size + 4      # + header CRC
TRAILER_SIZE = 4
MAX_PAYLOAD = 256 * 1024
CHUNK = 4 * 1024                   # file bytes per PUT_DATA / GET_DATA: small frames survive noisy lines


class Msg(IntEnum):
    HELLO = 0x01      # host -> agent: {"protocol": 2}; reply {"protocol", "session", "agent", "emulated", ...}
    INFO = 0x02       # reply {"probe": "<probe script output>"} or {"info": {DeviceInfo fields}}
    PUT_OPEN = 0x03   # {"path", "size", "mode"}; reply {}
    PUT_DATA = 0x04   # u64 offset + bytes; reply {"received": n}
    PUT_CLOSE = 0x05  # {"sha256"}; reply {} once the file is complete, verified and renamed
    GET_OPEN = 0x06   # {"path"}; reply {"size", "sha256"}
    GET_DATA = 0x07   # {"path", "offset", "size"}; reply: raw bytes
    RUN = 0x08        # {"argv", "env", "cwd", "timeout", "session"}; reply RESULT (below)
    ACK = 0x7D        # "got it, working on it" (sent before a RUN/INFO; payload empty)
    NAK = 0x7E        # "your frame arrived corrupted": resend (payload empty)
    ERROR = 0x7F      # reply {"message", "kind"} instead of the expected reply (kind "session": + "session")
    REPLY = 0x80      # OR-ed into a request's type for its reply


# RESULT (reply to RUN): {"rc", "signal", "duration_s", "timed_out", "stdout", "stderr"} with output
# base64-encoded inline, or {"stdout_path", "stderr_path"} to GET when it does not fit a frame.


class ProtocolError(Exception):
    pass


def crc32(data: bytes) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


def encode(msg_type: int, seq: int, payload: bytes = b"") -> bytes:
    if len(payload) > MAX_PAYLOAD:
        raise ProtocolError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    head = HEADER.pack(MAGIC, FRAME_VERSION, msg_type, seq & 0xFFFF, len(payload))
    head += struct.pack("<I", crc32(head))
    body = head + payload
    return body + struct.pack("<I", crc32(body))


def encode_json(msg_type: int, seq: int, obj: dict) -> bytes:
    return encode(msg_type, seq, json.dumps(obj, separators=(",", ":")).encode())


@dataclass(frozen=True)
class Frame:
    type: int
    seq: int
    payload: bytes

    def json(self) -> dict:
        return json.loads(self.payload.decode()) if self.payload else {}


@dataclass
class FrameDecoder:
    """Feed bytes in, take whole frames out. Never raises on bad input; counts it instead."""

    buf: bytearray = field(default_factory=bytearray)
    garbage_bytes: int = 0   # bytes dropped while looking for a frame
    bad_frames: int = 0      # frames whose header or body CRC did not match
    bad_seqs: list = field(default_factory=list)  # seq of frames with a good header but bad body

    def feed(self, data: bytes) -> list[Frame]:
        self.buf += data
        frames = []
        while True:
            frame = self._next()
            if frame is None:
                return frames
            frames.append(frame)

    def _drop(self, n: int) -> None:
        del self.buf[:n]
        self.garbage_bytes += n

    def _next(self) -> Frame | None:
        while True:
            start = self.buf.find(MAGIC)
            if start < 0:
                keep = 1 if self.buf[-1:] == MAGIC[:1] else 0  # a magic may straddle two reads
                self._drop(len(self.buf) - keep)
                return None
            if start:
                self._drop(start)
            if len(self.buf) < HEADER_SIZE:
                return None
            magic, version, msg_type, seq, length = HEADER.unpack_from(self.buf)
            (hcrc,) = struct.unpack_from("<I", self.buf, HEADER.size)
            if hcrc != crc32(bytes(self.buf[:HEADER.size])) or version != FRAME_VERSION or length > MAX_PAYLOAD:
                self.bad_frames += hcrc != crc32(bytes(self.buf[:HEADER.size]))
                self._drop(1)
                continue
            total = HEADER_SIZE + length + TRAILER_SIZE
            if len(self.buf) < total:
                return None
            (crc,) = struct.unpack_from("<I", self.buf, HEADER_SIZE + length)
            if crc != crc32(bytes(self.buf[:HEADER_SIZE + length])):
                self.bad_frames += 1
                self.bad_seqs.append(seq)
                self._drop(1)
                continue
            payload = bytes(self.buf[HEADER_SIZE:HEADER_SIZE + length])
            del self.buf[:total]
            return Frame(msg_type, seq, payload)


def pack_put_data(offset: int, data: bytes) -> bytes:
    return struct.pack("<Q", offset) + data


def unpack_put_data(payload: bytes) -> tuple[int, bytes]:
    if len(payload) < 8:
        raise ProtocolError("PUT_DATA payload shorter than its offset")
    (offset,) = struct.unpack_from("<Q", payload)
    return offset, payload[8:]
