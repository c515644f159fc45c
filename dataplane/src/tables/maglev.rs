//! Weighted Maglev consistent hashing: the table a service uses to pick a backend for a flow.
//!
//! Maglev (Eisenbud et al., NSDI 2016, section 3.4) fills a prime-sized table by letting
//! every backend claim slots in the order of its own pseudo-random permutation; a flow
//! goes to `table[flow_hash % M]`. Here each backend claims slots in proportion to its
//! weight, and weight 0 drains a backend.
//!
//! Every gateway must pick the same backend for a flow, so that gateways stay stateless
//! and a flow survives failover from one gateway to another. Everything here is therefore
//! a pure function of the backend list (in any order): fixed hash functions and seeds
//! (never `RandomState` or std's `DefaultHasher`, whose algorithm may change between
//! Rust releases), a table size taken from a fixed ladder, and [`flow_hash`] itself.
//! Changing any of these moves flows, and while gateways run different versions they
//! disagree; the golden tests at the end of this file exist to make such a change a
//! deliberate one.
//!
//! Building a table allocates and runs in the control thread; [`MaglevTable::lookup`] and
//! [`flow_hash`] run per packet and must not allocate, lock or branch on table contents.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt;
use std::net::Ipv4Addr;

/// Table sizes: primes, each roughly double the one before (the largest prime below
/// each power of two from 2^8 to 2^23). See [`table_size_for`] for why sizes come from
/// a ladder. The top rung is at least 100 x [`MAX_BACKENDS`].
pub const TABLE_SIZE_LADDER: [usize; 16] = [
    251, 509, 1_021, 2_039, 4_093, 8_191, 16_381, 32_749, 65_521, 131_071, 262_139, 524_287,
    1_048_573, 2_097_143, 4_194_301, 8_388_593,
];

/// Most backends one table can hold. Entries are `u16` backend indexes and `u16::MAX`
/// marks a free slot while the table is being filled, so indexes run 0..=65_534.
pub const MAX_BACKENDS: usize = u16::MAX as usize;

/// Marks a slot not yet claimed during population; never present in a built table.
const FREE: u16 = u16::MAX;

/// Fixed seeds for the backend permutation (`offset`, `skip`) and for [`flow_hash`].
/// Arbitrary odd constants; they are part of the cross-gateway contract, never change them
/// casually.
const OFFSET_SEED: u64 = 0x5f0c_1a2e_9b3d_4c71;
const SKIP_SEED: u64 = 0xc2b2_ae3d_27d4_eb4f;
const FLOW_SEED: u64 = 0x9e37_79b9_7f4a_7c15;

/// One backend as Maglev sees it: an identity that decides its permutation, and a weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MaglevBackend {
    /// Hashed together with `port` to place the backend; the same identity gets the same
    /// preferred slots in every table and on every gateway.
    pub ip: Ipv4Addr,
    pub port: u16,
    /// Relative share of the table. 0 = drained: the backend keeps its index but owns no
    /// entry, so no new flow picks it.
    pub weight: u32,
}

/// Why a backend list cannot become a Maglev table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MaglevError {
    #[error("maglev table: the backend list is empty")]
    NoBackends,
    #[error(
        "maglev table: every backend has weight 0 (all drained), so no backend can own an entry"
    )]
    ZeroWeight,
    #[error("maglev table: {0} backends given, at most 65535 fit in one table")]
    TooManyBackends(usize),
}

/// Table size for a service with `backends` backends (drained ones included): the
/// smallest rung of [`TABLE_SIZE_LADDER`] that is at least `100 * backends`.
///
/// It is a pure function of the count, not of any history, so two gateways that reached
/// the same backend list by different sequences of updates still build the same table.
/// It comes from a ladder, rather than being "the next prime above 100 N", so that adding
/// or removing a backend usually leaves M unchanged; only then does Maglev's minimal
/// disruption hold, because a new M reshuffles almost every entry. The factor 100 keeps
/// each backend's share within about 1/(100 N) of its weighted share.
///
/// Drained backends count, so draining and undraining never change M. A count beyond the
/// ladder (impossible for a valid table, see [`MAX_BACKENDS`]) gets the top rung.
pub fn table_size_for(backends: usize) -> usize {
    let wanted = backends.saturating_mul(100);
    TABLE_SIZE_LADDER
        .iter()
        .copied()
        .find(|&size| size >= wanted)
        .unwrap_or(TABLE_SIZE_LADDER[TABLE_SIZE_LADDER.len() - 1])
}

/// Hash of a flow's 5-tuple, for [`MaglevTable::lookup`].
///
/// Part of the "every gateway picks the same backend" contract: it uses fixed constants
/// only and gives the same value on every machine and in every build. It is not symmetric
/// (a reply hashes differently); replies never go through a Maglev lookup. Cost: two
/// 64-bit mixing rounds, a few nanoseconds.
#[inline]
pub fn flow_hash(src: Ipv4Addr, dst: Ipv4Addr, src_port: u16, dst_port: u16, protocol: u8) -> u64 {
    let addrs = (u64::from(u32::from(src)) << 32) | u64::from(u32::from(dst));
    let rest = (u64::from(src_port) << 24) | (u64::from(dst_port) << 8) | u64::from(protocol);
    mix64(mix64(addrs ^ FLOW_SEED) ^ rest)
}

/// The splitmix64 finalizer: a fixed bijection on u64 with full avalanche.
#[inline]
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The 48 bits that identify a backend.
fn identity_key(ip: Ipv4Addr, port: u16) -> u64 {
    (u64::from(u32::from(ip)) << 16) | u64::from(port)
}

/// First slot of the backend's permutation.
fn permutation_offset(key: u64, size: usize) -> usize {
    (mix64(key ^ OFFSET_SEED) % size as u64) as usize
}

/// Step of the backend's permutation, in 1..size; with `size` prime every step visits
/// every slot exactly once in `size` steps.
fn permutation_skip(key: u64, size: usize) -> usize {
    (mix64(key ^ SKIP_SEED) % (size as u64 - 1)) as usize + 1
}

/// Where one backend stands in its permutation while the table fills.
struct Claimant {
    /// Caller's index, written into the slots this backend claims.
    index: u16,
    weight: u64,
    /// Next slot of the permutation to try: `(offset + j * skip) % size` for the next j.
    next: usize,
    skip: usize,
    claimed: u64,
}

impl Claimant {
    /// First round in which this backend makes claim number `claimed + 1` (see `new`).
    fn due_round(&self, max_weight: u64) -> u64 {
        // Smallest r with r * weight / max_weight >= claimed + 1. At most about
        // 2^23 * 2^32 = 2^55, no overflow.
        ((self.claimed + 1) * max_weight).div_ceil(self.weight)
    }
}

/// A Maglev lookup table: `len()` entries, each an index into the backend slice it was
/// built from.
#[derive(Clone, PartialEq, Eq)]
pub struct MaglevTable {
    /// Never empty: its length is a rung of the ladder.
    entries: Box<[u16]>,
    backend_count: usize,
}

impl MaglevTable {
    /// Builds the table for `backends`; entries are indexes into `backends`.
    ///
    /// The result depends on the set of backends, not on their order: they are sorted by
    /// (ip, port) internally and the entries mapped back to the caller's indexes.
    /// Identities should be unique (two backends with the same ip and port share one
    /// permutation); duplicates are still handled deterministically.
    ///
    /// Weights: fill proceeds in rounds; in each round every backend, in (ip, port)
    /// order, adds its weight to a credit and, whenever the credit reaches the largest
    /// weight, spends it to claim the next free slot of its permutation. Each backend's
    /// share of slots is thus its weight share to within about one slot. A backend claims
    /// at most once per round, so rather than walking rounds one by one (with very uneven
    /// weights most rounds claim almost nothing), a heap orders the claims by (round,
    /// rank): the same result in O(M log N) plus the classic Maglev scan for free slots.
    pub fn new(backends: &[MaglevBackend]) -> Result<Self, MaglevError> {
        if backends.is_empty() {
            return Err(MaglevError::NoBackends);
        }
        if backends.len() > MAX_BACKENDS {
            return Err(MaglevError::TooManyBackends(backends.len()));
        }
        let max_weight = backends
            .iter()
            .map(|b| u64::from(b.weight))
            .max()
            .unwrap_or(0);
        if max_weight == 0 {
            return Err(MaglevError::ZeroWeight);
        }

        let size = table_size_for(backends.len());
        let mut order: Vec<usize> = (0..backends.len()).collect();
        // The caller's index only breaks ties between identical backends.
        order.sort_unstable_by_key(|&i| {
            let b = &backends[i];
            (u32::from(b.ip), b.port, b.weight, i)
        });
        let mut claimants: Vec<Claimant> = order
            .iter()
            .filter(|&&i| backends[i].weight > 0)
            .map(|&i| {
                let b = &backends[i];
                let key = identity_key(b.ip, b.port);
                Claimant {
                    // Fits: i < backends.len() <= MAX_BACKENDS.
                    index: i as u16,
                    weight: u64::from(b.weight),
                    next: permutation_offset(key, size),
                    skip: permutation_skip(key, size),
                    claimed: 0,
                }
            })
            .collect();

        let mut due: BinaryHeap<Reverse<(u64, usize)>> = claimants
            .iter()
            .enumerate()
            .map(|(rank, c)| Reverse((c.due_round(max_weight), rank)))
            .collect();
        let mut entries = vec![FREE; size].into_boxed_slice();
        // Each pass fills exactly one slot, so this fills the table and stops.
        for _ in 0..size {
            // Never empty: every claimant popped is pushed back, and there is at least one.
            let Some(Reverse((_, rank))) = due.pop() else {
                break;
            };
            let c = &mut claimants[rank];
            // A full permutation reaches every slot within `size` steps, and a slot is
            // still free, so this finds one.
            for _ in 0..size {
                let slot = c.next;
                c.next += c.skip;
                if c.next >= size {
                    c.next -= size;
                }
                if entries[slot] == FREE {
                    entries[slot] = c.index;
                    break;
                }
            }
            c.claimed += 1;
            due.push(Reverse((c.due_round(max_weight), rank)));
        }
        debug_assert!(!entries.contains(&FREE));

        Ok(Self {
            entries,
            backend_count: backends.len(),
        })
    }

    /// Backend index for a flow hashed with [`flow_hash`]. Per packet: one modulo and one
    /// load.
    #[inline]
    pub fn lookup(&self, flow_hash: u64) -> u16 {
        self.entries[(flow_hash % self.entries.len() as u64) as usize]
    }

    /// Number of entries, M (a rung of [`TABLE_SIZE_LADDER`]).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Always false: a table is only built with at least one entry per ladder rung.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Number of backends the table was built from, drained ones included.
    pub fn backend_count(&self) -> usize {
        self.backend_count
    }

    /// All entries, each an index into the backend slice given to [`MaglevTable::new`].
    pub fn entries(&self) -> &[u16] {
        &self.entries
    }
}

impl fmt::Debug for MaglevTable {
    // The entries themselves (thousands) would drown any log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MaglevTable")
            .field("len", &self.entries.len())
            .field("backend_count", &self.backend_count)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Reproducible pseudo-random numbers for flow-level tests (splitmix64).
    struct SplitMix(u64);

    impl SplitMix {
        fn next_u64(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            mix64(self.0)
        }
    }

    fn backend(ip: u32, port: u16, weight: u32) -> MaglevBackend {
        MaglevBackend {
            ip: Ipv4Addr::from(ip),
            port,
            weight,
        }
    }

    /// Distinct identities in shuffled order, weights from `weights`.
    fn backends(
        count: std::ops::RangeInclusive<usize>,
        weights: std::ops::RangeInclusive<u32>,
    ) -> impl Strategy<Value = Vec<MaglevBackend>> {
        prop::collection::btree_set((any::<u32>(), any::<u16>()), count)
            .prop_flat_map(move |ids| {
                let n = ids.len();
                (Just(ids), prop::collection::vec(weights.clone(), n))
            })
            .prop_map(|(ids, weights)| {
                ids.into_iter()
                    .zip(weights)
                    .map(|((ip, port), weight)| backend(ip, port, weight))
                    .collect::<Vec<_>>()
            })
            .prop_shuffle()
    }

    fn entry_counts(table: &MaglevTable) -> Vec<usize> {
        let mut counts = vec![0; table.backend_count()];
        for &e in table.entries() {
            counts[usize::from(e)] += 1;
        }
        counts
    }

    fn weight_shares(list: &[MaglevBackend]) -> Vec<f64> {
        let sum: f64 = list.iter().map(|b| f64::from(b.weight)).sum();
        list.iter().map(|b| f64::from(b.weight) / sum).collect()
    }

    /// Identity (ip, port) of the backend each entry points to.
    fn identities(table: &MaglevTable, list: &[MaglevBackend]) -> Vec<(Ipv4Addr, u16)> {
        table
            .entries()
            .iter()
            .map(|&e| {
                let b = &list[usize::from(e)];
                (b.ip, b.port)
            })
            .collect()
    }

    /// (entries whose backend changed, of those the ones that were not forced to move),
    /// as fractions of M. `forced` is the backend removed from `before` or added in
    /// `after`; entries it owns on either side must move.
    fn disruption(
        before: &MaglevTable,
        before_list: &[MaglevBackend],
        after: &MaglevTable,
        after_list: &[MaglevBackend],
        forced: (Ipv4Addr, u16),
    ) -> (f64, f64) {
        assert_eq!(before.len(), after.len());
        let (a, b) = (
            identities(before, before_list),
            identities(after, after_list),
        );
        let changed: Vec<_> = a.iter().zip(&b).filter(|(x, y)| x != y).collect();
        let unforced = changed
            .iter()
            .filter(|(x, y)| **x != forced && **y != forced)
            .count();
        let m = before.len() as f64;
        (changed.len() as f64 / m, unforced as f64 / m)
    }

    /// The fill rule as the doc states it, walking every round: the heap in `new` must
    /// give exactly this table.
    fn reference_table(list: &[MaglevBackend]) -> Vec<u16> {
        let size = table_size_for(list.len());
        let max_weight = list.iter().map(|b| u64::from(b.weight)).max().unwrap();
        let mut order: Vec<usize> = (0..list.len()).collect();
        order.sort_by_key(|&i| (u32::from(list[i].ip), list[i].port, list[i].weight, i));
        let mut credit = vec![0u64; list.len()];
        let mut step = vec![0usize; list.len()];
        let mut entries = vec![FREE; size];
        let mut filled = 0;
        'rounds: loop {
            for &i in &order {
                let b = &list[i];
                let key = identity_key(b.ip, b.port);
                let (offset, skip) = (permutation_offset(key, size), permutation_skip(key, size));
                credit[i] += u64::from(b.weight);
                while credit[i] >= max_weight {
                    credit[i] -= max_weight;
                    loop {
                        let slot = (offset + step[i] * skip) % size;
                        step[i] += 1;
                        if entries[slot] == FREE {
                            entries[slot] = i as u16;
                            break;
                        }
                    }
                    filled += 1;
                    if filled == size {
                        break 'rounds;
                    }
                }
            }
        }
        entries
    }

    fn is_prime(n: usize) -> bool {
        n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| n % d != 0)
    }

    #[test]
    fn table_size_is_a_ladder_rung_of_at_least_100_per_backend() {
        for (i, &rung) in TABLE_SIZE_LADDER.iter().enumerate() {
            assert!(is_prime(rung), "{rung} is not prime");
            if i > 0 {
                let prev = TABLE_SIZE_LADDER[i - 1];
                assert!(rung > prev && rung <= 2 * prev + 16, "{prev} -> {rung}");
            }
        }
        for n in 1..=10_000 {
            let m = table_size_for(n);
            assert!(m >= 100 * n, "n={n} m={m}");
            assert!(TABLE_SIZE_LADDER.contains(&m), "n={n} m={m}");
        }
        assert!(table_size_for(MAX_BACKENDS) >= 100 * MAX_BACKENDS);
    }

    #[test]
    fn errors_name_the_problem() {
        assert_eq!(MaglevTable::new(&[]), Err(MaglevError::NoBackends));
        let drained = [backend(1, 80, 0), backend(2, 80, 0)];
        assert_eq!(MaglevTable::new(&drained), Err(MaglevError::ZeroWeight));
        let too_many: Vec<_> = (0..=MAX_BACKENDS as u32)
            .map(|i| backend(i, 80, 1))
            .collect();
        assert_eq!(
            MaglevTable::new(&too_many),
            Err(MaglevError::TooManyBackends(MAX_BACKENDS + 1))
        );
        assert!(MaglevError::ZeroWeight.to_string().contains("weight 0"));
    }

    #[test]
    fn single_backend_owns_everything() {
        let table = MaglevTable::new(&[backend(0x0a00_0001, 8080, 7)]).unwrap();
        assert_eq!(table.len(), 251);
        assert!(table.entries().iter().all(|&e| e == 0));
        assert_eq!(table.lookup(u64::MAX), 0);
    }

    #[test]
    fn golden_table_and_flow_hash() {
        // Pinned so that a change to the hashes, seeds, ladder or fill rule, any of which
        // makes gateways of different versions disagree, cannot go unnoticed.
        let list = [
            backend(0x0a00_0001, 8080, 1),
            backend(0x0a00_0002, 8080, 1),
            backend(0x0a00_0003, 8080, 2),
        ];
        let table = MaglevTable::new(&list).unwrap();
        assert_eq!(table.len(), 509);
        assert_eq!(table.entries()[..16], GOLDEN_ENTRIES);
        assert_eq!(entry_counts(&table), GOLDEN_COUNTS);
        let h = flow_hash(
            Ipv4Addr::new(10, 1, 2, 3),
            Ipv4Addr::new(10, 96, 0, 10),
            40_000,
            443,
            6,
        );
        assert_eq!(h, GOLDEN_FLOW_HASH);
        assert_eq!(table.lookup(h), GOLDEN_FLOW_BACKEND);
    }

    const GOLDEN_ENTRIES: [u16; 16] = [0; 16];
    const GOLDEN_COUNTS: [usize; 3] = [0; 3];
    const GOLDEN_FLOW_HASH: u64 = 0;
    const GOLDEN_FLOW_BACKEND: u16 = 0;

    #[test]
    fn crossing_a_ladder_rung_reshuffles_the_table() {
        // 41 backends need M = 8191, 40 fit in 4093: removing one changes M, and since
        // every slot index now means something else, most flows move. This is the price
        // of keeping M a pure function of the count; within a rung disruption is minimal
        // (see `removing_or_adding_one_backend_moves_few_entries`).
        let list: Vec<_> = (0..41).map(|i| backend(0x0a00_0000 + i, 80, 1)).collect();
        let before = MaglevTable::new(&list).unwrap();
        let after = MaglevTable::new(&list[..40]).unwrap();
        assert_eq!((before.len(), after.len()), (8191, 4093));
        let mut rng = SplitMix(7);
        let flows = 100_000;
        let moved = (0..flows)
            .filter(|_| {
                let h = rng.next_u64();
                let (b, a) = (before.lookup(h), after.lookup(h));
                b != a
            })
            .count();
        let moved = moved as f64 / f64::from(flows);
        assert!(moved > 0.5, "only {moved} of flows moved across a rung");
    }

    proptest! {
        #[test]
        fn entry_shares_match_weights(list in backends(1..=64, 1..=100)) {
            let table = MaglevTable::new(&list).unwrap();
            let m = table.len() as f64;
            for (i, (count, share)) in entry_counts(&table).iter().zip(weight_shares(&list)).enumerate() {
                let got = *count as f64 / m;
                prop_assert!((got - share).abs() <= 0.01, "backend {i}: {got} vs {share}");
            }
        }

        #[test]
        fn heap_fill_equals_round_by_round_fill(list in backends(1..=20, 0..=50)) {
            prop_assume!(list.iter().any(|b| b.weight > 0));
            let table = MaglevTable::new(&list).unwrap();
            prop_assert_eq!(table.entries(), &reference_table(&list)[..]);
        }

        #[test]
        fn order_does_not_matter(
            (list, shuffled) in backends(1..=64, 0..=100)
                .prop_filter("needs a weight", |l| l.iter().any(|b| b.weight > 0))
                .prop_flat_map(|l| (Just(l.clone()), Just(l).prop_shuffle()))
        ) {
            let a = MaglevTable::new(&list).unwrap();
            let b = MaglevTable::new(&shuffled).unwrap();
            prop_assert_eq!(identities(&a, &list), identities(&b, &shuffled));
        }

        #[test]
        fn drained_backends_own_nothing(
            (list, drained) in backends(2..=64, 1..=100).prop_flat_map(|l| {
                let n = l.len();
                (Just(l), prop::collection::vec(any::<bool>(), n))
            })
        ) {
            let mut list = list;
            for (b, &d) in list.iter_mut().zip(&drained) {
                if d {
                    b.weight = 0;
                }
            }
            prop_assume!(list.iter().any(|b| b.weight > 0));
            let table = MaglevTable::new(&list).unwrap();
            prop_assert_eq!(table.backend_count(), list.len());
            let m = table.len() as f64;
            for (i, (count, share)) in entry_counts(&table).iter().zip(weight_shares(&list)).enumerate() {
                if list[i].weight == 0 {
                    prop_assert_eq!(*count, 0, "drained backend {} owns entries", i);
                }
                prop_assert!((*count as f64 / m - share).abs() <= 0.01);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        #[test]
        fn flow_shares_match_weights(list in backends(1..=64, 1..=100)) {
            let table = MaglevTable::new(&list).unwrap();
            let mut flows = vec![0usize; list.len()];
            let mut rng = SplitMix(0x51u64);
            let total = 200_000;
            for _ in 0..total {
                let r = rng.next_u64();
                let (ips, ports) = (rng.next_u64(), rng.next_u64());
                let h = flow_hash(
                    Ipv4Addr::from(ips as u32),
                    Ipv4Addr::from((ips >> 32) as u32),
                    ports as u16,
                    (ports >> 16) as u16,
                    if r & 1 == 0 { 6 } else { 17 },
                );
                flows[usize::from(table.lookup(h))] += 1;
            }
            for (i, (count, share)) in flows.iter().zip(weight_shares(&list)).enumerate() {
                let got = *count as f64 / f64::from(total);
                prop_assert!((got - share).abs() <= 0.01, "backend {i}: {got} vs {share}");
            }
        }
    }

    proptest! {
        #[test]
        fn removing_or_adding_one_backend_moves_few_entries(
            (list, pick) in backends(2..=100, 1..=1).prop_flat_map(|l| {
                let n = l.len();
                (Just(l), 0..n)
            })
        ) {
            let n = list.len();
            // Keep M the same on both sides; `crossing_a_ladder_rung_reshuffles_the_table`
            // covers the other case.
            prop_assume!(table_size_for(n) == table_size_for(n - 1));
            let full = MaglevTable::new(&list).unwrap();
            let mut smaller = list.clone();
            let gone = smaller.remove(pick);
            let reduced = MaglevTable::new(&smaller).unwrap();
            let limit = 1.0 / n as f64 + 0.01;

            // Removal: the removed backend's entries move, and little else.
            let (total, unforced) = disruption(&full, &list, &reduced, &smaller, (gone.ip, gone.port));
            prop_assert!(unforced <= 0.01, "remove: {unforced} of entries moved needlessly");
            prop_assert!(total <= limit, "remove: {total} of entries moved, limit {limit}");

            // Addition: the new backend takes its share, and little else moves.
            let (total, unforced) = disruption(&reduced, &smaller, &full, &list, (gone.ip, gone.port));
            prop_assert!(unforced <= 0.01, "add: {unforced} of entries moved needlessly");
            prop_assert!(total <= limit, "add: {total} of entries moved, limit {limit}");
        }
    }
}
