#!/bin/sh
# The seed's cutover, by hand, in its order and with its commands (bench/cutover.py runs it in
# the netns rig; `undo` puts the rig back). Legacy commands go over ssh, one connection each,
# as typed at a prompt; the node's run locally (the operator is logged in on it).
# Environment: SSH_OPTS (ssh options, word-split), LEGACY (maintenance address), NODE_NS,
# IP, PREFIX, IF, BR, MAINT_LEGACY, MAINT_NODE, LEGACY_NS_DIRECT (ssh destination before the
# maintenance address exists), BOOT, UNBOOT, STOP, START (commands, word-split).
set -eu
legacy() { ssh $SSH_OPTS "root@$LEGACY" "$@"; }
node() { ip netns exec "$NODE_NS" "$@"; }
case "${1:-run}" in
run)
  ssh $SSH_OPTS "root@$LEGACY_DIRECT" ip addr add "$MAINT_LEGACY" dev "$IF"   # ns1
  node ip addr add "$MAINT_NODE" dev "$IF"                                   # yopo
  node ip link add "$BR" type bridge                                         # rc.local
  node ip link set "$BR" up
  echo "cutover-start $(date +%s.%N)"
  legacy ip addr del "$IP/$PREFIX" dev "$IF"                                 # yopo: ssh ns1
  legacy $STOP                                                               # util-vserver stop
  true                                                                       # rsync again
  $BOOT                                                                      # nova boot
  node ip r add "$IP" dev "$BR"
  node sh -c "echo 1 > /proc/sys/net/ipv4/conf/$IF/proxy_arp"
  node sh -c "echo 1 > /proc/sys/net/ipv4/conf/$BR/proxy_arp"
  node ip addr add "$IP" dev "$IF"
  node arping -q -U -c 1 -I "$IF" "$IP" || true
  node ip addr del "$IP/32" dev "$IF"
  echo "cutover-end $(date +%s.%N)"
  ;;
undo)
  node ip route del "$IP" dev "$BR" || true
  $UNBOOT || true
  node ip link del "$BR" || true
  node sh -c "echo 0 > /proc/sys/net/ipv4/conf/$IF/proxy_arp"
  legacy ip addr add "$IP/$PREFIX" dev "$IF"
  legacy ip route replace default via "$GATEWAY"
  legacy arping -q -U -c 1 -I "$IF" "$IP" || true
  legacy $START
  node ip addr del "$MAINT_NODE" dev "$IF" || true
  ssh $SSH_OPTS "root@$LEGACY_DIRECT" ip addr del "$MAINT_LEGACY" dev "$IF" || true
  ;;
esac
