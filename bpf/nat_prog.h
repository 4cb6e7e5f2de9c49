/* SPDX-License-Identifier: (GPL-2.0-only OR MIT) */
/*
 * What both roles' programs share: the session map, parsing, counting and
 * the rewrite with incremental checksums. Included by gateway.bpf.c and
 * host.bpf.c only.
 *
 * Checksums. Every TCP/UDP checksum change goes through the kernel's own
 * helper (bpf_l4_csum_replace), never arithmetic of ours on the packet,
 * because only it knows the skb's checksum state (the IPv4 header checksum,
 * which no state touches, is updated here: nat_csum_replace):
 * - CHECKSUM_NONE / CHECKSUM_UNNECESSARY: the fields are updated as RFC 1624
 *   says (HC' = ~(~HC + ~m + m'));
 * - CHECKSUM_PARTIAL (locally sent packets, veth, GSO): the TCP/UDP field
 *   holds only the pseudo-header sum, so address changes (BPF_F_PSEUDO_HDR)
 *   update it and port changes must not;
 * - CHECKSUM_COMPLETE (a NIC's receive sum): skb->csum is kept equal to the
 *   changed bytes' sum, so the receiver does not see a checksum fault.
 * UDP: BPF_F_MARK_MANGLED_0 keeps a zero ("no checksum", RFC 768) field zero
 * and turns a computed zero into 0xffff.
 */
#ifndef DPM_NAT_PROG_H
#define DPM_NAT_PROG_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "nat.h"

/* Sized for a gateway's sessions (two entries each); dpm sets the real size before loading.
 * Not preallocated: memory follows the number of sessions. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct nat_key);
	__type(value, struct nat_entry);
} dpm_nat SEC(".maps");

/* "Not mine": the next tc filter, or the stack, decides (direct-action mode). */
#define NAT_PASS TC_ACT_UNSPEC

#define IP_OFF (sizeof(struct ethhdr))
#define L4_OFF (IP_OFF + sizeof(struct iphdr))
#define TCP_FLAG_FIN 0x01
#define TCP_FLAG_RST 0x04
#define IP_FRAG_MASK 0x3fff /* MF and the fragment offset */

/* What a packet is, fragment-wise (nat_pkt.frag). */
enum nat_frag {
	NAT_WHOLE = 0,      /* not a fragment */
	NAT_FRAG_FIRST = 1, /* the first fragment: it carries the ports */
	NAT_FRAG_REST = 2,  /* a later fragment: addresses only (ports are 0) */
};

/* One TCP or UDP packet's addresses (network order) and what else the programs read. */
struct nat_pkt {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 ttl;
	__u8 tos;
	__u8 tcp_flags; /* TCP: its flags; ICMP: its type */
	__u32 ip_len; /* the IP bytes the packet carries (skb length less the link header) */
	__u16 l4off;  /* offset of the TCP/UDP header (from the link header) */
	__be16 ip_id;
	__u8 frag;    /* enum nat_frag */
	__u8 more;    /* the IP "more fragments" flag */
	__u16 pad;
};

/* What nat_parse accepts beyond a plain TCP or UDP packet. */
enum nat_parse_mode {
	/* Plain IPv4 TCP/UDP only (the gateway: the rest takes the stack's path). */
	NAT_PARSE_STRICT = 0,
	/* Also IP options, fragments and ICMP (the host: nothing behind it translates them; ICMP
	 * has no ports here, its type is in tcp_flags). */
	NAT_PARSE_ALL = 1,
};

/*
 * Reads an IPv4 TCP or UDP packet. Strict: without options and not a
 * fragment. Otherwise options are skipped and fragments read (a later
 * fragment's protocol is any, its ports 0). Anything else (ARP, IPv6, ICMP,
 * a truncated header) returns -1: the stack handles it.
 */
static __always_inline int nat_parse(struct __sk_buff *skb, struct nat_pkt *p, int mode)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	if (data + L4_OFF + 20 > end) {
		/* Headers outside the linear part (rare): pull them in (a short packet stays short). */
		bpf_skb_pull_data(skb, L4_OFF + 20);
		data = (void *)(long)skb->data;
		end = (void *)(long)skb->data_end;
	}
	struct ethhdr *eth = data;
	struct iphdr *ip = data + IP_OFF;
	if (data + L4_OFF > end)
		return -1;
	if (eth->h_proto != bpf_htons(ETH_P_IP) || ip->version != 4 || ip->ihl < 5)
		return -1;
	__u32 ihl = ip->ihl;
	__u16 frag = bpf_ntohs(ip->frag_off);
	if (mode == NAT_PARSE_STRICT && (ihl != 5 || (frag & IP_FRAG_MASK)))
		return -1;
	p->saddr = ip->saddr;
	p->daddr = ip->daddr;
	p->proto = ip->protocol;
	p->ttl = ip->ttl;
	p->tos = ip->tos;
	p->tcp_flags = 0;
	p->ip_len = skb->len - IP_OFF;
	p->l4off = IP_OFF + ihl * 4;
	p->ip_id = ip->id;
	p->more = (frag & 0x2000) ? 1 : 0;
	p->pad = 0;
	p->sport = 0;
	p->dport = 0;
	if (frag & 0x1fff) {
		p->frag = NAT_FRAG_REST;
		return 0;
	}
	p->frag = p->more ? NAT_FRAG_FIRST : NAT_WHOLE;
	if (ip->protocol == IPPROTO_ICMP && mode == NAT_PARSE_ALL) {
		if (bpf_skb_load_bytes(skb, p->l4off, &p->tcp_flags, 1) < 0)
			return -1;
		return 0;
	}
	if (ip->protocol != IPPROTO_TCP && ip->protocol != IPPROTO_UDP)
		return -1;
	if (ihl == 5) {
		if (data + L4_OFF + 8 > end)
			return -1;
		__be16 *ports = data + L4_OFF;
		p->sport = ports[0];
		p->dport = ports[1];
		if (ip->protocol == IPPROTO_TCP) {
			if (data + L4_OFF + 20 > end)
				return -1;
			p->tcp_flags = *(__u8 *)(data + L4_OFF + 13);
		}
		return 0;
	}
	/* IP options: the transport header further on (load_bytes checks the bounds). */
	__be16 ports[2];
	if (bpf_skb_load_bytes(skb, p->l4off, ports, sizeof(ports)) < 0)
		return -1;
	p->sport = ports[0];
	p->dport = ports[1];
	if (ip->protocol == IPPROTO_TCP &&
	    bpf_skb_load_bytes(skb, p->l4off + 13, &p->tcp_flags, 1) < 0)
		return -1;
	return 0;
}

/* The key of the packet itself, arriving from side `dir`. */
static __always_inline void nat_key_of(struct nat_key *k, const struct nat_pkt *p, __u8 dir)
{
	k->saddr = p->saddr;
	k->daddr = p->daddr;
	k->sport = p->sport;
	k->dport = p->dport;
	k->proto = p->proto;
	k->dir = dir;
	k->pad = 0;
}

/* What entry `e` makes of the packet `p`: its addresses after translation (0 in `e`: keep). */
static __always_inline void nat_apply(struct nat_pkt *to, const struct nat_pkt *p,
				      const struct nat_entry *e)
{
	*to = *p;
	if (e->saddr)
		to->saddr = e->saddr;
	if (e->daddr)
		to->daddr = e->daddr;
	if (e->sport)
		to->sport = e->sport;
	if (e->dport)
		to->dport = e->dport;
}

/* Sets `bits` in an entry's flags (atomically; no write when they are set already). */
static __always_inline void nat_set_flags(struct nat_entry *e, __u32 bits)
{
	if ((e->flags & bits) != bits)
		__sync_fetch_and_or(&e->flags, bits);
}

/* The packet's time (CLOCK_MONOTONIC at tick resolution): read once per packet, it serves the
 * entry's last_ns and the next-hop cache's age (a clock read is a helper call). */
static __always_inline __u64 nat_now(void)
{
	return bpf_ktime_get_coarse_ns();
}

/*
 * Counts one packet (a GSO packet: its segments) into an entry, with the time
 * `now` (nat_now) and TCP FIN/RST. last_ns is written only when the coarse
 * clock moved (once per tick, not per packet).
 */
static __always_inline void nat_count(struct __sk_buff *skb, struct nat_entry *e,
				      const struct nat_pkt *p, __u64 now)
{
	__u32 segs = skb->gso_segs;
	__sync_fetch_and_add(&e->packets, segs > 1 ? segs : 1);
	__sync_fetch_and_add(&e->bytes, p->ip_len);
	if (e->last_ns != now)
		e->last_ns = now;
	if (p->tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST))
		nat_set_flags(e, ((p->tcp_flags & TCP_FLAG_FIN) ? NAT_F_FIN : 0) |
				       ((p->tcp_flags & TCP_FLAG_RST) ? NAT_F_RST : 0));
}

/* Ones'-complement addition of two 32-bit partial sums (end-around carry). */
static __always_inline __u32 csum_add32(__u32 a, __u32 b)
{
	__u32 s = a + b;
	return s + (s < a);
}

/* The partial sum that turns the checksum over `old` into the one over `new` (RFC 1624: ~m + m'). */
static __always_inline __u32 csum_delta32(__u32 old, __u32 new)
{
	return csum_add32(~old, new);
}

/*
 * A 16-bit checksum field after the summed bytes changed by `diff` (RFC 1624,
 * what the kernel's csum_replace_by_diff computes). Only for the IPv4 header
 * checksum: it is always complete in the header (never offloaded), so no skb
 * state is involved, and doing it here spares a helper call per packet.
 */
static __always_inline __u16 nat_csum_replace(__u16 check, __u32 diff)
{
	__u32 s = csum_add32(diff, ~(__u32)check);
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__u16)~s;
}

/*
 * Rewrites the packet's addresses and ports from `p` to `to`, with the IPv4
 * header checksum and the TCP/UDP checksum updated incrementally; with
 * `forward`, decrements the TTL too (the caller checked it is above 1).
 * At most two helper calls carry the TCP/UDP checksum's changes (the
 * deltas are summed here, RFC 1624), the IPv4 header checksum is updated
 * here (nat_csum_replace); the fields are then written in place. A later fragment
 * has only its addresses (and IP checksum) changed: the transport checksum,
 * which covers the whole datagram, is in the first fragment. Returns 0, or
 * -1 when a helper refused (the packet may then be half rewritten: the
 * caller drops it).
 */
static __always_inline int nat_rewrite(struct __sk_buff *skb, const struct nat_pkt *p,
				       const struct nat_pkt *to, int forward)
{
	__u32 addr_diff = csum_add32(csum_delta32(p->saddr, to->saddr), csum_delta32(p->daddr, to->daddr));
	__u32 l3_diff = addr_diff;
	if (forward) {
		/* TTL and protocol share one 16-bit word of the header (as loaded: ttl first). */
		__u16 old_word = ((__u16)p->proto << 8) | p->ttl;
		__u16 new_word = ((__u16)p->proto << 8) | (__u8)(p->ttl - 1);
		l3_diff = csum_add32(l3_diff, csum_add32((__u16)~old_word, new_word));
	}
	int ports = p->frag != NAT_FRAG_REST;
	if (ports) {
		__u32 csum_off = p->l4off + (p->proto == IPPROTO_TCP ? 16 : 6);
		__u64 mm0 = p->proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;
		__u32 old_ports = ((__u32)p->dport << 16) | p->sport; /* as loaded from the packet */
		__u32 new_ports = ((__u32)to->dport << 16) | to->sport;
		__u32 port_diff = csum_delta32(old_ports, new_ports);
		/* Addresses are in the pseudo-header: the TCP/UDP checksum in any state, and the IP one. */
		if (addr_diff &&
		    bpf_l4_csum_replace(skb, csum_off, 0, addr_diff, BPF_F_PSEUDO_HDR | mm0) < 0)
			return -1;
		if (old_ports != new_ports && bpf_l4_csum_replace(skb, csum_off, 0, port_diff, mm0) < 0)
			return -1;
	}
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	if (data + L4_OFF + 4 > end)
		return -1;
	struct iphdr *ip = data + IP_OFF;
	ip->check = nat_csum_replace(ip->check, l3_diff);
	ip->saddr = to->saddr;
	ip->daddr = to->daddr;
	if (forward)
		ip->ttl = p->ttl - 1;
	if (!ports)
		return 0;
	if (p->l4off == L4_OFF) {
		__be16 *pp = data + L4_OFF;
		pp[0] = to->sport;
		pp[1] = to->dport;
		return 0;
	}
	/* After IP options (the host only). */
	__be16 np[2] = {to->sport, to->dport};
	return bpf_skb_store_bytes(skb, p->l4off, np, sizeof(np), 0) < 0 ? -1 : 0;
}

/* The Ethernet addresses of a redirected packet (its next hop and egress device). */
static __always_inline int nat_set_macs(struct __sk_buff *skb, const __u8 *dmac, const __u8 *smac)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	if (data + sizeof(*eth) > end)
		return -1;
	__builtin_memcpy(eth->h_dest, dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, smac, ETH_ALEN);
	return 0;
}

/* The destination Ethernet address of a packet whose source is already the right one. */
static __always_inline int nat_set_dmac(struct __sk_buff *skb, const __u8 *dmac)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	if (data + sizeof(*eth) > end)
		return -1;
	__builtin_memcpy(eth->h_dest, dmac, ETH_ALEN);
	return 0;
}

/* Where a translated packet goes next: the egress device, its MTU, the link addresses. */
struct nat_hop {
	__u32 ifindex;
	__u32 mtu;
	__u8 dmac[6];
	__u8 smac[6];
	int resolved; /* 0: the neighbour is not resolved yet (redirect through the neighbour code) */
	__u32 at;     /* when it is asked for (nat_tick): the cache's nh_at */
	int fresh;    /* 1: the FIB answered now (smac set); 0: from the entry's cache (smac not) */
};

/* The time unit of nat_entry.nh_at: 2^20 ns. */
static __always_inline __u32 nat_tick(__u64 now)
{
	return (__u32)(now >> 20);
}

/* The FIB's answer for nat_next_hop (out of line: a BPF subprogram, since it is needed about once
 * a second per session, not per packet). `hop->ifindex` names the arriving interface on entry. */
static __noinline int nat_next_hop_fib(struct __sk_buff *skb, struct nat_entry *e,
				       const struct nat_pkt *to, __u32 fib_flags, struct nat_hop *hop)
{
	struct bpf_fib_lookup fib = {};
	fib.family = 2; /* AF_INET */
	fib.l4_protocol = to->proto;
	fib.sport = to->sport;
	fib.dport = to->dport;
	fib.ifindex = hop->ifindex;
	fib.tos = to->tos;
	fib.ipv4_src = to->saddr;
	fib.ipv4_dst = to->daddr;
	long rc = bpf_fib_lookup(skb, &fib, sizeof(fib), fib_flags);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH)
		return -1;
	hop->ifindex = fib.ifindex;
	hop->resolved = rc == BPF_FIB_LKUP_RET_SUCCESS;
	hop->fresh = 1;
	__u32 mtu = 0;
	if (bpf_check_mtu(skb, fib.ifindex, &mtu, 0, 0) < 0 || mtu == 0 || mtu > 0xffff)
		mtu = 0;
	hop->mtu = mtu;
	__builtin_memcpy(hop->dmac, fib.dmac, ETH_ALEN);
	__builtin_memcpy(hop->smac, fib.smac, ETH_ALEN);
	if (hop->resolved && mtu) {
		/* Racing writers write the same answer: a torn copy is still that answer. */
		e->nh_ifindex = fib.ifindex;
		e->nh_mtu = mtu;
		__builtin_memcpy(e->nh_dmac, fib.dmac, ETH_ALEN);
		e->nh_at = hop->at;
	}
	return 0;
}

/*
 * The next hop of packet `to` (already translated) arriving on `ifindex` at
 * `now` (nat_tick): the entry's cache while it is fresh, else a FIB lookup
 * (`fib_flags`), whose resolved answer is cached. The source MAC (smac) is
 * only in a FIB answer (`fresh`): from the cache, the caller knows it. A plain packet larger than
 * the way out's MTU, a route the FIB cannot give, or a packet of an unusual
 * size on the cached path returns -1: the stack handles it (fragments,
 * answers ICMP).
 */
static __always_inline int nat_next_hop(struct __sk_buff *skb, struct nat_entry *e,
					const struct nat_pkt *to, __u32 ifindex, __u32 fib_flags,
					__u32 now, struct nat_hop *hop)
{
	if (e->nh_ifindex && now - e->nh_at < NAT_NH_TTL) {
		hop->ifindex = e->nh_ifindex;
		hop->mtu = e->nh_mtu;
		__builtin_memcpy(hop->dmac, e->nh_dmac, ETH_ALEN);
		hop->resolved = 1;
		hop->fresh = 0;
		return 0;
	}
	hop->ifindex = ifindex;
	hop->at = now;
	return nat_next_hop_fib(skb, e, to, fib_flags, hop);
}

/* Whether the packet fits the way out (`mtu`: the device's; a GSO packet by its segments). */
static __always_inline int nat_fits(struct __sk_buff *skb, const struct nat_pkt *p,
				    const struct nat_hop *hop)
{
	if (skb->gso_size) {
		__u32 mtu = 0;
		return bpf_check_mtu(skb, hop->ifindex, &mtu, 0, BPF_MTU_CHK_SEGS) == BPF_MTU_CHK_RET_SUCCESS;
	}
	return hop->mtu && p->ip_len <= hop->mtu;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";

#endif
