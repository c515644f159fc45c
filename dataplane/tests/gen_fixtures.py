#!/usr/bin/env python3
"""Golden packet fixtures for sluice-dataplane's wire tests, built with scapy.

Regenerate from the repository root with:

    python3 dataplane/tests/gen_fixtures.py

Every fixture is deterministic (fixed addresses, ports, IP identifications, sequence
numbers and payloads), so regenerating them must produce no diff. The Rust tests in
dataplane/src/wire/*.rs parse these bytes and also build the same packets with Sluice's
own views and checksum helpers, comparing byte for byte: scapy is the independent
implementation.

Addresses: underlay hosts in 198.18.0.0/15 (benchmarking range), tenant addresses in
10.0.0.0/8, locally administered MAC addresses (02:...).

How each fixture is built (scapy computes every length and checksum unless noted):

* eth_ipv4_udp.bin        Ether / IPv4 (DF, TTL 64, id 0x1234) / UDP 40000 -> 5353 /
                          19-byte payload (odd length, exercises the checksum pad byte).
* eth_ipv4_options_udp.bin Ether / IPv4 with a Record Route option holding one address
                          (7 option bytes + 1 End-of-List pad, IHL 7) / UDP 40001 -> 7 /
                          4-byte payload.
* eth_ipv4_tcp_syn.bin    Ether / IPv4 / TCP SYN 40002 -> 8080 with Linux's SYN option
                          layout MSS 1410, SACK-permitted, Timestamps, NOP, Window scale 7
                          (20 option bytes, data offset 10), no payload.
* eth_ipv4_icmp_echo.bin  Ether / IPv4 / ICMP echo request id 0x4242 seq 7 / 32-byte
                          payload 0x00..0x1f.
* eth_arp_request.bin     Ether (broadcast) / ARP who-has 10.0.1.1 tell 10.0.1.10.
* eth_arp_reply.bin       Ether / ARP 10.0.1.1 is-at the subnet router MAC, addressed to
                          the requester: exactly what a bouncer makes of the request.
* geneve_udp.bin          Sluice underlay packet, gateway -> worker, a service-DNATed
                          UDP flow: outer Ether / IPv4 198.18.0.1 -> 198.18.0.2 (DF,
                          TTL 64, id 0) / UDP sport = 49152 + FLOW_HASH % 16384,
                          dport 6081, checksum 0 / Geneve version 0, C bit set,
                          protocol 0x6558, VNI 0x123456, four options in this order:
                            1. class 0xFF01 type 0x01 HOST_HINT endpoint 10.0.2.20
                               host 198.18.0.2 (body 8)
                            2. class 0xFF01 type 0x03 SERVICE_ORIG VIP 10.96.0.10
                               port 53 protocol 17 + one zero pad byte (body 8)
                            3. class 0x0101 type 0x7F, unknown and not critical (body 12)
                            4. class 0xFF01 type 0x85, unknown Sluice type with the
                               critical bit (body 0)
                          / inner Ether (router MAC -> pod MAC) / IPv4 10.0.1.10 ->
                          10.0.2.20 (DF, TTL 63, id 0x4444) / UDP 40000 -> 5353 / payload.
* geneve_tcp.bin          Sluice underlay packet, worker -> worker, sent direct: outer as
                          above but 198.18.0.2 -> 198.18.0.3 and sport from FLOW_HASH_TCP;
                          Geneve C bit clear, options DIRECT (class 0xFF01 type 0x02,
                          body 0) then STALE endpoint 10.0.1.99 (type 0x04, body 4) /
                          inner Ether / IPv4 10.0.1.10 -> 10.0.1.20 / TCP PSH|ACK with
                          NOP NOP Timestamps / 18-byte HTTP request line.

The Geneve option TLVs are built with scapy.contrib.geneve.GeneveOptions (scapy fills
the 5-bit length); the script asserts each option's bytes against a hand-packed TLV so
a scapy quirk cannot slip into the fixtures unnoticed.
"""

import os
import struct
import sys

from scapy.all import ARP, ICMP, IP, TCP, UDP, Ether, IPOption_RR, Raw  # noqa: E402
from scapy.contrib.geneve import GENEVE, GeneveOptions  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")

# Wire contract (dataplane/src/wire/contract.rs is the source of truth).
GENEVE_UDP_PORT = 6081
GENEVE_PROTO_ETHERNET = 0x6558
SLUICE_OPTION_CLASS = 0xFF01
OPT_HOST_HINT = 0x01
OPT_DIRECT = 0x02
OPT_SERVICE_ORIG = 0x03
OPT_STALE = 0x04
OPTION_CRITICAL_BIT = 0x80
UDP_SRC_PORT_BASE = 49152
UDP_SRC_PORT_RANGE = 16384
OUTER_TTL = 64

VNI = 0x123456
FLOW_HASH = 0xDEADBEEF
FLOW_HASH_TCP = 0x0BADF00D

# Underlay.
GW_MAC = "02:00:c6:12:00:01"
WORKER_MAC = "02:00:c6:12:00:02"
WORKER2_MAC = "02:00:c6:12:00:03"
GW_IP = "198.18.0.1"
WORKER_IP = "198.18.0.2"
WORKER2_IP = "198.18.0.3"

# Tenant.
POD_A_MAC = "02:5a:00:00:01:0a"
POD_B_MAC = "02:5a:00:00:01:14"
POD_C_MAC = "02:5a:00:00:02:14"
ROUTER_MAC = "02:5a:00:00:01:01"
POD_A_IP = "10.0.1.10"
POD_B_IP = "10.0.1.20"
POD_C_IP = "10.0.2.20"
ROUTER_IP = "10.0.1.1"
VIP = "10.96.0.10"
STALE_IP = "10.0.1.99"


def udp_src_port(flow_hash):
    return UDP_SRC_PORT_BASE + flow_hash % UDP_SRC_PORT_RANGE


def ip4(addr):
    return bytes(int(x) for x in addr.split("."))


def tlv(cls, kind, body):
    """Hand-packed Geneve option TLV, the cross-check for scapy's GeneveOptions."""
    assert len(body) % 4 == 0 and len(body) // 4 < 32
    return struct.pack("!HBB", cls, kind, len(body) // 4) + body


def option(cls, kind, body):
    opt = GeneveOptions(classid=cls, type=kind, data=body)
    assert bytes(opt) == tlv(cls, kind, body), (bytes(opt).hex(), tlv(cls, kind, body).hex())
    return opt


def outer(src_mac, dst_mac, src_ip, dst_ip, flow_hash):
    return (
        Ether(src=src_mac, dst=dst_mac)
        / IP(src=src_ip, dst=dst_ip, flags="DF", ttl=OUTER_TTL, id=0)
        / UDP(sport=udp_src_port(flow_hash), dport=GENEVE_UDP_PORT, chksum=0)
    )


def fixtures():
    out = {}

    out["eth_ipv4_udp"] = (
        Ether(src=POD_A_MAC, dst=POD_B_MAC)
        / IP(src=POD_A_IP, dst=POD_B_IP, id=0x1234, flags="DF", ttl=64)
        / UDP(sport=40000, dport=5353)
        / Raw(b"sluice udp payload!")
    )

    out["eth_ipv4_options_udp"] = (
        Ether(src=POD_A_MAC, dst=ROUTER_MAC)
        / IP(
            src=POD_A_IP,
            dst=POD_C_IP,
            id=0x0101,
            ttl=63,
            options=[IPOption_RR(routers=[ROUTER_IP])],
        )
        / UDP(sport=40001, dport=7)
        / Raw(b"opts")
    )

    out["eth_ipv4_tcp_syn"] = (
        Ether(src=POD_A_MAC, dst=POD_B_MAC)
        / IP(src=POD_A_IP, dst=POD_B_IP, id=0x2222, flags="DF", ttl=64)
        / TCP(
            sport=40002,
            dport=8080,
            seq=0x01020304,
            ack=0,
            flags="S",
            window=64240,
            options=[
                ("MSS", 1410),
                ("SAckOK", b""),
                ("Timestamp", (0x11223344, 0)),
                ("NOP", None),
                ("WScale", 7),
            ],
        )
    )

    out["eth_ipv4_icmp_echo"] = (
        Ether(src=POD_A_MAC, dst=POD_B_MAC)
        / IP(src=POD_A_IP, dst=POD_B_IP, id=0x3333, flags="DF", ttl=64)
        / ICMP(type=8, code=0, id=0x4242, seq=7)
        / Raw(bytes(range(32)))
    )

    out["eth_arp_request"] = Ether(src=POD_A_MAC, dst="ff:ff:ff:ff:ff:ff") / ARP(
        op=1, hwsrc=POD_A_MAC, psrc=POD_A_IP, hwdst="00:00:00:00:00:00", pdst=ROUTER_IP
    )

    out["eth_arp_reply"] = Ether(src=ROUTER_MAC, dst=POD_A_MAC) / ARP(
        op=2, hwsrc=ROUTER_MAC, psrc=ROUTER_IP, hwdst=POD_A_MAC, pdst=POD_A_IP
    )

    udp_opts = [
        option(SLUICE_OPTION_CLASS, OPT_HOST_HINT, ip4(POD_C_IP) + ip4(WORKER_IP)),
        option(SLUICE_OPTION_CLASS, OPT_SERVICE_ORIG, ip4(VIP) + struct.pack("!HBB", 53, 17, 0)),
        option(0x0101, 0x7F, bytes(range(0xA0, 0xAC))),
        option(SLUICE_OPTION_CLASS, OPTION_CRITICAL_BIT | 0x05, b""),
    ]
    out["geneve_udp"] = (
        outer(GW_MAC, WORKER_MAC, GW_IP, WORKER_IP, FLOW_HASH)
        / GENEVE(version=0, critical=1, proto=GENEVE_PROTO_ETHERNET, vni=VNI, options=udp_opts)
        / Ether(src=ROUTER_MAC, dst=POD_C_MAC)
        / IP(src=POD_A_IP, dst=POD_C_IP, id=0x4444, flags="DF", ttl=63)
        / UDP(sport=40000, dport=5353)
        / Raw(b"sluice geneve udp")
    )

    tcp_opts = [
        option(SLUICE_OPTION_CLASS, OPT_DIRECT, b""),
        option(SLUICE_OPTION_CLASS, OPT_STALE, ip4(STALE_IP)),
    ]
    out["geneve_tcp"] = (
        outer(WORKER_MAC, WORKER2_MAC, WORKER_IP, WORKER2_IP, FLOW_HASH_TCP)
        / GENEVE(version=0, proto=GENEVE_PROTO_ETHERNET, vni=VNI, options=tcp_opts)
        / Ether(src=POD_A_MAC, dst=POD_B_MAC)
        / IP(src=POD_A_IP, dst=POD_B_IP, id=0x5555, flags="DF", ttl=64)
        / TCP(
            sport=40003,
            dport=80,
            seq=1000,
            ack=2000,
            flags="PA",
            window=502,
            options=[("NOP", None), ("NOP", None), ("Timestamp", (0x01000000, 0x02000000))],
        )
        / Raw(b"GET / HTTP/1.1\r\n\r\n")
    )
    return out


def main():
    os.makedirs(OUT, exist_ok=True)
    for name, pkt in fixtures().items():
        raw = bytes(pkt)
        # Round-trip through scapy's parser as a sanity check of what was built.
        assert bytes(Ether(raw)) == raw, name
        path = os.path.join(OUT, name + ".bin")
        with open(path, "wb") as f:
            f.write(raw)
        print(f"{path}: {len(raw)} bytes", file=sys.stderr)


if __name__ == "__main__":
    main()
