//! A worker's UMEM, ring and batch sizes, resolved from the `[umem]`, `[rings]` and
//! `[engine]` sections of `config::GatewayConfig`.

use super::EngineError;
pub use crate::config::ZeroCopy;
use crate::pipeline::REQUIRED_HEADROOM;

/// The kernel's XDP headroom in front of every received packet (`XDP_PACKET_HEADROOM`).
const XDP_PACKET_HEADROOM: u32 = 256;
/// The largest underlay frame the engine must carry: a 1500-byte MTU plus Ethernet.
const MAX_FRAME: u32 = 1514;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineSettings {
    /// Bytes per UMEM frame: a power of two, 2048 or 4096.
    pub frame_size: u32,
    /// UMEM frames. More than the fill ring holds, so that frames in flight on the RX,
    /// TX and completion rings never starve the fill ring (PLATFORM.md pitfall 7).
    pub frame_count: u32,
    pub fill_ring: u32,
    pub completion_ring: u32,
    pub rx_ring: u32,
    pub tx_ring: u32,
    /// RX descriptors taken per iteration.
    pub batch_size: u32,
    /// Empty iterations before the worker sleeps in `poll` for up to `idle_poll_ms`;
    /// 0 never sleeps (pure busy polling).
    pub idle_spins: u32,
    pub idle_poll_ms: i32,
    /// Bind with `XDP_ZEROCOPY` (`On`), copy mode (`Off`), or try zero-copy and fall
    /// back to copy mode when the driver has none (`Auto`; veth has none).
    pub zero_copy: ZeroCopy,
    /// Bind with `XDP_USE_NEED_WAKEUP`.
    pub need_wakeup: bool,
    /// `SO_BUSY_POLL` in microseconds, with `SO_PREFER_BUSY_POLL`; 0 (or a zero budget)
    /// leaves busy polling off.
    pub busy_poll_usecs: u32,
    /// `SO_BUSY_POLL_BUDGET`: packets per busy poll.
    pub busy_poll_budget: u32,
}

impl Default for EngineSettings {
    fn default() -> Self {
        Self {
            frame_size: 2048,
            frame_count: 4096,
            fill_ring: 2048,
            completion_ring: 2048,
            rx_ring: 2048,
            tx_ring: 2048,
            batch_size: 64,
            idle_spins: 1024,
            idle_poll_ms: 1,
            zero_copy: ZeroCopy::Auto,
            need_wakeup: true,
            busy_poll_usecs: 0,
            busy_poll_budget: 0,
        }
    }
}

impl EngineSettings {
    pub fn validate(&self) -> Result<(), EngineError> {
        let bad = |field, problem: String| Err(EngineError::Settings { field, problem });
        if !matches!(self.frame_size, 2048 | 4096) {
            return bad(
                "frame_size",
                format!("{} is not 2048 or 4096", self.frame_size),
            );
        }
        // Received data starts after the XDP headroom; the engine needs the pipeline's
        // headroom after the packet (see `headroom`).
        let room = self.frame_size - XDP_PACKET_HEADROOM;
        if room < MAX_FRAME + REQUIRED_HEADROOM as u32 {
            return bad(
                "frame_size",
                format!("{room} bytes of data room cannot hold a {MAX_FRAME}-byte frame"),
            );
        }
        for (field, size) in [
            ("fill_ring", self.fill_ring),
            ("completion_ring", self.completion_ring),
            ("rx_ring", self.rx_ring),
            ("tx_ring", self.tx_ring),
        ] {
            if !size.is_power_of_two() {
                return bad(field, format!("{size} is not a power of two"));
            }
        }
        if self.frame_count <= self.fill_ring {
            return bad(
                "frame_count",
                format!(
                    "{} frames leave none beyond the fill ring's {}; use at least twice the fill ring",
                    self.frame_count, self.fill_ring
                ),
            );
        }
        if self.batch_size == 0 || self.batch_size > self.rx_ring.min(self.tx_ring) {
            return bad(
                "batch_size",
                format!(
                    "{} is not between 1 and the RX and TX ring sizes",
                    self.batch_size
                ),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_sizes_name_their_field() {
        EngineSettings::default().validate().unwrap();
        type Change = fn(&mut EngineSettings);
        let cases: [(&str, Change); 4] = [
            ("frame_size", |s| s.frame_size = 1024),
            ("rx_ring", |s| s.rx_ring = 1000),
            ("frame_count", |s| s.frame_count = s.fill_ring),
            ("batch_size", |s| s.batch_size = 0),
        ];
        for (field, change) in cases {
            let mut s = EngineSettings::default();
            change(&mut s);
            match s.validate() {
                Err(EngineError::Settings { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: {other:?}"),
            }
        }
    }
}
