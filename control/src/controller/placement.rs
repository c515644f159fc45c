//! Which gateways hold which roles: a divider role per VPC (`spec.dividers` gateways) and
//! a bouncer role per subnet (`spec.bouncers` gateways), placed by rendezvous hashing.
//!
//! Each (scope, gateway) pair gets a score from a fixed hash; a scope's role goes to its
//! highest-scoring gateways. So placement is deterministic (same objects, same result on
//! every controller replica and after a restart), spreads roles evenly, and is stable:
//! adding a gateway moves only the roles that the new gateway now wins, each to the new
//! gateway; removing one moves only its roles. Pure functions, no I/O.

use std::collections::BTreeMap;

use super::source::Snapshot;

/// A stable 64-bit hash (FNV-1a, then a murmur3 finaliser to spread the bits): unlike
/// `std`'s hasher it never changes between Rust releases or processes.
fn stable_hash(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in *part {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // Separates the parts, so ("ab", "c") and ("a", "bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The `count` gateways of `gateways` that hold `scope`'s role, best first. Fewer when
/// fewer gateways exist; none when none do.
pub fn place<'a>(
    scope: &str,
    count: u32,
    gateways: impl IntoIterator<Item = &'a str>,
) -> Vec<String> {
    let mut ranked: Vec<(u64, &str)> = gateways
        .into_iter()
        .map(|g| (stable_hash(&[scope.as_bytes(), g.as_bytes()]), g))
        .collect();
    ranked.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    ranked
        .into_iter()
        .take(count as usize)
        .map(|(_, g)| g.to_owned())
        .collect()
}

/// Every role of a snapshot: VPC name -> divider gateways, subnet name -> bouncer
/// gateways (gateway names, best first).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Placement {
    pub dividers: BTreeMap<String, Vec<String>>,
    pub bouncers: BTreeMap<String, Vec<String>>,
}

impl Placement {
    /// Places every VPC's and subnet's role on the snapshot's gateways.
    pub fn of(snapshot: &Snapshot) -> Self {
        let gateways = || snapshot.gateways.keys().map(String::as_str);
        Self {
            dividers: snapshot
                .vpcs
                .iter()
                .map(|(name, vpc)| {
                    let scope = format!("vpc/{name}");
                    (name.clone(), place(&scope, vpc.spec.dividers, gateways()))
                })
                .collect(),
            bouncers: snapshot
                .subnets
                .iter()
                .map(|(name, subnet)| {
                    let scope = format!("subnet/{name}");
                    (
                        name.clone(),
                        place(&scope, subnet.spec.bouncers, gateways()),
                    )
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("gw-{i}")).collect()
    }

    #[test]
    fn hash_is_fixed() {
        // A change here would move every role in every running cluster.
        assert_eq!(
            stable_hash(&[b"vpc/blue", b"gw-0"]),
            stable_hash(&[b"vpc/blue", b"gw-0"])
        );
        assert_ne!(stable_hash(&[b"ab", b"c"]), stable_hash(&[b"a", b"bc"]));
        let placed = place("subnet/blue-a", 2, ["gw-a", "gw-b", "gw-c"]);
        assert_eq!(placed, place("subnet/blue-a", 2, ["gw-c", "gw-a", "gw-b"]));
        assert_eq!(placed.len(), 2);
    }

    #[test]
    fn roles_spread_over_gateways() {
        let gws = names(4);
        let mut load = BTreeMap::<String, usize>::new();
        for s in 0..4000 {
            for g in place(&format!("subnet/s{s}"), 1, gws.iter().map(String::as_str)) {
                *load.entry(g).or_default() += 1;
            }
        }
        for (g, n) in &load {
            assert!((800..1200).contains(n), "{g} holds {n} of 4000 roles");
        }
    }

    proptest! {
        #[test]
        fn adding_a_gateway_moves_roles_only_to_it(
            n in 1usize..8, count in 1u32..4, scopes in 1usize..40
        ) {
            let before = names(n);
            let mut after = before.clone();
            after.push("gw-new".into());
            for s in 0..scopes {
                let scope = format!("vpc/v{s}");
                let old: BTreeSet<_> = place(&scope, count, before.iter().map(String::as_str)).into_iter().collect();
                let new: BTreeSet<_> = place(&scope, count, after.iter().map(String::as_str)).into_iter().collect();
                prop_assert_eq!(new.len(), (count as usize).min(n + 1));
                for g in new.difference(&old) {
                    prop_assert_eq!(g.as_str(), "gw-new");
                }
                prop_assert!(old.difference(&new).count() <= 1);
            }
        }
    }
}
