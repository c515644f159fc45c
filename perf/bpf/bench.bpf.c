// SPDX-License-Identifier: Apache-2.0
/*
 * The benchmark's XDP programs (perf/src/xdp.rs loads them):
 *
 *  sink  counts every frame and drops it (the sink namespace's delivered count), and,
 *        when cfg.stamps is set, reads the generator's timestamp from the frame's last 16
 *        bytes ("SLUICETS" then CLOCK_MONOTONIC ns, little endian) and adds the one-way
 *        delay to a 1 us histogram;
 *  fwd   the in-kernel XDP forwarder contender: IPv4 frames get cfg's MAC addresses and
 *        go to cfg.out_ifindex with bpf_redirect; anything else is passed;
 *  pass  XDP_PASS, so that a veth receives redirected frames (PLATFORM.md pitfall 5).
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define HIST_BUCKETS 4096

struct cfg {
	__u32 out_ifindex;
	__u32 stamps;
	__u8 dst_mac[6];
	__u8 src_mac[6];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct cfg);
} cfg SEC(".maps");

/* Slot 0: frames, 1: bytes, 2: stamped frames, 3: stamped frames from the future. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, __u64);
} counts SEC(".maps");

/*
 * Bucket i < 2048: one-way delay in [i, i+1) us; bucket 2048 + j: [2048 + 64 j, 2048 +
 * 64 (j+1)) us, up to about 133 ms; the last bucket holds everything longer.
 */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, HIST_BUCKETS);
	__type(key, __u32);
	__type(value, __u64);
} hist SEC(".maps");

static __always_inline void bump(__u32 slot, __u64 by)
{
	__u64 *v = bpf_map_lookup_elem(&counts, &slot);
	if (v)
		*v += by;
}

SEC("xdp")
int sink(struct xdp_md *ctx)
{
	__u32 zero = 0;
	__u64 len = ctx->data_end - ctx->data;
	bump(0, 1);
	bump(1, len);
	struct cfg *c = bpf_map_lookup_elem(&cfg, &zero);
	if (!c || !c->stamps || len < 16 || len > 4096)
		return XDP_DROP;
	__u64 tail[2];
	if (bpf_xdp_load_bytes(ctx, len - 16, tail, sizeof(tail)))
		return XDP_DROP;
	/* "SLUICETS" read as a little-endian u64. */
	if (tail[0] != 0x5354454349554c53ULL)
		return XDP_DROP;
	__u64 now = bpf_ktime_get_ns();
	bump(2, 1);
	if (tail[1] > now) {
		bump(3, 1);
		return XDP_DROP;
	}
	__u64 us = (now - tail[1]) / 1000;
	__u64 slot = us < 2048 ? us : 2048 + (us - 2048) / 64;
	__u32 bucket = slot >= HIST_BUCKETS ? HIST_BUCKETS - 1 : (__u32)slot;
	__u64 *v = bpf_map_lookup_elem(&hist, &bucket);
	if (v)
		*v += 1;
	return XDP_DROP;
}

SEC("xdp")
int fwd(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	__u32 zero = 0;
	if ((void *)(eth + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
		return XDP_PASS;
	struct cfg *c = bpf_map_lookup_elem(&cfg, &zero);
	if (!c || !c->out_ifindex)
		return XDP_PASS;
	__builtin_memcpy(eth->h_dest, c->dst_mac, 6);
	__builtin_memcpy(eth->h_source, c->src_mac, 6);
	return bpf_redirect(c->out_ifindex, 0);
}

SEC("xdp")
int pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
