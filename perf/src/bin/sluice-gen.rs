//! `sluice-gen`: the benchmark generator and helper of `scripts/bench-gateway.sh`.
//!
//! * `sluice-gen tables FILE` writes `testkit::world()` as YAML (the gateway's
//!   `tables.file`).
//! * `sluice-gen send geneve|udp DST:PORT SECONDS CORE` sends 64-byte packets in a tight
//!   loop from a UDP socket pinned to `CORE` for `SECONDS`, then prints one JSON line with
//!   the count the socket accepted. `geneve` sends Geneve (VNI A, no options) whose inner
//!   frame is a 64-byte Ethernet/IPv4/UDP frame from POD_A1 to POD_A1B (60 bytes without
//!   the FCS); `udp` sends plain UDP whose whole frame is 64 bytes on the wire (18 bytes of
//!   payload). The kernel builds the outer headers in both cases, so both contenders get
//!   the same generator.
//!
//! A plain UDP socket needs no raw memory and no AF_PACKET address building: what it
//! costs per packet (the sender's IP/UDP stack) is paid equally by both contenders. What
//! the socket accepted is not what arrived (PLATFORM.md pitfall 13): count at the sink.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use sluice_dataplane::testkit::*;

/// Bytes of UDP payload that make a 60-byte Ethernet/IPv4/UDP frame (64 with the FCS).
const PAYLOAD_64: usize = 60 - 14 - 20 - 8;

fn usage() -> ! {
    eprintln!("usage: sluice-gen tables FILE | sluice-gen send geneve|udp DST:PORT SECONDS CORE");
    std::process::exit(2)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("tables") if args.len() == 2 => {
            let yaml = serde_norway::to_string(&world()).expect("the world as YAML");
            std::fs::write(&args[1], yaml).expect("writing the tables file");
        }
        Some("send") if args.len() == 5 => {
            let dst: SocketAddr = args[2].parse().unwrap_or_else(|_| usage());
            let seconds: f64 = args[3].parse().unwrap_or_else(|_| usage());
            let core: usize = args[4].parse().unwrap_or_else(|_| usage());
            let payload = match args[1].as_str() {
                "geneve" => {
                    let inner = inner_udp(
                        POD_A1_MAC,
                        POD_A1B_MAC,
                        POD_A1,
                        POD_A1B,
                        (1000, 2000),
                        &[0u8; PAYLOAD_64],
                    );
                    assert_eq!(inner.len(), 60);
                    let mut p = geneve_header(VNI_A, &[]);
                    p.extend_from_slice(&inner);
                    p
                }
                "udp" => vec![0u8; PAYLOAD_64],
                _ => usage(),
            };
            send(dst, &payload, Duration::from_secs_f64(seconds), core);
        }
        _ => usage(),
    }
}

fn send(dst: SocketAddr, payload: &[u8], duration: Duration, core: usize) {
    sluice_dataplane::engine::pin_current_thread(core).expect("pinning the generator");
    let socket = UdpSocket::bind("0.0.0.0:50000").expect("binding UDP port 50000");
    socket.connect(dst).expect("connecting the UDP socket");
    let (mut sent, mut failed) = (0u64, 0u64);
    let start = Instant::now();
    let deadline = start + duration;
    'outer: loop {
        // Check the clock once every 1024 sends.
        for _ in 0..1024 {
            match socket.send(payload) {
                Ok(_) => sent += 1,
                // ENOBUFS, ECONNREFUSED from an ICMP error, ...: count and go on.
                Err(_) => failed += 1,
            }
        }
        if Instant::now() >= deadline {
            break 'outer;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    println!("{{\"sent\":{sent},\"failed\":{failed},\"seconds\":{elapsed:.6}}}");
}
