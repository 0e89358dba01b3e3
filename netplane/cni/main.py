"""The `netplane-cni` executable: forward the call to the agent, or run it in-process.

A runtime execs this for every pod, so its import path is kept lean: only os,
sys and _socket until it knows it must do the work itself (then netplane.cni.plugin).
Where `netplane cni install` could compile it, the compiled launcher
(launcher.py) takes this module's place on the fast path and hands every other
case to `main()` here, with a note in NETPLANE_CNI_LAUNCHER. The fast path sends the
environment and stdin over a unix socket to `netplane cni serve` (later the node
agent), which runs the very same `plugin.dispatch` with warm netlink sockets.
The server declines calls from another network namespace (its "host" links
would not be the caller's) and calls whose CNI_NETNS it sees as another file
(a private mount namespace, as podman uses); then, as when no server listens,
the work happens here.

Wire format (request): b"NPCNI1\\n", then NUL-separated fields: plugin,
"netns=<dev>:<ino>" of the caller's netns, "nsfile=<dev>:<ino>" of CNI_NETNS,
one "KEY=VALUE" per environment variable, ended by an empty field; then stdin
until EOF. Response: b"<exit code>\\n" and the stdout bytes, or
b"DECLINE <reason>\\n" for "do it yourself".
"""

from __future__ import annotations

# The C module, not `socket`: the latter pulls in enum, selectors and io (~3 ms per pod).
import _socket
import os
import sys

DEFAULT_SOCKET = "/run/netplane/cni.sock"
MAGIC = b"NPCNI1\n"
CALL_TIMEOUT = 300.0  # an ADD may wait for the IPAM lock behind many others


def file_id(path: str) -> str:
    """'<dev>:<ino>' of a file, '-' if there is none: two views of one file compare equal."""
    try:
        st = os.stat(path) if path else None
    except OSError:
        st = None
    return f"{st.st_dev}:{st.st_ino}" if st is not None else "-"


def socket_path(env: dict[str, str], stdin: bytes) -> str:
    """NETPLANE_CNI_SOCKET (empty disables forwarding) > config "agentSocket" > the default."""
    if "NETPLANE_CNI_SOCKET" in env:
        return env["NETPLANE_CNI_SOCKET"]
    if b'"agentSocket"' in stdin:  # only then pay for the JSON parser
        import json

        try:
            value = json.loads(stdin).get("agentSocket")
        except (ValueError, AttributeError):
            value = None
        if isinstance(value, str):
            return value
    return DEFAULT_SOCKET


def encode_request(plugin: str, env: dict[str, str], stdin: bytes) -> bytes:
    fields = [plugin, f"netns={file_id('/proc/self/ns/net')}", f"nsfile={file_id(env.get('CNI_NETNS', ''))}"]
    fields.extend(f"{k}={v}" for k, v in env.items() if "\0" not in k and "\0" not in v)
    return MAGIC + "\0".join(fields).encode("utf-8", "surrogateescape") + b"\0\0" + stdin


def forward(path: str, plugin: str, env: dict[str, str], stdin: bytes) -> tuple[int, bytes] | None:
    """(exit code, stdout) from the server; None when nobody (suitable) answers."""
    if not path:
        return None
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        # A blocking connect waits for room in a busy server's backlog; one with a
        # timeout would fail at once with EAGAIN and wrongly fall back.
        try:
            sock.connect(path)
        except OSError:
            return None  # no socket, nobody listening, no permission: do it ourselves
        sock.settimeout(CALL_TIMEOUT)
        try:
            sock.sendall(encode_request(plugin, env, stdin))
            sock.shutdown(_socket.SHUT_WR)
            chunks = []
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        except OSError as e:
            return _try_again(env, stdin, f"lost the connection to {path}: {e}")
    finally:
        sock.close()
    data = b"".join(chunks)
    head, sep, body = data.partition(b"\n")
    if head.startswith(b"DECLINE"):
        return None
    if not sep or not head.isdigit():
        # The server took the call and died: the call's outcome is unknown, so do
        # not redo it here; the runtime retries (and DEL cleans up after it).
        return _try_again(env, stdin, f"incomplete answer from {path}")
    return int(head), body


def _try_again(env: dict[str, str], stdin: bytes, details: str) -> tuple[int, bytes]:
    from .errors import CODE_TRY_AGAIN, CNIError
    from .plugin import error_response

    resp = error_response(CNIError(CODE_TRY_AGAIN, "the CNI agent did not answer", details), stdin)
    return resp.exit_code, resp.stdout


LAUNCHER_REASON = "NETPLANE_CNI_LAUNCHER"  # set by the compiled launcher when it hands a call over (launcher.py)


def run(plugin: str, env: dict[str, str], stdin: bytes) -> tuple[int, bytes]:
    if env.get("CNI_COMMAND") == "VERSION":
        # Runtimes call VERSION around every ADD/DEL; its answer needs neither a server nor config.
        from .version import version_reply

        return 0, version_reply()
    # The launcher's note is for us alone: it must not reach the verbs or a delegated IPAM plugin.
    reason = env.pop(LAUNCHER_REASON, "")
    if reason.startswith("error:"):
        return _try_again(env, stdin, reason[len("error:"):])
    # "no-agent"/"declined": the launcher already asked the agent; anything else: ask it here.
    answer = None if reason in ("no-agent", "declined") else forward(socket_path(env, stdin), plugin, env, stdin)
    if answer is not None:
        return answer
    from .plugin import dispatch

    resp = dispatch(env, stdin, plugin=plugin)
    return resp.exit_code, resp.stdout


def main(plugin: str = "bridge") -> int:
    env = dict(os.environ)
    stdin = b"" if env.get("CNI_COMMAND") == "VERSION" and sys.stdin.isatty() else sys.stdin.buffer.read()
    code, out = run(plugin, env, stdin)
    sys.stdout.buffer.write(out)
    sys.stdout.buffer.flush()
    return code


def main_ipam() -> int:
    return main("ipam")


if __name__ == "__main__":
    sys.exit(main())
