// SPDX-License-Identifier: (GPL-2.0-only OR MIT)
/*
 * The host's half of a session (claim 5), two tc (clsact, direct-action)
 * programs on the interface toward the gateway, sharing dpm_nat (nat.h) with
 * the driver:
 *
 * - dpm_host_out (egress): a:pa -> X:px, the application's packet, leaves as
 *   a:pa -> G:Pg (entry dir OUT, key a:pa -> X:px, value a:pa -> G:Pg);
 * - dpm_host_in (ingress): G:Pg -> a:pa, the gateway's, arrives as
 *   X:px -> a:pa (entry dir IN, key G:Pg -> a:pa, value X:px -> a:pa).
 *
 * Egress runs after the host's netfilter hooks and ingress before them, so
 * the host's conntrack and firewall see the application's own addresses both
 * ways, and nothing on the host is re-routed or DNATed per packet. The driver
 * writes both entries with both SEEN bits (the host's own firewall already saw
 * the packets); it still holds a new session's first packet in its queue
 * until the grant, and writes the entries before it lets that packet go.
 * Everything else (ICMP, fragments, IP options, other sessions) passes.
 */
#include "nat_prog.h"

/* Both bits, and a real (not wildcard) entry. */
static __always_inline struct nat_entry *lookup(const struct nat_pkt *p, __u8 dir)
{
	struct nat_key k;
	nat_key_of(&k, p, dir);
	struct nat_entry *e = bpf_map_lookup_elem(&dpm_nat, &k);
	if (!e || (e->flags & (NAT_F_FAST | NAT_F_WILDCARD)) != NAT_F_FAST)
		return 0;
	return e;
}

SEC("tc")
int dpm_host_out(struct __sk_buff *skb)
{
	struct nat_pkt p, to;
	if (nat_parse(skb, &p) < 0)
		return NAT_PASS;
	struct nat_entry *e = lookup(&p, NAT_DIR_OUT);
	if (!e)
		return NAT_PASS;
	nat_apply(&to, &p, e);
	/* The way to G, which may differ from the route the stack chose toward X. */
	struct bpf_fib_lookup fib = {};
	fib.family = 2; /* AF_INET */
	fib.l4_protocol = to.proto;
	fib.sport = to.sport;
	fib.dport = to.dport;
	fib.ifindex = skb->ifindex;
	fib.tos = to.tos;
	fib.ipv4_src = to.saddr;
	fib.ipv4_dst = to.daddr;
	long rc = bpf_fib_lookup(skb, &fib, sizeof(fib), BPF_FIB_LOOKUP_OUTPUT);
	if (nat_rewrite(skb, &p, &to, 0) < 0)
		return TC_ACT_SHOT;
	nat_count(skb, e, &p);
	if (rc == BPF_FIB_LKUP_RET_SUCCESS && fib.ifindex == skb->ifindex)
		return nat_set_macs(skb, &fib) < 0 ? TC_ACT_SHOT : NAT_PASS;
	if (rc == BPF_FIB_LKUP_RET_SUCCESS || rc == BPF_FIB_LKUP_RET_NO_NEIGH)
		return bpf_redirect_neigh(fib.ifindex, 0, 0, 0);
	/* No route to G: as the stack would, send it where it was going. */
	return NAT_PASS;
}

SEC("tc")
int dpm_host_in(struct __sk_buff *skb)
{
	struct nat_pkt p, to;
	if (skb->pkt_type != 0 /* PACKET_HOST */ || nat_parse(skb, &p) < 0)
		return NAT_PASS;
	struct nat_entry *e = lookup(&p, NAT_DIR_IN);
	if (!e)
		return NAT_PASS;
	nat_apply(&to, &p, e);
	if (nat_rewrite(skb, &p, &to, 0) < 0)
		return TC_ACT_SHOT;
	nat_count(skb, e, &p);
	return NAT_PASS;
}
