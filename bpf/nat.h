/* SPDX-License-Identifier: (GPL-2.0-only OR MIT) */
/*
 * The layouts dpm's BPF programs share with user space: the key and value of
 * the session map `dpm_nat` and the gateway's configuration `dpm_cfg`.
 * src/datapath/bpf/layout.ts mirrors this file byte for byte (a unit test
 * compares it with the BTF of the compiled objects).
 *
 * One entry translates one direction of one flow: a packet whose own
 * addresses, ports and protocol equal an entry's key (on the side the key's
 * `dir` names) leaves with the entry's addresses and ports. Both directions
 * of a session are two entries, and they mirror each other: the entry for
 * key K with value V exists exactly when the entry for key reverse(V) has
 * value reverse(K) (reverse: swap source and destination). So a program that
 * holds one entry can always name the other.
 *
 * Addresses and ports are in network byte order, as in the packet, so the
 * programs never swap bytes. Zero in a value's address or port means "keep
 * the packet's own"; only a mapping's wildcard entries use it.
 */
#ifndef DPM_NAT_H
#define DPM_NAT_H

#include <linux/types.h>

/* The side a packet comes from, in nat_key.dir. */
enum nat_dir {
	/* From the private side: a LAN host's packet at the gateway, or the host's own packet leaving it. */
	NAT_DIR_OUT = 1,
	/* From the outside: a remote's packet at the gateway's WAN, or the gateway's packet reaching the host. */
	NAT_DIR_IN = 2,
};

/* Bits of nat_entry.flags. dpm writes the first ones; the programs only add bits (atomic or). */
enum nat_flag {
	/* The stack forwarded a packet of the session LAN -> WAN (seen leaving by the WAN). */
	NAT_F_SEEN_OUT = 1 << 0,
	/* The stack forwarded a packet of the session WAN -> LAN (seen leaving by the LAN). */
	NAT_F_SEEN_IN = 1 << 1,
	/* Both: the operator's forward policy passed the session both ways; the fast path takes it. */
	NAT_F_FAST = NAT_F_SEEN_OUT | NAT_F_SEEN_IN,
	/* A mapping's entry for every remote (the remote half of the key is zero): never translates
	 * itself; the egress programs learn one exact pair of entries per remote from it. */
	NAT_F_WILDCARD = 1 << 2,
	/* An exact pair learned by a program from a wildcard (a mapping's flow with one remote). */
	NAT_F_LEARNED = 1 << 3,
	/* A TCP FIN, or RST, was translated in this entry's direction. */
	NAT_F_FIN = 1 << 4,
	NAT_F_RST = 1 << 5,
	/* Host: a flow the driver let go untranslated (the server did not answer): its packets
	 * pass as they are, without being held again. Never translates. */
	NAT_F_PASS = 1 << 6,
};

/* A packet's own addresses as it arrives (16 bytes). */
struct nat_key {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto; /* IPPROTO_TCP or IPPROTO_UDP */
	__u8 dir;   /* enum nat_dir */
	__u16 pad;  /* zero */
};

/* What a matching packet becomes, and what was seen of it (56 bytes: with the hash map's own
 * 48-byte element header and the key, 120 bytes, so the kernel allocates each entry from its
 * 128-byte cache; 8 more would take it to the 192-byte one). */
struct nat_entry {
	__be32 saddr; /* 0: keep */
	__be32 daddr; /* 0: keep */
	__be16 sport; /* 0: keep */
	__be16 dport; /* 0: keep */
	__u32 flags;  /* enum nat_flag */
	__u64 packets;
	__u64 bytes;   /* IP bytes (the IP header included, the link header not) */
	__u64 last_ns; /* bpf_ktime_get_coarse_ns() (CLOCK_MONOTONIC, tick resolution) at the
			* last packet counted; 0 before any */
	/* The programs' cache of the next hop a FIB lookup gave for the translated packet, so that
	 * a lookup is made about once per NAT_NH_TTL instead of per packet. dpm writes zeros. The
	 * source MAC is the egress device's own: the gateway keeps it once per device
	 * (nat_config.lan_mac/wan_mac), the host keeps the one its stack wrote. */
	__u32 nh_ifindex; /* 0: nothing cached; NAT_NH_STACK: the stack's own next hop (host) */
	__u32 nh_at;      /* when it was looked up, in units of 2^20 ns (about a millisecond) */
	__u16 nh_mtu;     /* the device's MTU then */
	__u8 nh_dmac[6];
};

/* How long a cached next hop is used: 1000 units of 2^20 ns, about a second. */
#define NAT_NH_TTL 1000

/* nh_ifindex of a host's entry whose packets keep the next hop the stack chose, because the FIB
 * helper did not answer (it refuses on an interface that does not forward, as a host's usually
 * does: BPF_FIB_LKUP_RET_FWD_DISABLED); never an interface index (those are positive ints). */
#define NAT_NH_STACK 0xffffffffu

/* The gateway's one configuration record, `dpm_cfg[0]`, written by dpm before it attaches. */
struct nat_config {
	__u32 lan_ifindex;
	__u32 wan_ifindex;
	/* The sources each side may speak as (the stack's antispoof rules, which run after the
	 * ingress programs, say the same): the LAN's packets come from the LAN prefix but never
	 * from G or the prefix's network or broadcast address; the WAN's never from the LAN. */
	__be32 lan_net;
	__be32 lan_mask;
	__be32 gateway;
	__be32 edge_lo; /* the prefix's network and broadcast addresses; 0 when it has none (/31, /32) */
	__be32 edge_hi;
	/* The LAN and WAN devices' own MACs, the source of the packets redirected to them: written
	 * by the programs from the FIB's answers (dpm writes zeros; zero: not known yet). */
	__u8 lan_mac[6];
	__u8 wan_mac[6];
	/* How a fast packet is handed to the LAN and WAN devices (enum nat_handoff), written by dpm
	 * from each device's kind: NAT_HANDOFF_PEER when it is a veth (or netkit) whose peer lives in
	 * another network namespace. */
	__u8 lan_handoff;
	__u8 wan_handoff;
	__u16 pad; /* zero */
};

/* How the gateway's ingress programs hand a fast packet to the way out (nat_config). */
enum nat_handoff {
	/* bpf_redirect to the device's egress: its qdisc, its egress programs, then its driver. */
	NAT_HANDOFF_XMIT = 0,
	/* bpf_redirect_peer: straight into the ingress of the device's peer, in the peer's namespace,
	 * in the same softirq run; the device's own egress (qdisc, tc egress, packet taps) and the
	 * veth's transmit and backlog round are skipped (docs/datapath.md, "Hand-off"). */
	NAT_HANDOFF_PEER = 1,
};

/* The host's one configuration record, `dpm_hcfg[0]`, written by the driver. */
struct host_config {
	__be32 lan_net;  /* destinations inside lan_net/lan_mask are never held */
	__be32 lan_mask;
	__u32 pass_mark; /* skb->mark of the packets the driver sends back out: never held again */
	__be32 gateway;  /* G: ICMP echo replies and errors from it go to the driver */
	/* The driver's heartbeat (CLOCK_MONOTONIC ns): a new session's packet is held for the
	 * driver only before this time; after it (no driver, or a dead one) it passes untranslated,
	 * as the queue's --queue-bypass would let it. */
	__u64 alive_until_ns;
};

/* A held packet's record in the perf event array dpm_held: this header, then `len` bytes of
 * the packet from its link (Ethernet) header on. */
struct held_hdr {
	__u32 len;      /* the packet's bytes that follow */
	__u16 gso_size; /* a GSO packet's segment size (UDP_SEGMENT), 0 for a plain packet */
	__u8 dir;       /* enum nat_dir: NAT_DIR_OUT leaving the host, NAT_DIR_IN arriving */
	__u8 pad;
};

#endif
