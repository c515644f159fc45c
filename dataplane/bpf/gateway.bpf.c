// SPDX-License-Identifier: Apache-2.0
/*
 * The gateway's NIC program (DESIGN.md, "Where things run"): hands the Geneve packets
 * addressed to this gateway to the AF_XDP socket of the RX queue they arrived on, and
 * passes everything else to the kernel, so ARP, ICMP, SSH and the gateway's own gRPC keep
 * working on the interface it shares with tenant traffic.
 *
 * It decides on the outer headers only and does not validate Geneve: the userspace
 * pipeline parses and drops malformed frames with a reason counter. It never drops a
 * packet itself.
 *
 * Loaded by dataplane/src/nic/, which fills `gateway_addrs` before attaching and puts
 * each worker's socket into `xsks` at its queue index.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "sluice.h"

/* Fragment bits of iphdr.frag_off (include/net/ip.h, which is not uapi). */
#define IP_MF 0x2000
#define IP_OFFSET 0x1FFF

/*
 * Slots of `stats`; dataplane/src/nic/mod.rs reads them by these indices. Every packet
 * the program sees is counted in exactly one slot.
 */
enum nic_stat {
	/* A Geneve packet for this gateway went to the AF_XDP socket of its queue. */
	NIC_STAT_REDIRECTED = 0,
	/* Anything else, passed to the kernel. */
	NIC_STAT_PASSED = 1,
	/*
	 * A Geneve packet for this gateway arrived on a queue with no socket in `xsks`;
	 * it was passed to the kernel, which has no listener on the Geneve port.
	 */
	NIC_STAT_NO_SOCKET = 2,
	NIC_STAT_COUNT = 3,
};

/*
 * RX queue index -> AF_XDP socket. Larger than any NIC's queue count we expect; a queue
 * beyond it counts as NIC_STAT_NO_SOCKET. Each slot costs a pointer. The loader sets
 * max_entries of this map and the next (MAX_QUEUES, MAX_GATEWAY_ADDRS in nic/mod.rs).
 */
struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, 256);
	__type(key, __u32);
	__type(value, __u32);
} xsks SEC(".maps");

/* This gateway's underlay IPv4 addresses (network byte order) -> 1. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16);
	__type(key, __u32);
	__type(value, __u8);
} gateway_addrs SEC(".maps");

/* Packet counters per CPU, summed by the loader when read. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, NIC_STAT_COUNT);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

static __always_inline int count(__u32 stat, int action)
{
	__u64 *counter = bpf_map_lookup_elem(&stats, &stat);

	if (counter)
		*counter += 1;
	return action;
}

/*
 * The name is what a restarted gateway looks for to recognise a program left attached
 * by a run that crashed (the kernel keeps 15 characters of it): keep it in step with
 * PROGRAM_NAME in dataplane/src/nic/mod.rs.
 */
SEC("xdp")
int sluice_gw_nic(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip;
	struct udphdr *udp;
	__u32 daddr;
	int action;

	if ((void *)(eth + 1) > data_end)
		return count(NIC_STAT_PASSED, XDP_PASS);
	/* VLAN-tagged frames and IPv6 go to the kernel: the underlay is untagged IPv4. */
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return count(NIC_STAT_PASSED, XDP_PASS);

	ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end)
		return count(NIC_STAT_PASSED, XDP_PASS);
	/* Malformed headers are the kernel's to drop and count. */
	if (ip->version != 4 || ip->ihl < 5)
		return count(NIC_STAT_PASSED, XDP_PASS);
	if (ip->protocol != IPPROTO_UDP)
		return count(NIC_STAT_PASSED, XDP_PASS);
	/* Fragments need reassembly, which only the kernel does. */
	if (ip->frag_off & bpf_htons(IP_MF | IP_OFFSET))
		return count(NIC_STAT_PASSED, XDP_PASS);

	/* The contract sends no IPv4 options, but a peer may: honour IHL (5..15 words). */
	udp = (void *)ip + ip->ihl * 4;
	if ((void *)(udp + 1) > data_end)
		return count(NIC_STAT_PASSED, XDP_PASS);
	if (udp->dest != bpf_htons(GENEVE_UDP_PORT))
		return count(NIC_STAT_PASSED, XDP_PASS);

	daddr = ip->daddr;
	if (!bpf_map_lookup_elem(&gateway_addrs, &daddr))
		return count(NIC_STAT_PASSED, XDP_PASS);

	/*
	 * An empty slot makes the helper return the fallback action, XDP_PASS. A socket
	 * whose RX ring is full drops the frame after this returns; the socket's own
	 * statistics (XDP_STATISTICS rx_dropped) count that, not this program.
	 */
	action = bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_PASS);
	return count(action == XDP_REDIRECT ? NIC_STAT_REDIRECTED : NIC_STAT_NO_SOCKET,
		     action);
}

/*
 * Not GPL: the program must not call GPL-only helpers (bpf_printk among them); the
 * verifier refuses them at load time with a clear message if someone tries.
 */
char LICENSE[] SEC("license") = "Apache-2.0";
