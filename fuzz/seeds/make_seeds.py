#!/usr/bin/env python3
"""Writes the fuzz seeds: protobuf DeviceMessages (hand-encoded, so no
protobuf package is needed) and UDIs in each GS1 form. Run from fuzz/seeds."""

import struct


def varint(n):
    n &= (1 << 64) - 1
    out = b""
    while True:
        b, n = n & 0x7F, n >> 7
        if not n:
            return out + bytes([b])
        out += bytes([b | 0x80])


def key(field, wire_type):
    return varint((field << 3) | wire_type)


def v(field, n):
    return key(field, 0) + varint(n)


def ld(field, b):
    b = b.encode() if isinstance(b, str) else b
    return key(field, 2) + varint(len(b)) + b


def ts(seconds, nanos=0):
    return v(1, seconds) + (v(2, nanos) if nanos else b"")


UDI = "(01)09506000134352(17)301231(10)LOT1(21)SN1"
RAW = "]d201095060001343521730123110LOT1\x1d21SN1"
LINK = "https://id.example/01/09506000134352/10/LOT1/21/SN1?17=301231"


def ctx(udi=UDI, sid="2f1c8a56-6f0a-4f3e-9a57-2b1f0c6d7e01", start=1_800_000_000):
    return (ld(1, sid) + ld(2, ld(1, udi)) + v(3, 4) + v(4, 2) + ld(5, "p1")
            + ld(6, ts(start)))


def msg(seq, body, sent=1_800_000_000):
    return ld(1, "pen-1") + v(2, seq) + ld(3, ts(sent)) + body


def sample(offset):
    return v(1, offset) + v(2, 10) + v(3, 500) + v(4, 100)


DEVICE_MESSAGES = {
    "start": msg(1, ld(10, ld(1, ctx()) + ld(2, "op") + ld(3, "2.4.1"))),
    "batch": msg(2, ld(11, ld(1, ctx()) + ld(2, ts(1_800_000_001))
                       + b"".join(ld(3, sample(100 * i)) for i in range(10)))),
    "end": msg(3, ld(12, ld(1, ctx()) + ld(2, ts(1_800_000_600)) + v(3, 1000) + v(4, 1))),
    "heartbeat": msg(4, ld(13, v(1, 80) + ld(2, "2.4.1"))),
    "raw_udi": msg(5, ld(10, ld(1, ctx(RAW)) + ld(2, "op"))),
    "link_udi": msg(6, ld(10, ld(1, ctx(LINK)) + ld(2, "op"))),
}

# udi_parse reads 4 little-endian bytes of "today" (days from CE) first.
TODAY = struct.pack("<i", 739_500)
UDIS = [UDI, RAW, LINK + "&11=250101", "(01)09506000134352(11)250100(21)A"]

for name, data in DEVICE_MESSAGES.items():
    with open(f"device_message/{name}", "wb") as f:
        f.write(data)
for i, udi in enumerate(UDIS):
    with open(f"udi_parse/seed{i}", "wb") as f:
        f.write(TODAY + udi.encode())
