#!/bin/sh
# After `vagrant up`: apply vagrant/demo.yaml (a Deployment + a NodePort Service) on the
# control plane, wait for its pods, then reach it from every worker through its ClusterIP
# and, from the control plane, through the NodePort on every worker.
#
#   cd vagrant && vagrant up && sh check.sh
set -eu
cd "$(dirname "$0")"
WORKERS=${NETPLANE_WORKERS:-2}
SUBNET=${NETPLANE_SUBNET:-192.168.56}
# An HTTP GET with Python (on every VM already): prints the body or fails.
GET='python3 -c "import sys,urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())"'

on() { vagrant ssh "$1" -c "$2" -- -q; }

echo "== nodes"
on cp 'netplane get nodes -o wide'
echo "== apply demo.yaml"
on cp 'netplane apply -f /vagrant/vagrant/demo.yaml'
echo "== waiting for 2 ready pods"
on cp 'for i in $(seq 90); do
  n=$(netplane get pods -l app=web -o json | python3 -c "import json,sys
items = json.load(sys.stdin)[\"items\"]
print(sum(1 for p in items if any(c[\"type\"] == \"Ready\" and c[\"status\"] == \"True\"
                                  for c in p.get(\"status\", {}).get(\"conditions\", []))))")
  [ "$n" -ge 2 ] && exit 0; sleep 2
done; echo "pods not ready after 3 minutes" >&2; netplane get pods -o wide; exit 1'
on cp 'netplane get pods -o wide'
CLUSTER_IP=$(on cp "netplane get svc web -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"spec\"][\"clusterIP\"])'" | tr -d '\r')
echo "== ClusterIP $CLUSTER_IP from every worker"
i=1
while [ "$i" -le "$WORKERS" ]; do
  echo "-- w$i:"; on "w$i" "$GET http://$CLUSTER_IP/"
  i=$((i + 1))
done
echo "== NodePort 30080 on every worker, from cp"
i=1
while [ "$i" -le "$WORKERS" ]; do
  echo "-- $SUBNET.$((10 + i)):30080"; on cp "$GET http://$SUBNET.$((10 + i)):30080/"
  i=$((i + 1))
done
echo "== ok"
