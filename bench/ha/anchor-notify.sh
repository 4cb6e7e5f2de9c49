#!/bin/sh
# The anchor's keepalived notify hook: the steps of Debian's
# /usr/share/doc/conntrackd/examples/sync/primary-backup.sh (commit the
# external cache, flush the caches, resync from the kernel, bulk send to the
# backup; as backup: request a resync), with this gateway's conntrackd
# configuration, and a timestamped line per step in $LOG for the
# measurements (bench/ha.ts).
# keepalived calls: <script> <conf> <log> INSTANCE <name> <state> <priority>
CONF="$1"
LOG="$2"
STATE="$5"
ts() { date +%s.%N; }
step() {
	"$@" >/dev/null 2>&1
	echo "$(ts) done $* rc=$?" >>"$LOG"
}
echo "$(ts) notify $STATE" >>"$LOG"
case "$STATE" in
MASTER)
	step conntrackd -C "$CONF" -c
	step conntrackd -C "$CONF" -f
	step conntrackd -C "$CONF" -R
	step conntrackd -C "$CONF" -B
	;;
BACKUP)
	step conntrackd -C "$CONF" -t
	step conntrackd -C "$CONF" -n
	;;
FAULT)
	step conntrackd -C "$CONF" -t
	;;
esac
exit 0
