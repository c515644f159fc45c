//! Giving the pipeline headroom inside an xsk-rs data segment.
//!
//! The pipeline grows outer headers by moving a packet's start back into headroom. An
//! AF_XDP descriptor could simply point earlier in its UMEM frame, but xsk-rs transmits
//! from the descriptor's data address, which the application cannot change, and a
//! received packet starts exactly there. So the engine moves the packet right by
//! [`REQUIRED_HEADROOM`] before processing and moves the result back to the data address
//! afterwards: two copies of the packet, the price of xsk-rs (measured by
//! `benches/engine_headroom.rs`). With raw descriptors the TX address would just be the
//! frame's new start and both copies would go.

use crate::pipeline::{DropReason, Frame, Verdict, REQUIRED_HEADROOM};

/// Runs `process` over the packet in `segment[..len]`, giving it [`REQUIRED_HEADROOM`]
/// bytes in front. `segment` must extend at least `REQUIRED_HEADROOM` bytes past the
/// packet. On a transmit verdict the output packet starts at `segment[0]` and its length
/// is returned with the verdict; on a drop the segment's contents are unspecified.
#[inline]
pub fn process_shifted(
    segment: &mut [u8],
    len: usize,
    process: impl FnOnce(&mut Frame<'_>) -> Verdict,
) -> (Verdict, usize) {
    let Some(buf) = segment.get_mut(..len + REQUIRED_HEADROOM) else {
        return (Verdict::Drop(DropReason::NoHeadroom), 0);
    };
    buf.copy_within(..len, REQUIRED_HEADROOM);
    let Some(mut frame) = Frame::new(buf, REQUIRED_HEADROOM, len) else {
        unreachable!("the buffer holds headroom plus the packet");
    };
    let verdict = process(&mut frame);
    match verdict {
        Verdict::Forward | Verdict::Reply => {
            let (start, out_len) = (frame.start(), frame.len());
            buf.copy_within(start..start + out_len, 0);
            (verdict, out_len)
        }
        Verdict::Drop(_) => (verdict, 0),
    }
}

#[cfg(all(test, feature = "testkit"))]
mod tests {
    use super::*;
    use crate::pipeline::process;
    use crate::testkit::*;

    /// The shifted path gives the same bytes as the pipeline run with plenty of headroom.
    #[test]
    fn shifting_matches_the_pipeline_with_headroom() {
        let writer = world_tables();
        let tables = writer.snapshot();
        let local = local();
        let inner = inner_udp(
            POD_A1_MAC,
            POD_A1B_MAC,
            POD_A1,
            POD_A1B,
            (1000, 2000),
            b"hello",
        );
        let packet = geneve_packet(&OuterSpec::from_host(H1, H1_MAC, VNI_A), &inner);

        let mut reference = with_headroom(&packet);
        let mut frame = Frame::new(&mut reference, HEADROOM, packet.len()).unwrap();
        let want_verdict = process(&tables, &local, &mut frame);
        let want = frame.data().to_vec();
        assert_eq!(want_verdict, Verdict::Forward);
        assert!(want.len() > packet.len(), "the bounce adds HOST_HINT");

        let mut segment = vec![0u8; 2048 - 256];
        segment[..packet.len()].copy_from_slice(&packet);
        let (verdict, len) =
            process_shifted(&mut segment, packet.len(), |f| process(&tables, &local, f));
        assert_eq!(verdict, want_verdict);
        assert_eq!(&segment[..len], &want[..]);

        // Too little room after the packet: dropped, not overrun.
        let mut tight = packet.clone();
        let (verdict, _) =
            process_shifted(&mut tight, packet.len(), |f| process(&tables, &local, f));
        assert_eq!(verdict, Verdict::Drop(DropReason::NoHeadroom));
    }
}
