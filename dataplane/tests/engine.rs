//! The engine on the real kernel: a sender, a gateway and a receiver namespace on one L2
//! segment (a bridge in a fourth namespace). The gateway runs the NIC program and one
//! `Worker` on queue 0 of its veth; the sender emits Geneve frames built with testkit,
//! the receiver captures what the gateway transmits on the same interface.
//!
//! Needs root. Namespaces are named `sl-eng-<pid>-<n>-{br,s,g,r}` and deleted by a guard
//! even when a test fails; the only processes started are `ip` and `nsenter` running
//! `python3` (scapy), all waited for.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use sluice_dataplane::engine::{
    self, EngineError, EngineSettings, Worker, WorkerCounters, ZeroCopy,
};
use sluice_dataplane::nic::{NicProgram, XdpMode};
use sluice_dataplane::pipeline::{process, DropReason, Frame, Verdict};
use sluice_dataplane::testkit::*;

mod common;

use common::*;

/// The NIC program and one worker thread on queue 0 of the gateway's interface. Dropping
/// it (even while unwinding) clears the XSKMAP slot, stops and joins the worker, then
/// detaches the program, in that order.
struct Gateway {
    program: Option<NicProgram>,
    stop: Arc<AtomicBool>,
    worker: Option<JoinHandle<Result<Worker, EngineError>>>,
    /// Whether the worker bound in zero-copy mode.
    zero_copy: bool,
}

impl Gateway {
    fn start(topo: &Segment, writer: &sluice_dataplane::tables::TableWriter) -> Gateway {
        Gateway::start_with(topo, writer, EngineSettings::default())
    }

    fn start_with(
        topo: &Segment,
        writer: &sluice_dataplane::tables::TableWriter,
        settings: EngineSettings,
    ) -> Gateway {
        let program = in_ns(&topo.gateway, || {
            NicProgram::attach(IF, XdpMode::Native, &[GW])
        })
        .unwrap_or_else(|e| panic!("attach: {e}"));
        let stop = Arc::new(AtomicBool::new(false));
        let (fd_tx, fd_rx) = mpsc::channel();
        let reader = writer.reader();
        let ns = topo.gateway.clone();
        let worker_stop = Arc::clone(&stop);
        // The last core: the test's own threads mostly run elsewhere.
        let core = core_affinity::get_core_ids()
            .and_then(|ids| ids.last().map(|c| c.id))
            .expect("cores");
        let handle = std::thread::spawn(move || {
            enter(&ns);
            engine::pin_current_thread(core)?;
            let mut worker = Worker::new(IF, 0, &settings, reader, local())?;
            fd_tx
                .send((worker.fd(), worker.zero_copy()))
                .expect("the test waits for the fd");
            worker.run(&worker_stop)?;
            Ok(worker)
        });
        let mut gateway = Gateway {
            program: Some(program),
            stop,
            worker: Some(handle),
            zero_copy: false,
        };
        match fd_rx.recv_timeout(Duration::from_secs(10)) {
            Ok((fd, zero_copy)) => {
                gateway.zero_copy = zero_copy;
                gateway
                    .program
                    .as_mut()
                    .expect("attached")
                    .set_socket(0, fd)
                    .unwrap_or_else(|e| panic!("set_socket: {e}"))
            }
            Err(_) => {
                let result = gateway.worker.take().expect("spawned").join();
                panic!("the worker did not start: {:?}", result.map(|r| r.err()));
            }
        }
        gateway
    }

    /// Stops the worker and returns its counters; the program stays attached.
    fn stop(&mut self) -> WorkerCounters {
        if let Some(program) = self.program.as_mut() {
            program.clear_socket(0).expect("clear the XSKMAP slot");
        }
        self.stop.store(true, Ordering::Relaxed);
        let worker = self
            .worker
            .take()
            .expect("running")
            .join()
            .expect("the worker panicked")
            .unwrap_or_else(|e| panic!("the worker failed: {e}"));
        worker.counters().clone()
    }

    fn detach(mut self) {
        self.program
            .take()
            .expect("attached")
            .detach()
            .expect("detach");
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(program) = self.program.as_mut() {
            let _ = program.clear_socket(0);
        }
        self.stop.store(true, Ordering::Relaxed);
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
        drop(self.program.take());
    }
}

/// An AF_PACKET socket seeing every frame of the receiver namespace.
struct Capture(std::os::fd::OwnedFd);

impl Capture {
    fn open(topo: &Segment) -> Capture {
        Capture(capture(&topo.receiver))
    }

    /// Every frame captured within `window`.
    fn frames(&self, window: Duration) -> Vec<Vec<u8>> {
        receive_all(&self.0, window)
    }

    /// The first captured Geneve frame addressed to H2, waiting up to `timeout`.
    fn geneve_to_h2(&self, timeout: Duration) -> Option<Vec<u8>> {
        receive_matching(&self.0, timeout, is_geneve_to_h2)
    }
}

fn is_geneve_to_h2(frame: &[u8]) -> bool {
    decode(frame).is_ok_and(|d| d.outer_dst == H2 && d.udp_dst_port == GENEVE_PORT)
}

fn bounce_packet() -> Vec<u8> {
    geneve_packet(
        &OuterSpec::from_host(H1, H1_MAC, VNI_A),
        &inner_udp(
            POD_A1_MAC,
            POD_A1B_MAC,
            POD_A1,
            POD_A1B,
            (1000, 2000),
            b"hello",
        ),
    )
}

/// What the pipeline makes of `packet` with ample headroom: the bytes the gateway must
/// put on the wire.
fn expected_output(packet: &[u8]) -> Vec<u8> {
    let writer = world_tables();
    let tables = writer.snapshot();
    let mut buf = with_headroom(packet);
    let mut frame = Frame::new(&mut buf, HEADROOM, packet.len()).expect("fits");
    assert_eq!(process(&tables, &local(), &mut frame), Verdict::Forward);
    frame.data().to_vec()
}

#[test]
fn the_worker_bounces_geneve_drops_malformed_frames_and_stops_cleanly() {
    let topo = Segment::new("sl-eng");
    let writer = world_tables();
    let capture = Capture::open(&topo);
    let mut gateway = Gateway::start(&topo, &writer);

    // A same-subnet bounce: H1's pod A1 to pod A1B on H2.
    let packet = bounce_packet();
    topo.send_frames(std::slice::from_ref(&packet));
    let out = capture
        .geneve_to_h2(Duration::from_secs(5))
        .expect("the bounced packet reaches the receiver");
    let d = decode(&out).expect("decodes");
    assert_eq!(d.outer_dst, H2);
    assert_eq!(d.outer_dst_mac, H2_MAC.0);
    assert_eq!(d.outer_src, GW);
    assert_eq!(d.outer_src_mac, GW_MAC.0);
    assert_eq!(d.outer_ttl, 64);
    assert!(d.outer_dont_fragment);
    assert!(d.outer_ip_checksum_ok);
    assert_eq!(d.udp_dst_port, GENEVE_PORT);
    assert_eq!(d.udp_checksum, 0);
    assert_eq!(d.vni, VNI_A);
    let hint = d.option(0x01).expect("HOST_HINT");
    let mut want_hint = POD_A1.octets().to_vec();
    want_hint.extend_from_slice(&H1.octets());
    assert_eq!(hint.body, want_hint, "A1 lives on H1");
    check_inner_checksums(&d.inner).expect("inner checksums");
    let inner = &packet[packet.len() - d.inner.len()..];
    assert_eq!(d.inner, inner, "the inner frame already had A1B's MAC");
    assert_eq!(out, expected_output(&packet), "byte for byte");

    // A malformed frame (outer IPv4 checksum broken) is counted and not forwarded.
    let mut bad = bounce_packet();
    bad[14 + 10] ^= 0xff;
    topo.send_frames(&[bad]);
    let late = capture.frames(Duration::from_millis(500));
    assert!(
        !late.iter().any(|f| is_geneve_to_h2(f)),
        "the malformed frame was forwarded"
    );

    let counters = gateway.stop();
    assert_eq!(counters.rx_packets, 2, "{counters:?}");
    assert_eq!(counters.tx_packets, 1, "{counters:?}");
    assert_eq!(counters.tx_bytes, out.len() as u64, "{counters:?}");
    assert_eq!(counters.outcomes.forwarded, 1, "{counters:?}");
    assert_eq!(
        counters.outcomes.dropped(DropReason::OuterIpv4Checksum),
        1,
        "{counters:?}"
    );
    assert_eq!(counters.outcomes.total_dropped(), 1, "{counters:?}");
    assert!(counters.kicks >= 1, "{counters:?}");
    gateway.detach();
    assert!(!topo.gateway_has_xdp(), "a program is still attached");
}

/// Many packets in a burst: every frame comes back through the completion ring and
/// everything sent is forwarded (the copy-mode kick rule, PLATFORM.md pitfall 6).
#[test]
fn the_worker_forwards_a_burst_without_losing_frames() {
    const BURST: usize = 300;
    let topo = Segment::new("sl-eng");
    let writer = world_tables();
    let capture = Capture::open(&topo);
    let mut gateway = Gateway::start(&topo, &writer);
    let packet = bounce_packet();
    topo.send_frames(&vec![packet; BURST]);
    let seen = capture
        .frames(Duration::from_secs(2))
        .iter()
        .filter(|f| is_geneve_to_h2(f))
        .count();
    let counters = gateway.stop();
    assert_eq!(counters.rx_packets, BURST as u64, "{counters:?}");
    assert_eq!(counters.tx_packets, BURST as u64, "{counters:?}");
    assert_eq!(seen, BURST, "{counters:?}");
    gateway.detach();
}

/// veth has no zero-copy (PLATFORM.md): `auto` binds copy mode and forwards, with
/// need-wakeup on or off and busy polling configured.
#[test]
fn zero_copy_auto_falls_back_to_copy_mode_on_veth_and_forwards() {
    for need_wakeup in [true, false] {
        let topo = Segment::new("sl-eng");
        let writer = world_tables();
        let capture = Capture::open(&topo);
        let settings = EngineSettings {
            zero_copy: ZeroCopy::Auto,
            need_wakeup,
            busy_poll_usecs: 20,
            busy_poll_budget: 64,
            ..EngineSettings::default()
        };
        let mut gateway = Gateway::start_with(&topo, &writer, settings);
        assert!(!gateway.zero_copy, "veth has no zero-copy");
        let packet = bounce_packet();
        topo.send_frames(&vec![packet.clone(); 100]);
        let seen: Vec<_> = capture
            .frames(Duration::from_secs(2))
            .into_iter()
            .filter(|f| is_geneve_to_h2(f))
            .collect();
        let counters = gateway.stop();
        assert_eq!(seen.len(), 100, "need_wakeup {need_wakeup}: {counters:?}");
        assert_eq!(seen[0], expected_output(&packet), "byte for byte");
        assert_eq!(counters.tx_packets, 100, "{counters:?}");
        gateway.detach();
    }
}

#[test]
fn zero_copy_on_is_refused_on_veth_naming_interface_and_queue() {
    let topo = Segment::new("sl-eng");
    let writer = world_tables();
    let settings = EngineSettings {
        zero_copy: ZeroCopy::On,
        ..EngineSettings::default()
    };
    let err = in_ns(&topo.gateway, || {
        Worker::new(IF, 0, &settings, writer.reader(), local())
    })
    .expect_err("veth has no zero-copy");
    assert!(
        matches!(err, EngineError::ZeroCopyUnavailable { .. }),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "zero-copy unavailable on {IF} queue 0: Operation not supported; \
             set engine.zero_copy = \"auto\" or \"off\""
        )
    );
}

#[test]
fn pinning_to_a_core_that_does_not_exist_is_a_clear_error() {
    let err = std::thread::spawn(|| engine::pin_current_thread(100_000))
        .join()
        .expect("thread")
        .expect_err("core 100000 does not exist");
    assert!(
        matches!(err, EngineError::Pin { core: 100_000, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("core 100000"), "{err}");
}

#[test]
fn binding_to_a_missing_interface_names_it() {
    let topo = Segment::new("sl-eng");
    let writer = world_tables();
    let err = in_ns(&topo.gateway, || {
        Worker::new(
            "nosuch0",
            0,
            &EngineSettings::default(),
            writer.reader(),
            local(),
        )
    })
    .expect_err("no such interface");
    assert!(err.to_string().contains("nosuch0"), "{err}");
}

/// An idle worker moves on to each new copy of the tables (it reloads while it waits for
/// packets), so updates never find it holding the old copy and never cost a whole copy
/// of the tables; and a packet to an endpoint added meanwhile is bounced at once.
#[test]
fn updates_to_an_idle_worker_cost_no_table_copy_and_take_effect() {
    use sluice_api::{Endpoint, MacAddr, Object, Transaction, Vni};

    let topo = Segment::new("sl-eng");
    let mut writer = world_tables();
    let capture = Capture::open(&topo);
    let mut gateway = Gateway::start(&topo, &writer);
    // No traffic at all: the worker goes idle (and sleeps in poll) before any update.
    std::thread::sleep(Duration::from_millis(100));
    let fresh = |last: u8| std::net::Ipv4Addr::new(10, 0, 1, last);
    for last in 100..110u8 {
        let txn = Transaction {
            upserts: vec![Object::Endpoint(Endpoint {
                vni: Vni::new(VNI_A).expect("a VNI"),
                ip: fresh(last),
                mac: MacAddr([0x0a, 0x58, 10, 0, 1, last]),
                host: H2,
            })],
            deletes: vec![],
        };
        writer.apply(&txn).expect("a valid endpoint");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        writer.stale_reader_copies(),
        0,
        "an update waited out the grace period on the idle worker"
    );
    let to_new = geneve_packet(
        &OuterSpec::from_host(H1, H1_MAC, VNI_A),
        &inner_udp(
            POD_A1_MAC,
            POD_A1B_MAC,
            POD_A1,
            fresh(109),
            (1000, 2000),
            b"new",
        ),
    );
    topo.send_frames(&[to_new]);
    let seen = capture
        .frames(Duration::from_secs(2))
        .iter()
        .filter(|f| is_geneve_to_h2(f))
        .count();
    let counters = gateway.stop();
    assert_eq!(seen, 1, "the newest endpoint is bounced: {counters:?}");
    gateway.detach();
}
