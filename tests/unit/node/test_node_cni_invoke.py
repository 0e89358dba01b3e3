"""The runtime's CNI invocation, against fake plugin executables that record what they get."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from netplane.node.cni import Attachment, CNIInvokeError, CNIInvoker, load_network, plugin_config, result_ips

FAKE = """#!{python}
import json, os, sys
conf = json.load(sys.stdin)
with open({record!r}, "a") as f:
    f.write(json.dumps({{"type": conf["type"], "command": os.environ["CNI_COMMAND"],
                        "env": {{k: v for k, v in os.environ.items() if k.startswith("CNI_")}},
                        "conf": conf}}) + "\\n")
if conf.get("fail") == os.environ["CNI_COMMAND"]:
    print(json.dumps({{"cniVersion": conf["cniVersion"], "code": 11, "msg": "boom", "details": "on purpose"}}))
    sys.exit(1)
if os.environ["CNI_COMMAND"] == "ADD":
    prev = conf.get("prevResult")
    if prev is None:
        prev = {{"cniVersion": conf["cniVersion"],
                "interfaces": [{{"name": "cni0"}}, {{"name": "eth0", "sandbox": os.environ["CNI_NETNS"]}}],
                "ips": [{{"address": "10.244.1.5/24", "interface": 1}},
                        {{"address": "10.244.1.1/24", "interface": 0}}]}}
    else:
        prev = dict(prev, seenBy=prev.get("seenBy", []) + [conf["type"]])
    print(json.dumps(prev))
"""


@pytest.fixture
def plugins(tmp_path: Path) -> tuple[Path, Path]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "calls.jsonl"
    for name in ("first", "second"):
        p = bin_dir / name
        p.write_text(FAKE.format(python=sys.executable, record=str(record)))
        p.chmod(0o755)
    return bin_dir, record


def calls(record: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []


NET: dict[str, Any] = {"cniVersion": "1.0.0", "name": "testnet",
       "plugins": [{"type": "first", "bridge": "cni0"},
                   {"type": "second", "capabilities": {"portMappings": True}}]}
ATT = Attachment("c0ffee", "/run/netns/np-pod-1", "eth0", "shop", "web-1", "uid-1",
                 {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]})


def test_add_chains_prev_result_and_del_runs_in_reverse_from_the_cache(plugins: tuple[Path, Path],
                                                                       tmp_path: Path) -> None:
    bin_dir, record = plugins
    inv = CNIInvoker([str(tmp_path / "nothing-here"), str(bin_dir)], str(tmp_path / "cache"))
    result = asyncio.run(inv.add(NET, ATT))
    assert result["seenBy"] == ["second"]
    assert result_ips(result) == ["10.244.1.5"]  # the host-side gateway address is not the pod's
    add1, add2 = calls(record)
    assert add1["env"] == {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c0ffee", "CNI_NETNS": "/run/netns/np-pod-1",
                           "CNI_IFNAME": "eth0", "CNI_PATH": f"{tmp_path / 'nothing-here'}:{bin_dir}",
                           "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-1;"
                                       "K8S_POD_INFRA_CONTAINER_ID=c0ffee;K8S_POD_UID=uid-1"}
    assert add1["conf"] == {"type": "first", "bridge": "cni0", "name": "testnet", "cniVersion": "1.0.0"}
    assert "prevResult" in add2["conf"] and add2["conf"]["prevResult"]["ips"][0]["address"] == "10.244.1.5/24"
    assert add2["conf"]["runtimeConfig"] == {"portMappings": ATT.capability_args["portMappings"]}
    # The conflist changes after the ADD: DEL still uses the config the ADD was made with.
    changed = {**NET, "plugins": [{"type": "first", "bridge": "other"}]}
    asyncio.run(inv.delete(changed, ATT))
    del1, del2 = calls(record)[2:]
    assert [del1["type"], del2["type"]] == ["second", "first"]
    assert del1["command"] == del2["command"] == "DEL"
    assert del2["conf"]["bridge"] == "cni0"
    assert del2["conf"]["prevResult"]["seenBy"] == ["second"]
    assert inv.cached("testnet", ATT) is None
    # DEL again (nothing cached any more) still runs and succeeds, with the config given.
    asyncio.run(inv.delete(changed, ATT))
    assert [c["conf"].get("bridge") for c in calls(record)[4:]] == ["other"]


def test_failed_add_reports_the_plugin_error_and_cleans_up(plugins: tuple[Path, Path], tmp_path: Path) -> None:
    bin_dir, record = plugins
    net = {**NET, "plugins": [NET["plugins"][0], {"type": "second", "fail": "ADD"}]}
    inv = CNIInvoker([str(bin_dir)], str(tmp_path / "cache"))
    with pytest.raises(CNIInvokeError) as e:
        asyncio.run(inv.add(net, ATT))
    assert e.value.code == 11 and e.value.msg.endswith("boom") and e.value.details == "on purpose"
    assert [(c["type"], c["command"]) for c in calls(record)] == [
        ("first", "ADD"), ("second", "ADD"), ("second", "DEL"), ("first", "DEL")]
    assert inv.cached("testnet", ATT) is None


def test_missing_plugin_is_a_clear_error(tmp_path: Path) -> None:
    inv = CNIInvoker([str(tmp_path)], str(tmp_path / "cache"))
    with pytest.raises(CNIInvokeError, match="failed to find plugin 'first'"):
        asyncio.run(inv.add(NET, ATT))


def test_load_network_picks_the_first_conflist(tmp_path: Path) -> None:
    (tmp_path / "20-b.conflist").write_text(json.dumps({**NET, "name": "b"}))
    (tmp_path / "10-a.conflist").write_text(json.dumps({**NET, "name": "a"}))
    (tmp_path / "05-single.conf").write_text(json.dumps({"cniVersion": "0.4.0", "name": "s", "type": "bridge"}))
    (tmp_path / "00-broken.conflist").write_text("{not json")
    assert load_network(str(tmp_path))["name"] == "a"  # type: ignore[index]
    for f in tmp_path.glob("*.conflist"):
        f.unlink()
    single = load_network(str(tmp_path))
    assert single == {"cniVersion": "0.4.0", "name": "s", "plugins": [{"cniVersion": "0.4.0", "name": "s",
                                                                       "type": "bridge"}]}
    assert load_network(str(tmp_path / "missing")) is None


def test_plugin_config_only_passes_declared_capabilities() -> None:
    conf = plugin_config(NET, NET["plugins"][0], None, {"portMappings": [1]})
    assert "runtimeConfig" not in conf and "prevResult" not in conf


def test_result_ips_old_and_new_formats() -> None:
    assert result_ips({"ips": [{"address": "fd00::5/64"}, {"address": "10.0.0.5/24"}]}) == ["10.0.0.5", "fd00::5"]
    assert result_ips({"ip4": {"ip": "10.0.0.6/24"}}) == ["10.0.0.6"]
