//! Fuzzes `pipeline::process` over the standard world. The first input byte selects
//! tweaks that get the fuzzer past checks it cannot easily solve (the outer IPv4 header
//! checksum); the rest is the frame. Invariants: no panic; whatever is transmitted is a
//! well-formed Geneve packet with the VNI it arrived with.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use sluice_dataplane::pipeline::{process, Frame, Verdict};
use sluice_dataplane::tables::Tables;
use sluice_dataplane::testkit::{decode, fix_ipv4_checksum, local, world_tables, HEADROOM};

static TABLES: OnceLock<Arc<Tables>> = OnceLock::new();

fuzz_target!(|input: &[u8]| {
    let Some((&mode, packet)) = input.split_first() else {
        return;
    };
    let tables = TABLES.get_or_init(|| world_tables().snapshot());
    let mut buf = vec![0u8; HEADROOM + packet.len()];
    buf[HEADROOM..].copy_from_slice(packet);
    if mode & 1 == 1 && packet.len() >= 14 + 20 && packet[14] >> 4 == 4 {
        let ihl = usize::from(packet[14] & 0x0f) * 4;
        if ihl >= 20 && packet.len() >= 14 + ihl {
            fix_ipv4_checksum(&mut buf[HEADROOM..], 14);
        }
    }
    let arriving_vni = packet
        .get(14 + 20 + 8 + 4..14 + 20 + 8 + 7)
        .map(|b| u32::from_be_bytes([0, b[0], b[1], b[2]]));
    let len = packet.len();
    let mut frame = Frame::new(&mut buf, HEADROOM, len).expect("buffer fits");
    let verdict = process(tables, &local(), &mut frame);
    if matches!(verdict, Verdict::Forward | Verdict::Reply) {
        let out = decode(frame.data()).expect("transmitted packets decode");
        assert!(out.outer_ip_checksum_ok);
        // Only a 20-byte outer IPv4 header puts the VNI at that offset.
        if packet[14] & 0x0f == 5 {
            assert_eq!(Some(out.vni), arriving_vni, "VNI changed");
        }
    }
});
