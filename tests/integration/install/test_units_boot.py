"""The installed units, started by a real systemd: a Debian 12 root booted with systemd-nspawn.

`--role all --with dns --with ingress` is installed into a fresh root (as in
test_install_debian_root), then the root boots with systemd as PID 1 in its own network
namespace. A check unit inside waits for the daemons and writes what it saw as JSON:
each unit's state, restarts, user and capabilities as the kernel reports them, the
node's Ready condition, the proxy's /healthz and rules, a DNS answer, and an HTTP answer
from the ingress controller's nginx. So the sandboxes and capability sets in proxy/ are
observed working, not only parsed.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from tests.integration.install import debian_root
from tests.integration.install.test_install_debian_root import SRC, WHEELS, copy_checkout, ok

pytestmark = [
    pytest.mark.root,
    pytest.mark.prerequisite_missing(os.geteuid() != 0, reason="needs root (chroot, nspawn)"),
    pytest.mark.prerequisite_missing(shutil.which("debootstrap") is None,
                                     reason="debootstrap not installed (./run setup)"),
    pytest.mark.prerequisite_missing(shutil.which("systemd-nspawn") is None,
                       reason="systemd-nspawn not installed (./run setup installs systemd-container)"),
]

CAP = {"CAP_NET_BIND_SERVICE": 10, "CAP_NET_ADMIN": 12, "CAP_NET_RAW": 13, "CAP_SYS_ADMIN": 21}

# A test underlay inside the container: a bridge holding the node's address.
NET_UNIT = """\
[Unit]
Before=netplane-node.service netplane-proxy.service
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh -c 'ip link set lo up && ip link add np-ul0 type bridge && \
ip addr add 10.0.0.1/24 dev np-ul0 && ip link set np-ul0 up && ip route add default dev np-ul0'
[Install]
WantedBy=multi-user.target
"""

CHECK_UNIT = """\
[Unit]
After=netplane-server.service netplane-node.service netplane-proxy.service netplane-dns.service \
netplane-ingress.service
[Service]
Type=oneshot
ExecStart=/usr/bin/python3 /np-check.py
# After success or failure alike, so a failing check still ends the boot.
ExecStopPost=/bin/systemctl --no-block poweroff
[Install]
WantedBy=multi-user.target
"""

WEB = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: default}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: web, image: nginx, ports: [{containerPort: 80}]}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 80}]
"""

CHECK_SCRIPT = r'''
import json, socket, struct, subprocess, time, urllib.error, urllib.request

def sh(*cmd):
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    return p.stdout

def poll(fn, timeout=90):
    deadline = time.monotonic() + timeout
    while True:
        try:
            v = fn()
            if v:
                return v
        except Exception:
            pass
        if time.monotonic() > deadline:
            return None
        time.sleep(0.5)

def node_ready():
    nodes = json.loads(sh("netplane", "get", "nodes", "-o", "json"))["items"]
    return any(c["type"] == "Ready" and c["status"] == "True"
               for n in nodes for c in n["status"].get("conditions", []))

def healthz():
    return urllib.request.urlopen("http://127.0.0.1:10256/healthz", timeout=3).status

def dns_a(name):
    q = struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
    q += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0" + struct.pack(">HH", 1, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        s.sendto(q, ("127.0.0.1", 53))
        r = s.recv(4096)
    rcode, ancount = r[3] & 0xF, struct.unpack(">H", r[6:8])[0]
    return {"rcode": rcode, "answers": ancount, "last_a": ".".join(map(str, r[-4:])) if ancount else None}

def http(url):
    try:
        resp = urllib.request.urlopen(url, timeout=3)
        return {"status": resp.status, "server": resp.headers.get("Server"), "body": resp.read(300).decode()}
    except urllib.error.HTTPError as e:
        return {"status": e.code, "server": e.headers.get("Server"), "body": ""}

def pod():
    items = json.loads(sh("netplane", "get", "pods", "-l", "app=web", "-o", "json"))["items"]
    for p in items:
        st = p.get("status", {})
        if any(c["type"] == "Ready" and c["status"] == "True" for c in st.get("conditions", [])):
            return {"ip": st["podIP"], "restarts": st["containerStatuses"][0]["restartCount"]}
    return None

out = {"node_ready": bool(poll(node_ready)), "healthz": poll(healthz)}
# A lab pod on port 80 (so it needs CAP_NET_BIND_SERVICE from the node unit's bounding set).
out["apply"] = sh("netplane", "apply", "-f", "/np-web.yaml")
out["pod"] = poll(pod)
cluster_ip = json.loads(sh("netplane", "get", "svc", "web", "-o", "json"))["spec"]["clusterIP"]
if out["pod"]:
    out["pod_http"] = poll(lambda: http(f"http://{out['pod']['ip']}:80/"))
    out["svc_http"] = poll(lambda: http(f"http://{cluster_ip}:80/"))
    # KillMode=process: restarting the agent leaves the pod running, untouched.
    subprocess.run(["systemctl", "restart", "netplane-node"], timeout=60)
    out["after_restart"] = {"pod": poll(pod), "http": poll(lambda: http(f"http://{out['pod']['ip']}:80/"))}
out["dns"] = poll(lambda: dns_a("kubernetes.default.svc.cluster.local"))
out["ingress"] = poll(lambda: http("http://127.0.0.1:80/"))
out["nat_rules"] = sh("iptables-save", "-t", "nat").count("NP-")
out["conflist"] = sh("cat", "/etc/cni/net.d/10-netplane.conflist")[:2000]
out["units"] = {}
for u in ("server", "node", "proxy", "dns", "ingress"):
    props = dict(line.split("=", 1) for line in sh("systemctl", "show", f"netplane-{u}", "-p",
                 "ActiveState,NRestarts,MainPID").splitlines() if "=" in line)
    status = {}
    if props.get("MainPID", "0") != "0":
        for line in open(f"/proc/{props['MainPID']}/status"):
            k, _, v = line.partition(":")
            if k in ("Uid", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs"):
                status[k] = v.split()[0]
    out["units"][u] = {**props, **status}
out["journal"] = sh("journalctl", "--no-pager", "-o", "cat", "-u", "netplane-*")[-6000:]
json.dump(out, open("/results/check.json", "w"), indent=1)
'''


@pytest.mark.timeout(1800)
def test_installed_units_run_under_systemd(tmp_path: Path) -> None:
    root = tmp_path / "root"
    debian_root.unpack(debian_root.rootfs_tarball(), root)
    copy_checkout(root / SRC.lstrip("/"))
    shutil.copytree(debian_root.wheelhouse(), root / WHEELS.lstrip("/"))
    ok(debian_root.chroot_run(root, f"NETPLANE_SRC={SRC} sh {SRC}/vagrant/provision.sh --role all --with dns "
                                    f"--with ingress --node-name n1 --address 10.0.0.1 --backend host-gw "
                                    f"--wheelhouse {WHEELS}"))
    units = root / "etc/systemd/system"
    (units / "np-net.service").write_text(NET_UNIT)
    (units / "np-check.service").write_text(CHECK_UNIT)
    (root / "np-check.py").write_text(CHECK_SCRIPT)
    (root / "np-web.yaml").write_text(WEB)
    # Debian's own nginx would take port 80 from the ingress controller's.
    ok(debian_root.chroot_run(root, "systemctl enable np-net.service np-check.service && systemctl mask nginx.service"))
    results = tmp_path / "results"
    results.mkdir()

    booted = debian_root.boot(root, results, f"np-boot-{os.getpid()}", timeout=300)
    check = results / "check.json"
    assert check.exists(), f"the check unit wrote nothing (exit {booted.returncode}):\n{booted.stderr[-3000:]}"
    got = json.loads(check.read_text())
    journal = got.pop("journal")

    for name, unit in got["units"].items():
        # (the node agent was restarted on purpose: by systemctl, which NRestarts does not count)
        assert (unit["ActiveState"], unit["NRestarts"]) == ("active", "0"), (name, unit, journal)
        assert unit["NoNewPrivs"] == "1"

    def caps(unit: str) -> set[str]:
        eff = int(got["units"][unit]["CapEff"], 16)
        assert eff == int(got["units"][unit]["CapBnd"], 16) or got["units"][unit]["Uid"] != "0"
        unknown = eff & ~sum(1 << bit for bit in CAP.values())
        assert unknown == 0, f"{unit} has capabilities beyond the expected ones: {unknown:#x}"
        return {name for name, bit in CAP.items() if eff >> bit & 1}

    assert caps("server") == set() and got["units"]["server"]["Uid"] != "0"
    assert caps("dns") == {"CAP_NET_BIND_SERVICE"} and got["units"]["dns"]["Uid"] != "0"
    assert caps("ingress") == {"CAP_NET_BIND_SERVICE"} and got["units"]["ingress"]["Uid"] != "0"
    assert caps("proxy") == {"CAP_NET_ADMIN", "CAP_NET_RAW"} and got["units"]["proxy"]["Uid"] == "0"
    assert caps("node") == set(CAP) and got["units"]["node"]["Uid"] == "0"

    assert got["node_ready"], journal
    assert got["healthz"] == 200, journal
    assert got["nat_rules"] > 0, journal
    assert json.loads(got["conflist"])["plugins"][0]["type"] == "netplane"
    assert got["dns"] is not None and got["dns"]["rcode"] == 0 and got["dns"]["last_a"] == "10.96.0.1", journal
    assert got["ingress"] is not None and got["ingress"]["server"] == "nginx", journal

    # A lab pod serving on port 80 under the node unit, reached directly and through its ClusterIP;
    # restarting the agent (KillMode=process) leaves it running with no container restart.
    assert got["pod"] is not None, (got["apply"], journal)
    assert got["pod_http"]["status"] == 200 and "web-" in got["pod_http"]["body"], got["pod_http"]
    assert got["svc_http"]["status"] == 200 and "web-" in got["svc_http"]["body"], got["svc_http"]
    assert got["after_restart"]["pod"] == got["pod"], got["after_restart"]
    assert got["after_restart"]["http"]["status"] == 200
