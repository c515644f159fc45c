use sluice_dataplane::pipeline::{process, Frame};
use sluice_dataplane::testkit::*;
fn main() {
    let world = ScaledWorld::new(10, 10, 100);
    let writer = world.tables();
    let tables = writer.snapshot();
    let local = local();
    let mut pkts = Vec::new();
    for a in 0..10usize {
        let b = (a + 2) % 10;
        let (_, src) = world.endpoint(a);
        let (_, dst) = world.endpoint(b);
        let inner = inner_udp(world.endpoint_mac(a), world.endpoint_mac(b), src, dst, (1000, 2000), &[0x5a; 18]);
        let outer = OuterSpec::from_host(ScaledWorld::host(a), ScaledWorld::host_mac(a), VNI_A);
        pkts.push(with_headroom(&geneve_packet(&outer, &inner)));
    }
    let lens: Vec<usize> = pkts.iter().map(|p| p.len() - HEADROOM).collect();
    let mut bufs = pkts.clone();
    let n: usize = std::env::args().nth(1).map(|s| s.parse().unwrap()).unwrap_or(100_000);
    let t = std::time::Instant::now();
    let mut fwd = 0;
    for i in 0..n {
        let k = i % pkts.len();
        bufs[k][..].copy_from_slice(&pkts[k]);
        let mut frame = Frame::new(&mut bufs[k], HEADROOM, lens[k]).unwrap();
        if process(&tables, &local, &mut frame) == sluice_dataplane::pipeline::Verdict::Forward { fwd += 1; }
    }
    let el = t.elapsed();
    println!("{} fwd, {:.1} ns/packet (incl. copy)", fwd, el.as_nanos() as f64 / n as f64);
}
