// SPDX-License-Identifier: (Apache-2.0 OR GPL-2.0-only)
/*
 * The worker node's XDP stubs (DESIGN.md, "Packet paths"), in one object so that the
 * programs share their maps without any wiring:
 *
 * - sluice_agent, on the host side of each pod veth (pod egress): same-host
 *   destination -> redirect to that pod's veth; reply of a service backend -> source
 *   rewritten back to the VIP; cached host for (VNI, dst) -> Geneve with DIRECT straight
 *   to that host; otherwise Geneve to a bouncer of the pod's subnet chosen by a flow
 *   hash. ARP goes to the hashed bouncer too.
 * - sluice_transit, on the node's underlay interface (ingress): Geneve to this node ->
 *   options recorded (HOST_HINT, DIRECT into host_cache; SERVICE_ORIG into rev_nat),
 *   inner destination MAC set, outer headers stripped, redirect to the local pod's veth.
 *   Everything else passes to the kernel untouched.
 * - sluice_pod_side, XDP_PASS on the pod end of each veth: a veth only receives
 *   redirected frames when its peer runs an XDP program (PLATFORM.md pitfall 5).
 *
 * Loaded, pinned and filled by dataplane/src/stubs/. Every packet is counted once in
 * `counters` (enum stub_counter in sluice.h); nothing is logged.
 *
 * Licence: the object declares "GPL" to the kernel because bpf_fib_lookup is a GPL-only
 * helper; this file is offered under Apache-2.0 or GPL-2.0, as its SPDX line says.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "sluice.h"

#define AF_INET 2
/* iphdr.frag_off bits (include/net/ip.h is not uapi). */
#define IP_DF 0x4000
#define IP_MF 0x2000
#define IP_OFFSET 0x1FFF
#define ARPHRD_ETHER 1
/* Options the transit stub parses before giving up (counted as too many options). */
#define GENEVE_MAX_OPTIONS 8
/* The Geneve base header's "Opt Len" field is 6 bits of 4-byte words. */
#define GENEVE_MAX_OPT_LEN (63 * 4)

struct geneve_hdr {
	__u8 ver_optlen; /* version (2 bits), option length in 4-byte words (6 bits) */
	__u8 flags;	 /* O, C, reserved */
	__be16 protocol;
	__u8 vni[3];
	__u8 reserved;
};

struct geneve_opt {
	__be16 opt_class;
	__u8 type;
	__u8 length; /* reserved (3 bits), body length in 4-byte words (5 bits) */
};

/* ARP for IPv4 over Ethernet. */
struct arp_ipv4 {
	__be16 htype;
	__be16 ptype;
	__u8 hlen;
	__u8 plen;
	__be16 oper;
	__u8 sha[6];
	__u8 spa[4];
	__u8 tha[6];
	__u8 tpa[4];
} __attribute__((packed));

_Static_assert(sizeof(struct geneve_hdr) == 8, "geneve_hdr");
_Static_assert(sizeof(struct arp_ipv4) == 28, "arp_ipv4");

/* Capacities are set by the loader (dataplane/src/stubs/mod.rs, `capacity`). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct node_config);
} node_cfg SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, struct pod_value);
} pods SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct endpoint_key);
	__type(value, struct endpoint_value);
} endpoints SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __be32);
	__type(value, struct neighbor_value);
} neighbors SEC(".maps");

/* (VNI, remote endpoint) -> the underlay address of its host, and when it was learned. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct endpoint_key);
	__type(value, struct host_cache_value);
} host_cache SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct rev_nat_key);
	__type(value, struct rev_nat_value);
} rev_nat SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STUB_CTR_COUNT);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

static __always_inline int count(__u32 counter, int action)
{
	__u64 *value = bpf_map_lookup_elem(&counters, &counter);

	if (value)
		*value += 1;
	return action;
}

static __always_inline int mac_equal(const __u8 *a, const __u8 *b)
{
	return ((a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) | (a[3] ^ b[3]) |
		(a[4] ^ b[4]) | (a[5] ^ b[5])) == 0;
}

/*
 * Flow hash over two addresses (host order of the address values); symmetric so both
 * directions pick the same bouncer. Mirrored by `flow_hash` in dataplane/src/stubs/.
 */
static __always_inline __u32 flow_hash(__be32 a, __be32 b)
{
	__u32 h = (bpf_ntohl(a) ^ bpf_ntohl(b)) * 0x9E3779B1u;

	h ^= h >> 16;
	h *= 0x85EBCA6Bu;
	return h ^ (h >> 13);
}

static __always_inline __u16 csum_fold(__u32 sum)
{
	sum = (sum & 0xFFFF) + (sum >> 16);
	sum = (sum & 0xFFFF) + (sum >> 16);
	return (__u16)~sum;
}

/* RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m'), for a 32-bit field. */
static __always_inline __u16 csum_replace4(__u16 check, __u32 from, __u32 to)
{
	__u32 sum = (__u16)~check;

	sum += (~from >> 16) & 0xFFFF;
	sum += ~from & 0xFFFF;
	sum += to >> 16;
	sum += to & 0xFFFF;
	return csum_fold(sum);
}

static __always_inline __u16 csum_replace2(__u16 check, __u16 from, __u16 to)
{
	__u32 sum = (__u16)~check;

	sum += (__u16)~from;
	sum += to;
	return csum_fold(sum);
}

/*
 * Pushes outer Ethernet / IPv4 / UDP / Geneve (with a DIRECT option when `direct`) in
 * front of the frame and redirects it to the node's underlay interface, per the wire
 * contract. `outcome` is the counter of a successful encapsulation.
 */
static __always_inline int encapsulate(struct xdp_md *ctx, const struct node_config *node,
				       __be32 dst, __u32 vni, __u32 hash, int direct,
				       __u32 outcome)
{
	struct neighbor_value *neighbor = bpf_map_lookup_elem(&neighbors, &dst);
	__u32 opt_len = direct ? sizeof(struct geneve_opt) : 0;
	__u8 src_mac[ETH_ALEN], dst_mac[ETH_ALEN];
	__be32 src_ip = node->ip;
	__u32 ifindex = node->ifindex;
	void *data, *data_end;
	__u32 inner_len, sum = 0;
	struct ethhdr *eth;
	struct iphdr *ip;
	struct udphdr *udp;
	struct geneve_hdr *geneve;
	__u16 *word;

	__builtin_memcpy(src_mac, node->mac, ETH_ALEN);
	if (neighbor) {
		__builtin_memcpy(dst_mac, neighbor->mac, ETH_ALEN);
	} else {
		struct bpf_fib_lookup fib = {};
		long rc;

		fib.family = AF_INET;
		fib.ifindex = ifindex;
		fib.ipv4_src = src_ip;
		fib.ipv4_dst = dst;
		/*
		 * An output lookup, as for a packet this node sends from the uplink. The
		 * kernel answers only when IPv4 forwarding is on for the uplink; without it
		 * the node agent must fill `neighbors` itself.
		 */
		rc = bpf_fib_lookup(ctx, &fib, sizeof(fib), BPF_FIB_LOOKUP_OUTPUT);
		if (rc != BPF_FIB_LKUP_RET_SUCCESS)
			return count(STUB_CTR_DROP_NO_NEIGHBOR, XDP_DROP);
		__builtin_memcpy(dst_mac, fib.dmac, ETH_ALEN);
	}

	inner_len = ctx->data_end - ctx->data;
	if (bpf_xdp_adjust_head(ctx, -(int)(OUTER_HEADERS_LEN + opt_len)))
		return count(STUB_CTR_DROP_ENCAP_FAILED, XDP_DROP);
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	/* The inner frame is at least an Ethernet header, so this covers DIRECT too. */
	if (data + OUTER_HEADERS_LEN + sizeof(struct geneve_opt) > data_end)
		return count(STUB_CTR_DROP_ENCAP_FAILED, XDP_DROP);

	eth = data;
	__builtin_memcpy(eth->h_dest, dst_mac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, src_mac, ETH_ALEN);
	eth->h_proto = bpf_htons(ETH_P_IP);

	ip = (void *)(eth + 1);
	ip->version = 4;
	ip->ihl = 5;
	ip->tos = 0;
	ip->tot_len = bpf_htons(sizeof(*ip) + sizeof(*udp) + sizeof(*geneve) + opt_len +
				inner_len);
	ip->id = 0;
	ip->frag_off = bpf_htons(IP_DF);
	ip->ttl = OUTER_TTL;
	ip->protocol = IPPROTO_UDP;
	ip->check = 0;
	ip->saddr = src_ip;
	ip->daddr = dst;
	word = (__u16 *)ip;
#pragma unroll
	for (int i = 0; i < (int)(sizeof(*ip) / 2); i++)
		sum += word[i];
	ip->check = csum_fold(sum);

	udp = (void *)(ip + 1);
	udp->source = bpf_htons(UDP_SRC_PORT_BASE + hash % UDP_SRC_PORT_RANGE);
	udp->dest = bpf_htons(GENEVE_UDP_PORT);
	udp->len = bpf_htons(sizeof(*udp) + sizeof(*geneve) + opt_len + inner_len);
	udp->check = 0;

	geneve = (void *)(udp + 1);
	geneve->ver_optlen = opt_len / 4;
	geneve->flags = 0;
	geneve->protocol = bpf_htons(GENEVE_PROTO_ETHERNET);
	geneve->vni[0] = vni >> 16;
	geneve->vni[1] = vni >> 8;
	geneve->vni[2] = vni;
	geneve->reserved = 0;
	if (direct) {
		struct geneve_opt *opt = (void *)(geneve + 1);

		opt->opt_class = bpf_htons(SLUICE_OPTION_CLASS);
		opt->type = OPT_DIRECT;
		opt->length = 0;
	}
	return count(outcome, bpf_redirect(ifindex, 0));
}

/* Encapsulates to bouncers[flow_hash(src, dst) % n]. */
_Static_assert((MAX_BOUNCERS & (MAX_BOUNCERS - 1)) == 0, "MAX_BOUNCERS is a power of two");

static __always_inline int to_bouncer(struct xdp_md *ctx, const struct pod_value *pod,
				      const struct node_config *node, __be32 src, __be32 dst)
{
	__u32 n = pod->bouncer_count;
	__u32 hash = flow_hash(src, dst);
	__u32 index;

	if (n == 0 || n > MAX_BOUNCERS)
		return count(STUB_CTR_DROP_NO_BOUNCER, XDP_DROP);
	index = hash % n;
	/*
	 * The mask changes nothing (n <= MAX_BOUNCERS, a power of two), so clang would drop
	 * it; the barrier keeps it, and it is what bounds the index for the verifier.
	 */
	barrier_var(index);
	index &= MAX_BOUNCERS - 1;
	return encapsulate(ctx, node, pod->bouncers[index], pod->vni, hash, 0,
			   STUB_CTR_AGENT_ENCAP_BOUNCER);
}

/*
 * A backend's reply whose flow the transit stub recorded: rewrite its source to the
 * service's VIP and port, with incremental IPv4 and TCP/UDP checksums. Returns a drop
 * counter, or -1 to go on.
 */
static __always_inline int reverse_nat(struct iphdr *ip, void *data_end, __u32 vni)
{
	struct rev_nat_key key = {};
	struct rev_nat_value *nat;
	void *l4 = (void *)ip + ip->ihl * 4;
	__be16 *sport, *dport;
	__u16 *check;
	__be32 old_ip;
	__be16 old_port;

	if (ip->protocol != IPPROTO_TCP && ip->protocol != IPPROTO_UDP)
		return -1;
	/* Later fragments carry no ports; service flows are not fragmented here. */
	if (ip->frag_off & bpf_htons(IP_MF | IP_OFFSET))
		return -1;
	if (ip->protocol == IPPROTO_TCP) {
		struct tcphdr *tcp = l4;

		if ((void *)(tcp + 1) > data_end)
			return STUB_CTR_DROP_TRUNCATED;
		sport = &tcp->source;
		dport = &tcp->dest;
		check = &tcp->check;
	} else {
		struct udphdr *udp = l4;

		if ((void *)(udp + 1) > data_end)
			return STUB_CTR_DROP_TRUNCATED;
		sport = &udp->source;
		dport = &udp->dest;
		check = &udp->check;
	}

	key.vni = vni;
	key.src_ip = ip->saddr;
	key.dst_ip = ip->daddr;
	key.src_port = *sport;
	key.dst_port = *dport;
	key.proto = ip->protocol;
	nat = bpf_map_lookup_elem(&rev_nat, &key);
	if (!nat)
		return -1;

	old_ip = ip->saddr;
	old_port = *sport;
	ip->check = csum_replace4(ip->check, old_ip, nat->vip);
	ip->saddr = nat->vip;
	*sport = nat->vip_port;
	/* A UDP checksum of 0 means "none" and stays so; a computed 0 is sent as 0xFFFF. */
	if (ip->protocol == IPPROTO_TCP || *check) {
		__u16 sum = csum_replace4(*check, old_ip, nat->vip);

		sum = csum_replace2(sum, old_port, nat->vip_port);
		if (ip->protocol == IPPROTO_UDP && sum == 0)
			sum = 0xFFFF;
		*check = sum;
	}
	count(STUB_CTR_AGENT_REVERSE_NAT, 0);
	return -1;
}

static __always_inline int agent_arp(struct xdp_md *ctx, const struct pod_value *pod,
				     const struct node_config *node, struct arp_ipv4 *arp,
				     void *data_end)
{
	__be32 spa, tpa;

	if ((void *)(arp + 1) > data_end)
		return count(STUB_CTR_DROP_TRUNCATED, XDP_DROP);
	if (arp->htype != bpf_htons(ARPHRD_ETHER) || arp->ptype != bpf_htons(ETH_P_IP) ||
	    arp->hlen != ETH_ALEN || arp->plen != 4)
		return count(STUB_CTR_DROP_TRUNCATED, XDP_DROP);
	__builtin_memcpy(&spa, arp->spa, 4);
	__builtin_memcpy(&tpa, arp->tpa, 4);
	/* 0.0.0.0 is an address probe (RFC 5227). */
	if (spa != pod->ip && spa != 0)
		return count(STUB_CTR_DROP_SPOOFED_SOURCE, XDP_DROP);
	return to_bouncer(ctx, pod, node, spa, tpa);
}

SEC("xdp")
int sluice_agent(struct xdp_md *ctx)
{
	__u32 ifindex = ctx->ingress_ifindex, zero = 0;
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct endpoint_key key = {};
	struct endpoint_value *local;
	struct node_config *node;
	struct pod_value *pod;
	struct ethhdr *eth = data;
	struct host_cache_value *host;
	struct iphdr *ip;
	int drop;

	pod = bpf_map_lookup_elem(&pods, &ifindex);
	if (!pod)
		return count(STUB_CTR_DROP_UNKNOWN_POD, XDP_DROP);
	node = bpf_map_lookup_elem(&node_cfg, &zero);
	if (!node || node->ifindex == 0)
		return count(STUB_CTR_DROP_NO_NODE, XDP_DROP);
	if ((void *)(eth + 1) > data_end)
		return count(STUB_CTR_DROP_TRUNCATED, XDP_DROP);
	if (eth->h_proto == bpf_htons(ETH_P_ARP))
		return agent_arp(ctx, pod, node, (void *)(eth + 1), data_end);
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return count(STUB_CTR_DROP_UNSUPPORTED_ETHERTYPE, XDP_DROP);

	ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end)
		return count(STUB_CTR_DROP_TRUNCATED, XDP_DROP);
	if (ip->version != 4 || ip->ihl < 5 || (void *)ip + ip->ihl * 4 > data_end)
		return count(STUB_CTR_DROP_TRUNCATED, XDP_DROP);
	if (ip->saddr != pod->ip)
		return count(STUB_CTR_DROP_SPOOFED_SOURCE, XDP_DROP);

	/*
	 * Before the same-host short-circuit: a backend answering a client on this host must
	 * still answer from the VIP.
	 */
	drop = reverse_nat(ip, data_end, pod->vni);
	if (drop >= 0)
		return count(drop, XDP_DROP);

	key.vni = pod->vni;
	key.ip = ip->daddr;
	local = bpf_map_lookup_elem(&endpoints, &key);
	if (local && mac_equal(eth->h_dest, local->mac))
		return count(STUB_CTR_AGENT_SAME_HOST, bpf_redirect(local->ifindex, 0));

	if (!mac_equal(eth->h_dest, pod->router_mac)) {
		host = bpf_map_lookup_elem(&host_cache, &key);
		/* An entry older than the TTL is a miss: the bouncer path re-learns it. */
		if (host && bpf_ktime_get_ns() - host->learned_ns <= HOST_CACHE_TTL_NS)
			return encapsulate(ctx, node, host->host, pod->vni,
					   flow_hash(ip->saddr, ip->daddr), 1,
					   STUB_CTR_AGENT_ENCAP_DIRECT);
	}
	return to_bouncer(ctx, pod, node, ip->saddr, ip->daddr);
}

/* What the transit stub found among a packet's options. */
struct options {
	__be32 hint_endpoint;
	__be32 hint_host;
	__be32 vip;
	__be16 vip_port;
	__u8 vip_proto;
	__u8 has_hint;
	__u8 has_direct;
	__u8 has_orig;
};

/* Records what the packet taught us, once it is known to be delivered. */
static __always_inline void record(const struct options *opts, __u32 vni, __be32 outer_src,
				   __be32 inner_src, struct iphdr *inner_ip, void *data_end)
{
	struct endpoint_key key = { .vni = vni };
	struct host_cache_value learned = {};

	if (opts->has_hint || opts->has_direct)
		learned.learned_ns = bpf_ktime_get_ns();
	if (opts->has_hint) {
		key.ip = opts->hint_endpoint;
		learned.host = opts->hint_host;
		if (bpf_map_update_elem(&host_cache, &key, &learned, BPF_ANY) == 0)
			count(STUB_CTR_TRANSIT_HOST_HINT, 0);
	}
	if (opts->has_direct) {
		key.ip = inner_src;
		learned.host = outer_src;
		if (bpf_map_update_elem(&host_cache, &key, &learned, BPF_ANY) == 0)
			count(STUB_CTR_TRANSIT_DIRECT, 0);
	}
	if (opts->has_orig && inner_ip && inner_ip->protocol == opts->vip_proto &&
	    (inner_ip->protocol == IPPROTO_TCP || inner_ip->protocol == IPPROTO_UDP) &&
	    !(inner_ip->frag_off & bpf_htons(IP_MF | IP_OFFSET))) {
		/* Both TCP and UDP start with the two ports. */
		struct udphdr *l4 = (void *)inner_ip + inner_ip->ihl * 4;
		struct rev_nat_key nat_key = {};
		struct rev_nat_value nat = {};

		if ((void *)(l4 + 1) > data_end)
			return;
		nat_key.vni = vni;
		nat_key.src_ip = inner_ip->daddr;
		nat_key.dst_ip = inner_ip->saddr;
		nat_key.src_port = l4->dest;
		nat_key.dst_port = l4->source;
		nat_key.proto = inner_ip->protocol;
		nat.vip = opts->vip;
		nat.vip_port = opts->vip_port;
		if (bpf_map_update_elem(&rev_nat, &nat_key, &nat, BPF_ANY) == 0)
			count(STUB_CTR_TRANSIT_SERVICE_ORIG, 0);
	}
}

/*
 * Parses the options starting at `start` (opt_len bytes), filling `found`. Returns a
 * drop counter, or -1 when the packet may go on.
 */
static __always_inline int parse_options(void *start, __u32 opt_len, void *data_end,
					 struct options *found)
{
	__u32 offset = 0;

	for (int i = 0; i < GENEVE_MAX_OPTIONS; i++) {
		struct geneve_opt *opt;
		__u8 *body;
		__u32 body_len;

		if (offset >= opt_len || offset > GENEVE_MAX_OPT_LEN)
			break;
		opt = start + offset;
		if ((void *)(opt + 1) > data_end)
			return STUB_CTR_DROP_TRUNCATED;
		body = (void *)(opt + 1);
		body_len = (opt->length & 0x1F) * 4;
		if (offset + sizeof(*opt) + body_len > opt_len)
			return STUB_CTR_DROP_BAD_GENEVE;
		offset += sizeof(*opt) + body_len;

		if (opt->opt_class != bpf_htons(SLUICE_OPTION_CLASS)) {
			if (opt->type & OPTION_CRITICAL_BIT)
				return STUB_CTR_DROP_UNKNOWN_CRITICAL_OPTION;
			continue;
		}
		switch (opt->type) {
		case OPT_HOST_HINT:
			if (body_len != 8)
				return STUB_CTR_DROP_BAD_OPTION;
			if ((void *)(body + 8) > data_end)
				return STUB_CTR_DROP_TRUNCATED;
			__builtin_memcpy(&found->hint_endpoint, body, 4);
			__builtin_memcpy(&found->hint_host, body + 4, 4);
			found->has_hint = 1;
			break;
		case OPT_DIRECT:
			if (body_len != 0)
				return STUB_CTR_DROP_BAD_OPTION;
			found->has_direct = 1;
			break;
		case OPT_SERVICE_ORIG:
			if (body_len != 8)
				return STUB_CTR_DROP_BAD_OPTION;
			if ((void *)(body + 8) > data_end)
				return STUB_CTR_DROP_TRUNCATED;
			__builtin_memcpy(&found->vip, body, 4);
			__builtin_memcpy(&found->vip_port, body + 4, 2);
			found->vip_proto = body[6];
			found->has_orig = 1;
			break;
		case OPT_STALE:
			/* Worker -> gateway only; nothing for a worker to do. */
			break;
		default:
			if (opt->type & OPTION_CRITICAL_BIT)
				return STUB_CTR_DROP_UNKNOWN_CRITICAL_OPTION;
		}
	}
	if (offset < opt_len)
		return STUB_CTR_DROP_TOO_MANY_OPTIONS;
	return -1;
}

SEC("xdp")
int sluice_transit(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct options found = {};
	struct endpoint_key key = {};
	struct endpoint_value *local;
	struct node_config *node;
	struct ethhdr *eth = data, *inner_eth;
	struct iphdr *ip, *inner_ip = NULL;
	struct udphdr *udp;
	struct geneve_hdr *geneve;
	__be32 outer_src, inner_src, inner_dst;
	__u32 zero = 0, opt_len, vni, ifindex;
	__u8 local_mac[ETH_ALEN];
	void *inner;
	int drop;

	if ((void *)(eth + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
		return count(STUB_CTR_TRANSIT_PASSED, XDP_PASS);
	ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end || ip->version != 4 || ip->ihl < 5 ||
	    ip->protocol != IPPROTO_UDP || (ip->frag_off & bpf_htons(IP_MF | IP_OFFSET)))
		return count(STUB_CTR_TRANSIT_PASSED, XDP_PASS);
	node = bpf_map_lookup_elem(&node_cfg, &zero);
	if (!node || node->ifindex == 0 || ip->daddr != node->ip)
		return count(STUB_CTR_TRANSIT_PASSED, XDP_PASS);
	udp = (void *)ip + ip->ihl * 4;
	if ((void *)(udp + 1) > data_end || udp->dest != bpf_htons(GENEVE_UDP_PORT))
		return count(STUB_CTR_TRANSIT_PASSED, XDP_PASS);
	outer_src = ip->saddr;

	geneve = (void *)(udp + 1);
	if ((void *)(geneve + 1) > data_end)
		return count(STUB_CTR_DROP_TRUNCATED, XDP_DROP);
	if ((geneve->ver_optlen >> 6) != 0 ||
	    geneve->protocol != bpf_htons(GENEVE_PROTO_ETHERNET))
		return count(STUB_CTR_DROP_BAD_GENEVE, XDP_DROP);
	opt_len = (geneve->ver_optlen & 0x3F) * 4;
	vni = (geneve->vni[0] << 16) | (geneve->vni[1] << 8) | geneve->vni[2];

	drop = parse_options(geneve + 1, opt_len, data_end, &found);
	if (drop >= 0)
		return count(drop, XDP_DROP);

	inner = (void *)(geneve + 1) + opt_len;
	inner_eth = inner;
	if ((void *)(inner_eth + 1) > data_end)
		return count(STUB_CTR_DROP_TRUNCATED, XDP_DROP);
	if (inner_eth->h_proto == bpf_htons(ETH_P_IP)) {
		inner_ip = (void *)(inner_eth + 1);
		if ((void *)(inner_ip + 1) > data_end)
			return count(STUB_CTR_DROP_TRUNCATED, XDP_DROP);
		if (inner_ip->version != 4 || inner_ip->ihl < 5)
			return count(STUB_CTR_DROP_TRUNCATED, XDP_DROP);
		inner_src = inner_ip->saddr;
		inner_dst = inner_ip->daddr;
	} else if (inner_eth->h_proto == bpf_htons(ETH_P_ARP)) {
		struct arp_ipv4 *arp = (void *)(inner_eth + 1);

		if ((void *)(arp + 1) > data_end)
			return count(STUB_CTR_DROP_TRUNCATED, XDP_DROP);
		__builtin_memcpy(&inner_src, arp->spa, 4);
		__builtin_memcpy(&inner_dst, arp->tpa, 4);
	} else {
		return count(STUB_CTR_DROP_UNSUPPORTED_ETHERTYPE, XDP_DROP);
	}

	key.vni = vni;
	key.ip = inner_dst;
	local = bpf_map_lookup_elem(&endpoints, &key);
	if (!local)
		return count(STUB_CTR_DROP_NO_LOCAL_ENDPOINT, XDP_DROP);
	ifindex = local->ifindex;
	__builtin_memcpy(local_mac, local->mac, ETH_ALEN);

	record(&found, vni, outer_src, inner_src, inner_ip, data_end);

	__builtin_memcpy(inner_eth->h_dest, local_mac, ETH_ALEN);
	if (bpf_xdp_adjust_head(ctx, (int)(inner - data)))
		return count(STUB_CTR_DROP_ENCAP_FAILED, XDP_DROP);
	return count(STUB_CTR_TRANSIT_DELIVERED, bpf_redirect(ifindex, 0));
}

SEC("xdp")
int sluice_pod_side(struct xdp_md *ctx)
{
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
