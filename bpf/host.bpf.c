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
 * the host's firewall sees the application's own addresses both ways, and
 * nothing on the host is re-routed, DNATed or tracked per packet. The driver
 * writes both entries with both SEEN bits (the host's own firewall already
 * saw the packets).
 *
 * A new session's packets are held until the server grants it (claims 1, 5):
 * dpm_host_out copies a TCP/UDP packet of a flow it has no entry for (a TCP
 * SYN, any UDP datagram) into the perf event array dpm_held and keeps it from
 * the wire (TC_ACT_STOLEN: the sender sees it sent). The driver reads it,
 * asks the server, writes the entries and sends the packet back out with the
 * pass mark (host_config.pass_mark), and this program then translates it. A
 * flow the driver lets go untranslated (no answer from the server) gets a
 * NAT_F_PASS entry, so its packets no longer come up; so does a flow that
 * came in from outside the LAN with no session (a mapping's: its answers
 * leave as they are, as the kernel path's conntrack lets them). Only while the driver
 * is alive (host_config.alive_until_ns, its heartbeat): with no driver, a new
 * session's packets pass untranslated, as a queue's --queue-bypass would let
 * them (the gateway's ordinary NAT serves them).
 *
 * ICMP goes to the driver the same way (its translator handles ICMP on every
 * path): toward the outside on the way out; echo replies from G and errors
 * from G or from outside the LAN on the way in (the driver delivers them to
 * the host once translated). So the host needs no netfilter rule for dpm.
 *
 * Fragments: the egress program sees a datagram after the host fragmented it,
 * the ingress one before the host reassembles it. The first fragment carries
 * the ports: it is translated (or held) like a whole packet, and the result
 * is remembered in dpm_frag by (addresses, IP id, protocol), where the later
 * fragments of the same datagram find it (they follow the first one, as the
 * host's own fragmentation and a forwarding gateway send them). IP options
 * are skipped. Everything else (other sessions, other hosts' traffic) passes.
 */
#include "nat_prog.h"

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct host_config);
} dpm_hcfg SEC(".maps");

/* Held packets for the driver (one perf ring per CPU; libbpf sizes it to the CPUs). */
struct {
	__uint(type, BPF_MAP_TYPE_PERF_EVENT_ARRAY);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(__u32));
} dpm_held SEC(".maps");

/* A datagram's fragments, by the addresses of its first fragment as it arrived. */
struct frag_key {
	__be32 saddr;
	__be32 daddr;
	__be16 id;
	__u8 proto;
	__u8 dir;
};

/* What the first fragment became: its new addresses, or held for the driver. */
struct frag_val {
	__be32 saddr;
	__be32 daddr;
	__u32 held;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, struct frag_key);
	__type(value, struct frag_val);
} dpm_frag SEC(".maps");

static __always_inline const struct host_config *config(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&dpm_hcfg, &zero);
}

static __always_inline void frag_key_of(struct frag_key *fk, const struct nat_pkt *p, __u8 dir)
{
	fk->saddr = p->saddr;
	fk->daddr = p->daddr;
	fk->id = p->ip_id;
	fk->proto = p->proto;
	fk->dir = dir;
}

/* The first fragment of a datagram went as `to` (or was held): its later fragments follow. */
static __noinline void frag_note_first(const struct nat_pkt *p, __u8 dir, const struct nat_pkt *to,
				       __u32 held)
{
	struct frag_key fk;
	struct frag_val fv = {};
	frag_key_of(&fk, p, dir);
	if (to) {
		fv.saddr = to->saddr;
		fv.daddr = to->daddr;
	}
	fv.held = held;
	bpf_map_update_elem(&dpm_frag, &fk, &fv, BPF_ANY);
}

static __always_inline void frag_note(const struct nat_pkt *p, __u8 dir, const struct nat_pkt *to,
				      __u32 held)
{
	if (p->frag == NAT_FRAG_FIRST)
		frag_note_first(p, dir, to, held);
}

/* A session's entry (both bits, not a wildcard) for the packet from side `dir`. */
static __always_inline struct nat_entry *lookup(const struct nat_pkt *p, __u8 dir)
{
	struct nat_key k;
	nat_key_of(&k, p, dir);
	return bpf_map_lookup_elem(&dpm_nat, &k);
}

static __always_inline int usable(const struct nat_entry *e)
{
	return e && (e->flags & (NAT_F_FAST | NAT_F_WILDCARD | NAT_F_PASS)) == NAT_F_FAST;
}

/* Hands the packet (arriving from side `dir`) to the driver and keeps it from the wire. */
static __always_inline int hold(struct __sk_buff *skb, __u8 dir)
{
	struct held_hdr h = {.len = skb->len, .gso_size = skb->gso_size, .dir = dir};
	__u64 flags = BPF_F_CURRENT_CPU | (((__u64)skb->len << 32) & BPF_F_CTXLEN_MASK);
	if (bpf_perf_event_output(skb, &dpm_held, flags, &h, sizeof(h)) < 0)
		return TC_ACT_SHOT; /* no room: lost, as from a full queue */
	return TC_ACT_STOLEN;
}

/* The driver is alive (its heartbeat runs), and the packet is not one it sent back itself. */
static __always_inline const struct host_config *alive(struct __sk_buff *skb)
{
	const struct host_config *cfg = config();
	if (!cfg || cfg->alive_until_ns == 0 || skb->mark == cfg->pass_mark)
		return 0;
	return bpf_ktime_get_coarse_ns() < cfg->alive_until_ns ? cfg : 0;
}

/* Whether a destination is outside: not the LAN, loopback, multicast or broadcast. */
static __always_inline int outside(const struct host_config *cfg, __be32 daddr)
{
	if ((daddr & cfg->lan_mask) == cfg->lan_net)
		return 0;
	__u32 d = bpf_ntohl(daddr);
	return (d >> 24) != 127 && (d >> 28) != 0xe && d != 0xffffffff;
}

/*
 * Whether a leaving packet of a flow with no entry goes to the driver: a new
 * session's (sent by a local socket, not forwarded, toward the outside,
 * opening a flow: UDP, or a TCP SYN), or ICMP toward the outside (the
 * driver's translator handles ICMP, as on the other paths).
 */
static __always_inline int to_hold(struct __sk_buff *skb, const struct nat_pkt *p)
{
	const struct host_config *cfg = alive(skb);
	if (!cfg || !outside(cfg, p->daddr))
		return 0;
	if (p->proto == IPPROTO_ICMP)
		return 1;
	if (!skb->sk)
		return 0;
	return p->proto != IPPROTO_TCP || (p->tcp_flags & 0x12) == 0x02; /* SYN without ACK */
}

/* ICMP types the driver translates on the way in. */
#define ICMP_ECHOREPLY 0
#define ICMP_DEST_UNREACH 3
#define ICMP_TIME_EXCEEDED 11
#define ICMP_PARAMETERPROB 12

/*
 * Whether an arriving ICMP packet goes to the driver: an echo reply from G
 * (the gateway's translation of a host's echo session), or an error from G
 * or from outside the LAN (quoting a packet the driver may have translated).
 */
static __always_inline int icmp_to_hold(struct __sk_buff *skb, const struct nat_pkt *p)
{
	const struct host_config *cfg = alive(skb);
	if (!cfg)
		return 0;
	__u8 type = p->tcp_flags;
	if (type == ICMP_ECHOREPLY)
		return p->saddr == cfg->gateway;
	if (type != ICMP_DEST_UNREACH && type != ICMP_TIME_EXCEEDED && type != ICMP_PARAMETERPROB)
		return 0;
	return p->saddr == cfg->gateway || (p->saddr & cfg->lan_mask) != cfg->lan_net;
}

static __always_inline int to_gateway(struct __sk_buff *skb, const struct nat_pkt *to);

/* A later fragment: translated (or held) as its first fragment was; outbound, toward G as it.
 * Out of line (a BPF subprogram), as every rare case here: the per-packet path stays short. */
static __noinline int rest(struct __sk_buff *skb, const struct nat_pkt *p, __u8 dir)
{
	struct frag_key fk;
	frag_key_of(&fk, p, dir);
	struct frag_val *fv = bpf_map_lookup_elem(&dpm_frag, &fk);
	if (!fv)
		return NAT_PASS;
	if (fv->held)
		return hold(skb, dir);
	struct nat_pkt to = *p;
	to.saddr = fv->saddr;
	to.daddr = fv->daddr;
	if (nat_rewrite(skb, p, &to, 0) < 0)
		return TC_ACT_SHOT;
	return dir == NAT_DIR_OUT ? to_gateway(skb, &to) : NAT_PASS;
}

/* After the rewrite to G: on to G's link address, whatever route the stack chose toward X. */
static __always_inline int to_gateway(struct __sk_buff *skb, const struct nat_pkt *to)
{
	struct bpf_fib_lookup fib = {};
	fib.family = 2; /* AF_INET */
	fib.l4_protocol = to->proto;
	fib.sport = to->sport;
	fib.dport = to->dport;
	fib.ifindex = skb->ifindex;
	fib.tos = to->tos;
	fib.ipv4_src = to->saddr;
	fib.ipv4_dst = to->daddr;
	long rc = bpf_fib_lookup(skb, &fib, sizeof(fib), BPF_FIB_LOOKUP_OUTPUT);
	if (rc == BPF_FIB_LKUP_RET_SUCCESS && fib.ifindex == skb->ifindex)
		return nat_set_macs(skb, fib.dmac, fib.smac) < 0 ? TC_ACT_SHOT : NAT_PASS;
	if (rc == BPF_FIB_LKUP_RET_SUCCESS || rc == BPF_FIB_LKUP_RET_NO_NEIGH)
		return bpf_redirect_neigh(fib.ifindex, 0, 0, 0);
	/* No route to G: as the stack would, send it where it was going. */
	return NAT_PASS;
}

/*
 * The same for a session's packet, with the next hop cached in its entry.
 * When the FIB helper gives no answer (on a host that does not forward it
 * refuses every lookup, BPF_FIB_LKUP_RET_FWD_DISABLED) the packet goes where
 * the stack sent it, and that outcome is cached too (NAT_NH_STACK), so that
 * a refused lookup is not repeated for every packet.
 */
static __noinline int to_gateway_lookup(struct __sk_buff *skb, struct nat_entry *e,
					 const struct nat_pkt *to, __u32 now)
{
	struct nat_hop hop;
	__u32 ifindex = skb->ifindex;
	if (e->nh_ifindex == NAT_NH_STACK)
		e->nh_ifindex = 0; /* expired: ask the FIB again */
	if (nat_next_hop(skb, e, to, ifindex, BPF_FIB_LOOKUP_OUTPUT, now, &hop) < 0) {
		/* No answer: as the stack would, send it where it was going. */
		e->nh_at = now;
		e->nh_ifindex = NAT_NH_STACK;
		return NAT_PASS;
	}
	if (hop.resolved && hop.ifindex == ifindex) {
		/* The source: the FIB's, or (cached) the one the stack wrote, this device's own. */
		if (hop.fresh)
			return nat_set_macs(skb, hop.dmac, hop.smac) < 0 ? TC_ACT_SHOT : NAT_PASS;
		return nat_set_dmac(skb, hop.dmac) < 0 ? TC_ACT_SHOT : NAT_PASS;
	}
	return bpf_redirect_neigh(hop.ifindex, 0, 0, 0);
}

static __always_inline int to_gateway_cached(struct __sk_buff *skb, struct nat_entry *e,
					     const struct nat_pkt *to, __u32 now)
{
	if (e->nh_ifindex == NAT_NH_STACK && now - e->nh_at < NAT_NH_TTL)
		return NAT_PASS;
	return to_gateway_lookup(skb, e, to, now);
}

/*
 * A leaving packet of a flow with no usable entry: a pass entry's (kept
 * fresh), one for the driver (held), or one that is not dpm's (passes).
 */
static __noinline int out_unknown(struct __sk_buff *skb, const struct nat_pkt *p,
				  struct nat_entry *e)
{
	if (e && (e->flags & NAT_F_PASS)) {
		__u64 now = nat_now();
		if (e->last_ns != now)
			e->last_ns = now;
		return NAT_PASS;
	}
	if (!to_hold(skb, p))
		return NAT_PASS;
	frag_note(p, NAT_DIR_OUT, 0, 1);
	return hold(skb, NAT_DIR_OUT);
}

SEC("tc")
int dpm_host_out(struct __sk_buff *skb)
{
	struct nat_pkt p, to;
	if (nat_parse(skb, &p, NAT_PARSE_ALL) < 0)
		return NAT_PASS;
	if (p.frag == NAT_FRAG_REST)
		return rest(skb, &p, NAT_DIR_OUT);
	struct nat_entry *e = p.proto == IPPROTO_ICMP ? 0 : lookup(&p, NAT_DIR_OUT);
	if (!usable(e))
		return out_unknown(skb, &p, e);
	nat_apply(&to, &p, e);
	if (nat_rewrite(skb, &p, &to, 0) < 0)
		return TC_ACT_SHOT;
	__u64 now = nat_now();
	nat_count(skb, e, &p, now);
	frag_note(&p, NAT_DIR_OUT, &to, 0);
	return to_gateway_cached(skb, e, &to, nat_tick(now));
}

/*
 * An inbound packet of no session, from outside the LAN: a flow the host did
 * not start through dpm (a mapping's, a fallen-back session's replies). Its
 * answers must leave as they are, as the kernel path's conntrack lets them:
 * a pass entry for the answers' direction (kept fresh while packets come in).
 */
static __noinline void note_inbound(const struct nat_pkt *p)
{
	const struct host_config *cfg = config();
	if (!cfg || cfg->alive_until_ns == 0 || (p->saddr & cfg->lan_mask) == cfg->lan_net)
		return;
	struct nat_key k = {
		.saddr = p->daddr,
		.daddr = p->saddr,
		.sport = p->dport,
		.dport = p->sport,
		.proto = p->proto,
		.dir = NAT_DIR_OUT,
	};
	__u64 now = bpf_ktime_get_coarse_ns();
	struct nat_entry *e = bpf_map_lookup_elem(&dpm_nat, &k);
	if (e) {
		if ((e->flags & NAT_F_PASS) && e->last_ns != now)
			e->last_ns = now;
		return;
	}
	struct nat_entry pass = {.flags = NAT_F_PASS, .last_ns = now};
	bpf_map_update_elem(&dpm_nat, &k, &pass, BPF_NOEXIST);
}

/* An arriving ICMP packet: held for the driver (icmp_to_hold) or passed. */
static __noinline int icmp_in(struct __sk_buff *skb, const struct nat_pkt *p)
{
	if (!icmp_to_hold(skb, p))
		return NAT_PASS;
	frag_note(p, NAT_DIR_IN, 0, 1);
	return hold(skb, NAT_DIR_IN);
}

SEC("tc")
int dpm_host_in(struct __sk_buff *skb)
{
	struct nat_pkt p, to;
	if (skb->pkt_type != 0 /* PACKET_HOST */ || nat_parse(skb, &p, NAT_PARSE_ALL) < 0)
		return NAT_PASS;
	if (p.frag == NAT_FRAG_REST)
		return rest(skb, &p, NAT_DIR_IN);
	if (p.proto == IPPROTO_ICMP)
		return icmp_in(skb, &p);
	struct nat_entry *e = lookup(&p, NAT_DIR_IN);
	if (!usable(e)) {
		if (!e)
			note_inbound(&p);
		return NAT_PASS;
	}
	nat_apply(&to, &p, e);
	if (nat_rewrite(skb, &p, &to, 0) < 0)
		return TC_ACT_SHOT;
	nat_count(skb, e, &p, nat_now());
	frag_note(&p, NAT_DIR_IN, &to, 0);
	return NAT_PASS;
}
