"""Kubeconfig loading: precedence, contexts, tokens, CA and client certificate data, clear errors."""

from __future__ import annotations

import asyncio
import base64
import ssl
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from netplane.api.resources import resolve_name
from netplane.client.kubeconfig import DEFAULT_SERVER, ClusterConfig, KubeconfigError, load_config
from netplane.client.rest import APIClient, APIConnectionError

CERTS = Path(__file__).parent / "certs"


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def write_kubeconfig(tmp_path: Path, doc: dict[str, Any], name: str = "config") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc))
    return path


def two_contexts() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "prod",
        "clusters": [
            {"name": "lab", "cluster": {"server": "http://127.0.0.1:7000"}},
            {"name": "prod", "cluster": {"server": "https://10.0.0.1:6443",
                                         "certificate-authority-data": b64(CERTS / "ca.crt")}},
        ],
        "users": [
            {"name": "admin", "user": {"token": "s3cret"}},
            {"name": "dev", "user": {"token": "devtoken"}},
        ],
        "contexts": [
            {"name": "lab", "context": {"cluster": "lab", "user": "dev"}},
            {"name": "prod", "context": {"cluster": "prod", "user": "admin", "namespace": "web"}},
        ],
    }


@pytest.fixture(autouse=True)
def no_ambient_kubeconfig(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Never read the machine's own ~/.kube/config or $KUBECONFIG.
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def test_nothing_configured_gives_the_local_default() -> None:
    assert load_config() == ClusterConfig(server=DEFAULT_SERVER)


def test_server_flag_alone_needs_no_kubeconfig() -> None:
    cfg = load_config(server="http://127.0.0.1:8080/")
    assert cfg.server == "http://127.0.0.1:8080"
    assert cfg.token is None and cfg.namespace == "default"


def test_server_without_scheme_is_plain_http() -> None:
    assert load_config(server="127.0.0.1:8080").server == "http://127.0.0.1:8080"


def test_current_context_selects_cluster_user_namespace_and_ca(tmp_path: Path) -> None:
    cfg = load_config(kubeconfig=str(write_kubeconfig(tmp_path, two_contexts())))
    assert cfg.server == "https://10.0.0.1:6443"
    assert cfg.token == "s3cret"
    assert cfg.namespace == "web"
    assert cfg.ca_data == (CERTS / "ca.crt").read_text()
    ctx = cfg.ssl_context()
    assert ctx is not None and ctx.verify_mode == ssl.CERT_REQUIRED
    subjects = [str(c["subject"]) for c in ctx.get_ca_certs()]
    assert any("netplane-test-ca" in s for s in subjects)


def test_server_flag_overrides_the_kubeconfig_cluster_but_keeps_credentials(tmp_path: Path) -> None:
    path = write_kubeconfig(tmp_path, two_contexts())
    cfg = load_config(server="https://127.0.0.1:9443", kubeconfig=str(path))
    assert cfg.server == "https://127.0.0.1:9443"
    assert cfg.token == "s3cret"


def test_kubeconfig_env_is_used_and_merged_first_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = {"current-context": "lab",
             "clusters": [{"name": "lab", "cluster": {"server": "http://127.0.0.1:7001"}}]}
    rest = two_contexts()
    p1 = write_kubeconfig(tmp_path, first, "a")
    p2 = write_kubeconfig(tmp_path, rest, "b")
    monkeypatch.setenv("KUBECONFIG", f"{p1}:{tmp_path / 'missing'}:{p2}")
    cfg = load_config()
    assert cfg.server == "http://127.0.0.1:7001"  # cluster 'lab' from the first file
    assert cfg.token == "devtoken"  # user and context from the second


def test_home_kube_config_is_the_fallback(tmp_path: Path) -> None:
    home = tmp_path / "home" / ".kube"
    home.mkdir(parents=True)
    doc = two_contexts()
    doc["current-context"] = "lab"
    write_kubeconfig(home, doc)
    assert load_config().server == "http://127.0.0.1:7000"


def test_token_file_is_resolved_relative_to_the_kubeconfig_and_reread(tmp_path: Path) -> None:
    doc = two_contexts()
    doc["users"][0]["user"] = {"tokenFile": "tok"}
    (tmp_path / "tok").write_text("first\n")
    cfg = load_config(kubeconfig=str(write_kubeconfig(tmp_path, doc)))
    assert cfg.token == "first"
    assert cfg.token_file == str(tmp_path / "tok")
    (tmp_path / "tok").write_text("rotated\n")
    assert cfg.current_token() == "rotated"


def test_client_certificate_data_loads_into_the_ssl_context(tmp_path: Path) -> None:
    doc = two_contexts()
    doc["users"][0]["user"] = {"client-certificate-data": b64(CERTS / "client.crt"),
                               "client-key-data": b64(CERTS / "client.key")}
    cfg = load_config(kubeconfig=str(write_kubeconfig(tmp_path, doc)))
    assert cfg.cert_data is not None and cfg.key_data is not None
    assert cfg.ssl_context() is not None  # load_cert_chain accepted the pair


def test_certificate_files_are_resolved_relative_to_the_kubeconfig(tmp_path: Path) -> None:
    for name in ("ca.crt", "client.crt", "client.key"):
        (tmp_path / name).write_bytes((CERTS / name).read_bytes())
    doc = two_contexts()
    doc["clusters"][1]["cluster"] = {"server": "https://10.0.0.1:6443", "certificate-authority": "ca.crt"}
    doc["users"][0]["user"] = {"client-certificate": "client.crt", "client-key": "client.key"}
    cfg = load_config(kubeconfig=str(write_kubeconfig(tmp_path, doc)))
    assert cfg.ca_file == str(tmp_path / "ca.crt")
    assert cfg.cert_file == str(tmp_path / "client.crt")
    assert cfg.ssl_context() is not None


def test_insecure_skip_tls_verify(tmp_path: Path) -> None:
    doc = two_contexts()
    doc["clusters"][1]["cluster"] = {"server": "https://10.0.0.1:6443", "insecure-skip-tls-verify": True}
    ctx = load_config(kubeconfig=str(write_kubeconfig(tmp_path, doc))).ssl_context()
    assert ctx is not None and ctx.verify_mode == ssl.CERT_NONE and not ctx.check_hostname


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update({"current-context": "nope"}), "no context named 'nope'"),
        (lambda d: d.pop("current-context"), "no current-context is set"),
        (lambda d: d["contexts"][1]["context"].update({"cluster": "gone"}), "no cluster named 'gone'"),
        (lambda d: d["clusters"][1]["cluster"].pop("server"), "cluster 'prod' has no server"),
        (lambda d: d["clusters"][1]["cluster"].update({"certificate-authority-data": "!!notbase64"}),
         "certificate-authority-data is not valid base64"),
        (lambda d: d["clusters"][1]["cluster"].update({"certificate-authority": "/nonexistent/ca.crt"}),
         "certificate-authority /nonexistent/ca.crt: no such file"),
        (lambda d: d["users"][0].update({"user": {"exec": {"command": "aws"}}}),
         "uses an exec credential plugin"),
        (lambda d: d["users"][0].update({"user": {"tokenFile": "/nonexistent/token"}}),
         "cannot read tokenFile /nonexistent/token"),
    ],
)
def test_broken_kubeconfigs_name_the_problem(tmp_path: Path, mutate: Any, message: str) -> None:
    doc = two_contexts()
    mutate(doc)
    path = write_kubeconfig(tmp_path, doc)
    with pytest.raises(KubeconfigError) as err:
        load_config(kubeconfig=str(path))
    assert message in str(err.value)
    assert "kubeconfig " in str(err.value)


def test_missing_and_unparsable_kubeconfig_files(tmp_path: Path) -> None:
    with pytest.raises(KubeconfigError, match=r"kubeconfig .*/absent: no such file"):
        load_config(kubeconfig=str(tmp_path / "absent"))
    bad = tmp_path / "bad"
    bad.write_text("clusters: [\n  - name: x\n  oops")
    with pytest.raises(KubeconfigError, match=r"kubeconfig .*/bad: invalid YAML: .* at line \d+, column \d+"):
        load_config(kubeconfig=str(bad))
    scalar = tmp_path / "scalar"
    scalar.write_text("just a string\n")
    with pytest.raises(KubeconfigError, match="expected a mapping"):
        load_config(kubeconfig=str(scalar))


def test_https_with_ca_data_and_token_against_a_tls_server(tmp_path: Path) -> None:
    """End to end: the CA from kubeconfig data verifies the server, the token reaches it."""
    seen: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization", ""))
        return web.json_response({"kind": "Namespace", "apiVersion": "v1", "metadata": {"name": "default"}})

    async def scenario() -> None:
        app = web.Application()
        app.router.add_get("/api/v1/namespaces/default", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_ctx.load_cert_chain(CERTS / "server.crt", CERTS / "server.key")
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ctx)
        await site.start()
        port = runner.addresses[0][1]
        try:
            doc = two_contexts()
            doc["clusters"][1]["cluster"]["server"] = f"https://127.0.0.1:{port}"
            cfg = load_config(kubeconfig=str(write_kubeconfig(tmp_path, doc)))
            info = resolve_name("ns")
            assert info is not None
            async with APIClient(cfg) as client:
                ns = await client.get(info, "default")
            assert ns["metadata"]["name"] == "default"
            # Without the CA the same server must be refused.
            async with APIClient(ClusterConfig(server=cfg.server)) as client:
                with pytest.raises(APIConnectionError, match="cannot reach the server"):
                    await client.get(info, "default")
        finally:
            await runner.cleanup()

    asyncio.run(asyncio.wait_for(scenario(), 20))
    assert seen == ["Bearer s3cret"]
