/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The Sluice wire contract for the XDP programs: every number the gateway and the
 * stubs must agree on to exchange Geneve packets (DESIGN.md, "Wire contract").
 *
 * The Rust side is dataplane/src/wire/contract.rs. Each constant here has the same
 * name and value as there, and dataplane/tests/contract_header.rs fails when the two
 * disagree or one side has a constant the other lacks. Keep one plain
 * `#define NAME VALUE` per line between the markers (a literal, or a parenthesised sum of
 * literals), so that test can read them without a C preprocessor.
 */
#ifndef SLUICE_H
#define SLUICE_H

/* BEGIN WIRE CONTRACT */
#define GENEVE_UDP_PORT 6081
#define GENEVE_PROTO_ETHERNET 0x6558
#define SLUICE_OPTION_CLASS 0xFF01
#define OPT_HOST_HINT 0x01
#define OPT_DIRECT 0x02
#define OPT_SERVICE_ORIG 0x03
#define OPT_STALE 0x04
#define OPTION_CRITICAL_BIT 0x80
#define UDP_SRC_PORT_BASE 49152
#define UDP_SRC_PORT_RANGE 16384
#define OUTER_TTL 64
#define ENCAP_MTU_OVERHEAD 100
#define OUTER_HEADERS_LEN (14 + 20 + 8 + 8)
/* END WIRE CONTRACT */

/*
 * The worker stubs' maps and counters (bpf/stubs.bpf.c; the Rust mirror is
 * dataplane/src/stubs/layout.rs). dataplane/tests/contract_header.rs checks the sizes
 * and MAX_BOUNCERS below, and the order and names of enum stub_counter, against the Rust
 * side; the _Static_asserts tie the sizes to the structs. Addresses and ports are in
 * network byte order, as packets carry them; VNIs, ifindexes and counts in host order.
 */
/* BEGIN STUB MAPS */
#define MAX_BOUNCERS 8
#define NODE_CONFIG_SIZE 16
#define POD_VALUE_SIZE 56
#define ENDPOINT_KEY_SIZE 8
#define ENDPOINT_VALUE_SIZE 12
#define NEIGHBOR_VALUE_SIZE 8
#define REV_NAT_KEY_SIZE 20
#define REV_NAT_VALUE_SIZE 8
#define HOST_CACHE_VALUE_SIZE 16
#define HOST_CACHE_TTL_NS 10000000000
/* END STUB MAPS */

#include <linux/types.h>

/* The one entry of node_cfg: this worker on the underlay. ifindex 0 = not set yet. */
struct node_config {
	__be32 ip;
	__u32 ifindex;
	__u8 mac[6];
	__u8 pad[2];
};

/* pods: host-side veth ifindex -> the pod behind it. */
struct pod_value {
	__u32 vni;
	__be32 ip;
	__u8 mac[6];
	__u8 router_mac[6];
	__u32 bouncer_count; /* 1..MAX_BOUNCERS */
	__be32 bouncers[MAX_BOUNCERS];
};

/* Key of endpoints (local pods) and host_cache (remote endpoints' hosts). */
struct endpoint_key {
	__u32 vni;
	__be32 ip;
};

/* endpoints: a local pod's host-side ifindex and pod-side MAC. */
struct endpoint_value {
	__u32 ifindex;
	__u8 mac[6];
	__u8 pad[2];
};

/* neighbors: underlay IPv4 -> MAC. */
struct neighbor_value {
	__u8 mac[6];
	__u8 pad[2];
};

/* rev_nat: a service backend's reply flow, as the backend sends it. */
struct rev_nat_key {
	__u32 vni;
	__be32 src_ip; /* backend */
	__be32 dst_ip; /* client */
	__be16 src_port;
	__be16 dst_port;
	__u8 proto;
	__u8 pad[3];
};

/* ... and the service address the reply must come from. */
struct rev_nat_value {
	__be32 vip;
	__be16 vip_port;
	__u8 pad[2];
};

/*
 * host_cache: (VNI, remote endpoint) -> the underlay address of its host, and when the
 * transit stub last learned it (bpf_ktime_get_ns, CLOCK_MONOTONIC). The agent stub uses
 * an entry only while it is younger than HOST_CACHE_TTL_NS: a pod that was deleted or
 * moved stops drawing DIRECT traffic to its old host within that time (the bouncer
 * re-hints), while every HOST_HINT or DIRECT received refreshes the entries of live flows.
 */
struct host_cache_value {
	__be32 host;
	__u32 pad;
	__u64 learned_ns;
};

_Static_assert(sizeof(struct node_config) == NODE_CONFIG_SIZE, "node_config");
_Static_assert(sizeof(struct pod_value) == POD_VALUE_SIZE, "pod_value");
_Static_assert(__builtin_offsetof(struct pod_value, bouncer_count) == 20, "pod_value");
_Static_assert(__builtin_offsetof(struct pod_value, bouncers) == 24, "pod_value");
_Static_assert(sizeof(struct endpoint_key) == ENDPOINT_KEY_SIZE, "endpoint_key");
_Static_assert(sizeof(struct endpoint_value) == ENDPOINT_VALUE_SIZE, "endpoint_value");
_Static_assert(sizeof(struct neighbor_value) == NEIGHBOR_VALUE_SIZE, "neighbor_value");
_Static_assert(sizeof(struct rev_nat_key) == REV_NAT_KEY_SIZE, "rev_nat_key");
_Static_assert(__builtin_offsetof(struct rev_nat_key, proto) == 16, "rev_nat_key");
_Static_assert(sizeof(struct rev_nat_value) == REV_NAT_VALUE_SIZE, "rev_nat_value");
_Static_assert(sizeof(struct host_cache_value) == HOST_CACHE_VALUE_SIZE, "host_cache_value");
_Static_assert(__builtin_offsetof(struct host_cache_value, learned_ns) == 8, "host_cache_value");

/*
 * Slots of the per-CPU counters map. Outcomes (AGENT_SAME_HOST .. AGENT_ENCAP_DIRECT,
 * TRANSIT_DELIVERED, TRANSIT_PASSED) and drops (DROP_*) count every packet exactly once;
 * AGENT_REVERSE_NAT and TRANSIT_HOST_HINT/DIRECT/SERVICE_ORIG count events on packets
 * an outcome counted. The Rust labels are these names without STUB_CTR_, lowercased.
 */
/* BEGIN STUB COUNTERS */
enum stub_counter {
	STUB_CTR_AGENT_SAME_HOST = 0,
	STUB_CTR_AGENT_ENCAP_BOUNCER = 1,
	STUB_CTR_AGENT_ENCAP_DIRECT = 2,
	STUB_CTR_AGENT_REVERSE_NAT = 3,
	STUB_CTR_TRANSIT_DELIVERED = 4,
	STUB_CTR_TRANSIT_PASSED = 5,
	STUB_CTR_TRANSIT_HOST_HINT = 6,
	STUB_CTR_TRANSIT_DIRECT = 7,
	STUB_CTR_TRANSIT_SERVICE_ORIG = 8,
	STUB_CTR_DROP_UNKNOWN_POD = 9,
	STUB_CTR_DROP_NO_NODE = 10,
	STUB_CTR_DROP_UNSUPPORTED_ETHERTYPE = 11,
	STUB_CTR_DROP_TRUNCATED = 12,
	STUB_CTR_DROP_SPOOFED_SOURCE = 13,
	STUB_CTR_DROP_NO_BOUNCER = 14,
	STUB_CTR_DROP_NO_NEIGHBOR = 15,
	STUB_CTR_DROP_ENCAP_FAILED = 16,
	STUB_CTR_DROP_BAD_GENEVE = 17,
	STUB_CTR_DROP_BAD_OPTION = 18,
	STUB_CTR_DROP_UNKNOWN_CRITICAL_OPTION = 19,
	STUB_CTR_DROP_TOO_MANY_OPTIONS = 20,
	STUB_CTR_DROP_NO_LOCAL_ENDPOINT = 21,
	STUB_CTR_COUNT = 22,
};
/* END STUB COUNTERS */

#endif /* SLUICE_H */
