// SPDX-License-Identifier: (GPL-2.0-only OR MIT)
/*
 * The gateway's fast path: four tc (clsact, direct-action) programs on the
 * LAN and WAN interfaces, sharing the session map dpm_nat (nat.h).
 *
 * Theory of operation (docs/datapath.md, "The bpf path"). dpm puts both
 * entries of a session into dpm_nat when it grants it, with no SEEN bits: the
 * session is "slow", and the stack translates it (dpm's nftables maps,
 * conntrack, the forward chains). The egress programs watch what the stack
 * lets out: dpm_wan_out sees a session's packet leave by the WAN after it came
 * in by the LAN (so it passed prerouting, forward and postrouting, the
 * operator's rules included) and sets NAT_F_SEEN_OUT; dpm_lan_out sees a reply
 * leave by the LAN after it came in by the WAN and sets NAT_F_SEEN_IN. With
 * both bits the session is "fast": the ingress programs translate its packets
 * themselves and redirect them straight to the other interface (FIB lookup,
 * TTL decremented), so they skip conntrack, the nat and filter chains and the
 * forward walk. Until then, and for everything that is not a fast session
 * (other hosts, ICMP, fragments, IP options, a TTL about to expire, a packet
 * too big for the way out, a route that changed), the programs return
 * NAT_PASS and the stack does what it would do without them.
 *
 * Counters: a slow packet is counted when it leaves (egress), a fast one when
 * it is redirected (ingress), so an entry counts every packet that left the
 * gateway in its direction either way.
 *
 * A mapping (PCP/NAT-PMP MAP: R:p for every remote) is a pair of wildcard
 * entries whose remote half is zero. They never translate; when the stack
 * lets a mapping's flow with one remote out (its map_in/map_out rules), the
 * egress program learns that flow's exact pair of entries (NAT_F_LEARNED) with
 * the one SEEN bit it saw, and the flow turns fast like a session once the
 * other direction passed too.
 */
#include "nat_prog.h"

/* skb->cb[0] of a packet an ingress program redirected ("dpmF"). */
#define NAT_CB_FAST 0x64706d46

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct nat_config);
} dpm_cfg SEC(".maps");

static __always_inline const struct nat_config *config(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&dpm_cfg, &zero);
}

/*
 * Whether a packet from side `dir` may speak as `saddr` (nat_config): a
 * forged source never takes the fast path, whatever entry it would match;
 * the stack, where dpm's antispoof rules run, gets it instead. (No entry can
 * name a pool address as a remote either: hairpinned sessions get none, and
 * a mapping learns only flows the stack forwarded.)
 */
static __always_inline int source_ok(const struct nat_config *cfg, __be32 saddr, __u8 dir)
{
	int in_lan = (saddr & cfg->lan_mask) == cfg->lan_net;
	if (dir == NAT_DIR_IN)
		return !in_lan;
	return in_lan && saddr != cfg->gateway && saddr != cfg->edge_lo && saddr != cfg->edge_hi;
}

/* Whether a MAC address is all zero: not known yet. */
static __always_inline int mac_unknown(const __u8 *mac)
{
	__u8 any = 0;
#pragma unroll
	for (int i = 0; i < ETH_ALEN; i++)
		any |= mac[i];
	return any == 0;
}

/* Whether two MAC addresses are equal (byte by byte: either may be unaligned). */
static __always_inline int mac_equal(const __u8 *a, const __u8 *b)
{
	__u8 d = 0;
#pragma unroll
	for (int i = 0; i < ETH_ALEN; i++)
		d |= a[i] ^ b[i];
	return d == 0;
}

/*
 * Ingress on the side `dir` names: a fast session's packet is translated and
 * redirected to the other side's interface; everything else passes.
 */
static __always_inline int fast_path(struct __sk_buff *skb, __u8 dir)
{
	struct nat_config *cfg = (struct nat_config *)config();
	struct nat_pkt p, to;
	struct nat_key k;
	__u32 in_ifindex = skb->ifindex;
	if (!cfg || skb->pkt_type != 0 /* PACKET_HOST */ || nat_parse(skb, &p, NAT_PARSE_STRICT) < 0)
		return NAT_PASS;
	if (!source_ok(cfg, p.saddr, dir))
		return NAT_PASS; /* the stack's antispoof rules drop it */
	nat_key_of(&k, &p, dir);
	struct nat_entry *e = bpf_map_lookup_elem(&dpm_nat, &k);
	if (!e || (e->flags & (NAT_F_FAST | NAT_F_WILDCARD)) != NAT_F_FAST)
		return NAT_PASS;
	/* The stack sends the ICMP time exceeded. */
	if (p.ttl <= 1)
		return NAT_PASS;
	nat_apply(&to, &p, e);
	__u64 now = nat_now();
	/* The next hop (cached in the entry; the FIB about once a second). Not routable, or too
	 * big for the way out: the stack answers (ICMP) or fragments it. */
	struct nat_hop hop;
	if (nat_next_hop(skb, e, &to, in_ifindex, 0, nat_tick(now), &hop) < 0)
		return NAT_PASS;
	/* Only the way the stack let the session through. */
	__u32 out_ifindex = dir == NAT_DIR_OUT ? cfg->wan_ifindex : cfg->lan_ifindex;
	__u8 *own_mac = dir == NAT_DIR_OUT ? cfg->wan_mac : cfg->lan_mac;
	if (hop.ifindex != out_ifindex)
		return NAT_PASS;
	if (!hop.fresh && mac_unknown(own_mac)) {
		/* The device's MAC is not known (dpm rewrote dpm_cfg): ask the FIB now. */
		hop.ifindex = in_ifindex;
		hop.at = nat_tick(now);
		if (nat_next_hop_fib(skb, e, &to, 0, &hop) < 0 || hop.ifindex != out_ifindex)
			return NAT_PASS;
	}
	if (hop.fresh && hop.resolved && !mac_equal(own_mac, hop.smac))
		__builtin_memcpy(own_mac, hop.smac, ETH_ALEN); /* racing writers write the same */
	if (!nat_fits(skb, &p, &hop))
		return NAT_PASS;
	if (nat_rewrite(skb, &p, &to, 1) < 0)
		return TC_ACT_SHOT;
	nat_count(skb, e, &p, now);
	/* Tells this packet's egress run it was redirected here (see seen()). */
	skb->cb[0] = NAT_CB_FAST;
	if (!hop.resolved)
		return bpf_redirect_neigh(hop.ifindex, 0, 0, 0);
	if (nat_set_macs(skb, hop.dmac, hop.fresh ? hop.smac : own_mac) < 0)
		return TC_ACT_SHOT;
	/* A veth whose peer is in another namespace: into the peer's ingress directly (only from
	 * ingress, where these programs run; the helper drops the packet if the peer came into this
	 * namespace or is down, which dpm's start-time look at the device cannot see). */
	if ((dir == NAT_DIR_OUT ? cfg->wan_handoff : cfg->lan_handoff) == NAT_HANDOFF_PEER)
		return bpf_redirect_peer(hop.ifindex, 0);
	return bpf_redirect(hop.ifindex, 0);
}

/*
 * Egress on the interface of side `dir`'s way out (dir OUT: the WAN; IN: the
 * LAN): a packet the stack forwarded from the other interface, translated by
 * it. Marks its session as seen in this direction, counts it while the
 * session is slow, and learns a mapping's flow. Always passes.
 */
static __always_inline int seen(struct __sk_buff *skb, __u8 dir)
{
	const struct nat_config *cfg = config();
	struct nat_pkt p, to;
	struct nat_key back, own;
	__u8 opp = dir == NAT_DIR_OUT ? NAT_DIR_IN : NAT_DIR_OUT;
	__u32 bit = dir == NAT_DIR_OUT ? NAT_F_SEEN_OUT : NAT_F_SEEN_IN;
	/* Redirected by an ingress program: fast already, counted there. The
	 * control block survives the redirect; a packet the stack forwarded has
	 * its IP control block there instead, which never holds this value
	 * without IP options (and a wrong match only skips this packet's mark). */
	if (skb->cb[0] == NAT_CB_FAST)
		return NAT_PASS;
	if (!cfg)
		return NAT_PASS;
	/* Forwarded from the other side (not sent by the gateway itself). */
	if (skb->ingress_ifindex != (dir == NAT_DIR_OUT ? cfg->lan_ifindex : cfg->wan_ifindex))
		return NAT_PASS;
	if (nat_parse(skb, &p, NAT_PARSE_STRICT) < 0)
		return NAT_PASS;
	/* The answer to this packet, as it would arrive: the other direction's entry. */
	back.saddr = p.daddr;
	back.daddr = p.saddr;
	back.sport = p.dport;
	back.dport = p.sport;
	back.proto = p.proto;
	back.dir = opp;
	back.pad = 0;
	struct nat_entry *b = bpf_map_lookup_elem(&dpm_nat, &back);
	if (b && (b->flags & NAT_F_FAST) == NAT_F_FAST)
		return NAT_PASS; /* fast already (a redirected packet, or one the ingress left to the stack) */
	struct nat_pkt bp = {};
	nat_key_of(&own, &p, 0);
	bp.saddr = back.saddr;
	bp.daddr = back.daddr;
	bp.sport = back.sport;
	bp.dport = back.dport;
	bp.proto = back.proto;
	if (!b) {
		/* A mapping's flow: the wildcard with the remote half zero. */
		struct nat_key w = back;
		if (opp == NAT_DIR_IN) {
			w.saddr = 0;
			w.sport = 0;
		} else {
			w.daddr = 0;
			w.dport = 0;
		}
		struct nat_entry *we = bpf_map_lookup_elem(&dpm_nat, &w);
		if (!we || !(we->flags & NAT_F_WILDCARD))
			return NAT_PASS;
		nat_apply(&to, &bp, we);
		struct nat_entry learned_back = {
			.saddr = to.saddr,
			.daddr = to.daddr,
			.sport = to.sport,
			.dport = to.dport,
			.flags = NAT_F_LEARNED | bit,
		};
		struct nat_entry learned_own = {
			.saddr = p.saddr,
			.daddr = p.daddr,
			.sport = p.sport,
			.dport = p.dport,
			.flags = NAT_F_LEARNED | bit,
		};
		own.saddr = to.daddr;
		own.daddr = to.saddr;
		own.sport = to.dport;
		own.dport = to.sport;
		own.dir = dir;
		/* BPF_NOEXIST: a pair another CPU learned meanwhile (or dpm wrote) is kept. */
		bpf_map_update_elem(&dpm_nat, &back, &learned_back, BPF_NOEXIST);
		bpf_map_update_elem(&dpm_nat, &own, &learned_own, BPF_NOEXIST);
		struct nat_entry *oe = bpf_map_lookup_elem(&dpm_nat, &own);
		if (oe)
			nat_count(skb, oe, &p, nat_now());
		return NAT_PASS;
	}
	if (b->flags & NAT_F_WILDCARD)
		return NAT_PASS;
	/* This direction's entry: its key is the other entry's translation, reversed. */
	nat_apply(&to, &bp, b);
	own.saddr = to.daddr;
	own.daddr = to.saddr;
	own.sport = to.dport;
	own.dport = to.sport;
	own.dir = dir;
	struct nat_entry *oe = bpf_map_lookup_elem(&dpm_nat, &own);
	if (!oe)
		return NAT_PASS;
	nat_count(skb, oe, &p, nat_now());
	nat_set_flags(oe, bit);
	nat_set_flags(b, bit);
	return NAT_PASS;
}

SEC("tc")
int dpm_lan_in(struct __sk_buff *skb)
{
	return fast_path(skb, NAT_DIR_OUT);
}

SEC("tc")
int dpm_wan_in(struct __sk_buff *skb)
{
	return fast_path(skb, NAT_DIR_IN);
}

SEC("tc")
int dpm_wan_out(struct __sk_buff *skb)
{
	return seen(skb, NAT_DIR_OUT);
}

SEC("tc")
int dpm_lan_out(struct __sk_buff *skb)
{
	return seen(skb, NAT_DIR_IN);
}
