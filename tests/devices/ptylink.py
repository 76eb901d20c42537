"""A serial line for tests: two real pseudo-terminal pairs joined by a relay thread.

The host opens one slave (``host_path``), the agent the other (``agent_path``); the relay copies
bytes between the masters and can make the line noisy on purpose -- insert garbage bytes, flip
bits, or drop one whole frame -- the way a real UART with a bad cable or a reset board would.
"""

from __future__ import annotations

import os
import random
import select
import threading
import tty
from dataclasses import dataclass, field
from typing import Callable


@dataclass
class Noise:
    garbage_prob: float = 0.0   # per chunk: insert 1..16 random bytes before it
    flip_prob: float = 0.0      # per chunk: flip one random bit in it
    seed: int = 1234
    # agent->host frame filter: given a decoded frame, return False to drop it (once per match)
    drop: Callable | None = None
    counts: dict = field(default_factory=lambda: {"garbage": 0, "flips": 0, "dropped": 0})


class PtyLink:
    def __init__(self, noise: Noise | None = None):
        self.noise = noise or Noise()
        self._rng = random.Random(self.noise.seed)
        self.m_host, self.s_host = os.openpty()
        self.m_agent, self.s_agent = os.openpty()
        for fd in (self.s_host, self.s_agent):  # raw from the start: no echo, no line editing
            tty.setraw(fd)
        self.host_path = os.ttyname(self.s_host)
        self.agent_path = os.ttyname(self.s_agent)
        self._stop = threading.Event()
        self._a2h_buf = bytearray()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _mangle(self, data: bytes) -> bytes:
        n = self.noise
        if n.flip_prob and self._rng.random() < n.flip_prob:
            data = bytearray(data)
            i = self._rng.randrange(len(data))
            data[i] ^= 1 << self._rng.randrange(8)
            data = bytes(data)
            n.counts["flips"] += 1
        if n.garbage_prob and self._rng.random() < n.garbage_prob:
            data = bytes(self._rng.randrange(256) for _ in range(self._rng.randint(1, 16))) + data
            n.counts["garbage"] += 1
        return data

    def _filter_a2h(self, data: bytes) -> bytes:
        if self.noise.drop is None:
            return data
        from edgerun.devices.serial_protocol import FrameDecoder, encode

        dec = FrameDecoder(buf=self._a2h_buf)
        out = b""
        for frame in dec.feed(data):
            if self.noise.drop(frame):
                self.noise.counts["dropped"] += 1
                continue
            out += encode(frame.type, frame.seq, frame.payload)
        self._a2h_buf = dec.buf
        return out

    def _run(self) -> None:
        pairs = {self.m_host: self.m_agent, self.m_agent: self.m_host}
        while not self._stop.is_set():
            ready, _, _ = select.select(list(pairs), [], [], 0.05)
            for fd in ready:
                try:
                    data = os.read(fd, 4096)
                except OSError:
                    continue
                if not data:
                    continue
                if fd == self.m_agent:
                    data = self._filter_a2h(data)
                if data:
                    data = self._mangle(data)
                    os.write(pairs[fd], data)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        for fd in (self.m_host, self.s_host, self.m_agent, self.s_agent):
            try:
                os.close(fd)
            except OSError:
                pass
