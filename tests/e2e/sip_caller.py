"""Caller (b): a real SIP call. sipp (Debian's sip-tester) sends the INVITE to livekit-sip, plays a
pcap of G.711 mu-law RTP (espeak-ng speech and silence, made here) and hangs up with a BYE.

sipp does not keep what it receives, so what the caller hears is read off the wire: an AF_PACKET
socket on loopback (root; the tier runs in its own network namespace) sees the RTP livekit-sip
sends to the caller's media port, decodes it and marks each 20 ms packet as speech or not.
Timings come from sipp's message trace (wall-clock stamps of the INVITE, the 200 OK, the BYE).
"""

from __future__ import annotations

import asyncio
import ctypes
import re
import socket
import string
import struct
import threading
import time
import wave
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from tests.e2e import audio
from tests.e2e.stack import E2E, free_port, free_port_range
from tests.e2e.timeline import Heard

RATE = 8000
PACKET = 160  # 20 ms of G.711
ETH_P_ALL = 0x0003
PACKET_HOST = 0  # sll_pkttype of a packet delivered to this host (lo shows each one twice)
SO_ATTACH_FILTER = 26
SO_RCVBUFFORCE = 33

# Classic BPF: keep only IPv4/UDP datagrams of 180 bytes (8 UDP + 12 RTP + 160 of 20 ms G.711), so
# the kernel drops the WebRTC traffic on loopback before it reaches this (Python) reader.
_FILTER = [
    (0x28, 0, 0, 12),      # ldh [12]            ethertype (lo has a 14-byte Ethernet header)
    (0x15, 0, 5, 0x0800),  # jeq IPv4
    (0x30, 0, 0, 23),      # ldb [23]            IP protocol
    (0x15, 0, 3, 17),      # jeq UDP
    (0x28, 0, 0, 38),      # ldh [38]            UDP length (20-byte IP header)
    (0x15, 0, 1, 8 + 12 + PACKET),
    (0x06, 0, 0, 0xFFFF),  # ret: keep
    (0x06, 0, 0, 0),       # ret: drop
]


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte),
                ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


def _attach_filter(sock: socket.socket) -> None:
    prog = (_SockFilter * len(_FILTER))(*[_SockFilter(*ins) for ins in _FILTER])
    fprog = _SockFprog(len(_FILTER), ctypes.cast(prog, ctypes.POINTER(_SockFilter)))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, bytes(fprog))


def write_pcap(path: Path, pcm: bytes, *, ssrc: int = 0x5E2E0001) -> float:
    """`pcm` (8 kHz) as a pcap of RTP/PCMU packets, 20 ms apart, for sipp's play_pcap_audio.
    Addresses and ports in the file are placeholders: sipp sends from its media port to the
    address the answer's SDP names. Returns the duration in seconds."""
    ulaw = audio.ulaw_encode(pcm + b"\x00\x00" * (-(len(pcm) // 2) % PACKET))
    out = bytearray(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
    t0 = 1_000_000_000
    for n, i in enumerate(range(0, len(ulaw), PACKET)):
        rtp = struct.pack("!BBHII", 0x80, 0x80 if n == 0 else 0x00, n & 0xFFFF, (n * PACKET) & 0xFFFFFFFF,
                          ssrc) + ulaw[i:i + PACKET]
        udp = struct.pack("!HHHH", 40000, 40000, 8 + len(rtp), 0) + rtp
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), n & 0xFFFF, 0, 64, 17, 0,
                         bytes([127, 0, 0, 1]), bytes([127, 0, 0, 1])) + udp
        frame = b"\x00" * 12 + b"\x08\x00" + ip
        usec = n * 20_000
        out += struct.pack("<IIII", t0 + usec // 1_000_000, usec % 1_000_000, len(frame), len(frame))
        out += frame
    path.write_bytes(bytes(out))
    return len(ulaw) / RATE


class RtpSniffer:
    """Reads RTP arriving on loopback for the ports being watched (one per caller)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        _attach_filter(self.sock)
        try:  # root: a buffer large enough for a few seconds of every call's RTP
            self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 16 * 1024 * 1024)
        except OSError:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024 * 1024)
        self.sock.bind(("lo", 0))
        self.sock.settimeout(0.2)
        self.watched: dict[int, tuple[Heard, bytearray]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rtp-sniffer", daemon=True)
        self._thread.start()

    def watch(self, port: int) -> tuple[Heard, bytearray]:
        with self._lock:
            self.watched[port] = (Heard(), bytearray())
            return self.watched[port]

    def forget(self, port: int) -> None:
        with self._lock:
            self.watched.pop(port, None)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self.sock.recvfrom(65535)
            except (socket.timeout, OSError):
                continue
            if addr[2] != PACKET_HOST or len(data) < 14 + 20 + 8 + 12:
                continue
            ip = data[14:]
            if ip[0] >> 4 != 4 or ip[9] != 17:
                continue
            ihl = (ip[0] & 0x0F) * 4
            dport = struct.unpack("!H", ip[ihl + 2:ihl + 4])[0]
            with self._lock:
                target = self.watched.get(dport)
            if target is None:
                continue
            rtp = ip[ihl + 8:]
            if rtp[0] >> 6 != 2 or (rtp[1] & 0x7F) != 0:  # RTP v2, PCMU only (not DTMF, not RTCP)
                continue
            start = 12 + 4 * (rtp[0] & 0x0F)
            if rtp[0] & 0x10:  # header extension
                start += 4 + 4 * struct.unpack("!H", rtp[start + 2:start + 4])[0]
            pcm = audio.ulaw_decode(rtp[start:])
            heard, buf = target
            heard.add(time.monotonic(), audio.rms(pcm) > audio.SPEECH_RMS, seconds=len(pcm) / 2 / RATE)
            buf += pcm

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


_STAMP = re.compile(r"^-{20,} (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+)")


def sipp_messages(path: Path) -> list[tuple[float, str, str]]:
    """(wall time, 'sent'|'received', first line) of each message in sipp's -trace_msg file."""
    out: list[tuple[float, str, str]] = []
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return out
    i = 0
    while i < len(lines):
        m = _STAMP.match(lines[i])
        if m:
            t = datetime.strptime(m.group(1)[:26], "%Y-%m-%d %H:%M:%S.%f").timestamp()
            direction = "sent" if "sent" in (lines[i + 1] if i + 1 < len(lines) else "") else "received"
            j = i + 2
            while j < len(lines) and not lines[j].strip():
                j += 1
            out.append((t, direction, lines[j].strip() if j < len(lines) else ""))
            i = j
        i += 1
    return out


@dataclass
class SipCall:
    """One sipp call: what was sent, what came back, and what the caller heard."""

    sip_port: int
    run_dir: Path
    sniffer: RtpSniffer
    caller: str = "+15550100001"
    dialled: str = "+15551234567"
    name: str = "call"
    # (seconds after answer, text) the caller says; silence elsewhere
    script: list[tuple[float, str]] = field(default_factory=list)
    hang_up_after: float = 8.0  # seconds after the ACK
    ring_for: float = 40.0  # unanswered that long, the caller gives up (CANCEL)

    def __post_init__(self) -> None:
        self.dir = self.run_dir / f"sipp-{self.name}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.media_port = free_port_range(4)
        self.local_port = free_port(socket.SOCK_DGRAM)
        self.heard, self._pcm = self.sniffer.watch(self.media_port)
        self.returncode: int | None = None
        self.started_wall: float | None = None
        self.started_mono: float | None = None
        self.said: list[tuple[float, float, str]] = []  # (first, last voiced) seconds after the ACK

    def _media(self) -> tuple[Path, float]:
        pcm = b""
        for at, text in self.script:
            pcm += audio.silence(max(at - len(pcm) / 2 / RATE, 0.0), RATE)
            start = len(pcm) / 2 / RATE
            speech = audio.speak(text, RATE)
            first, last = audio.voiced_bounds(speech, RATE)  # espeak's own padding left out
            pcm += speech
            self.said.append((start + first, start + last, text))
        pcm += audio.silence(max(self.hang_up_after - len(pcm) / 2 / RATE, 0.0), RATE)
        path = self.dir / "caller.pcap"
        return path, write_pcap(path, pcm)

    def argv(self) -> list[str]:
        pcap, _ = self._media()
        scenario = self.dir / "uac.xml"
        scenario.write_text(string.Template((E2E / "sipp" / "uac.xml").read_text()).substitute(
            CALLER=self.caller, DIALLED=self.dialled, PCAP=str(pcap),
            HANGUP_MS=int(self.hang_up_after * 1000), ANSWER_TIMEOUT_MS=int(self.ring_for * 1000)))
        return ["sipp", f"127.0.0.1:{self.sip_port}", "-sf", str(scenario), "-i", "127.0.0.1",
                "-mi", "127.0.0.1", "-p", str(self.local_port), "-mp", str(self.media_port),
                "-m", "1", "-l", "1", "-t", "u1", "-nostdin", "-timeout", "120s",
                "-trace_msg", "-message_file", str(self.dir / "messages.log"),
                "-trace_err", "-error_file", str(self.dir / "errors.log")]

    async def run(self) -> int:
        argv = self.argv()
        self.started_wall, self.started_mono = time.time(), time.monotonic()
        with open(self.dir / "sipp.out", "wb") as out:
            proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL,
                                                        stdout=out, stderr=asyncio.subprocess.STDOUT,
                                                        cwd=str(self.dir))
            self.returncode = await proc.wait()
        self.sniffer.forget(self.media_port)
        with wave.open(str(self.dir / "heard.wav"), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(RATE)
            w.writeframes(bytes(self._pcm))
        return self.returncode

    # -- what sipp saw ---------------------------------------------------------------------
    def messages(self) -> list[tuple[float, str, str]]:
        return sipp_messages(self.dir / "messages.log")

    def when(self, direction: str, prefix: str) -> float | None:
        """Wall time of the first message sent/received whose first line starts with `prefix`."""
        return next((t for t, d, first in self.messages() if d == direction and first.startswith(prefix)), None)

    def mono(self, wall: float | None) -> float | None:
        """A wall time from sipp's trace on the monotonic clock the sniffer uses."""
        if wall is None or self.started_wall is None or self.started_mono is None:
            return None
        return self.started_mono + (wall - self.started_wall)

    def errors(self) -> str:
        for name in ("errors.log", "sipp.out"):
            p = self.dir / name
            if p.exists() and p.read_text(errors="replace").strip():
                return p.read_text(errors="replace")[-2000:]
        return ""
