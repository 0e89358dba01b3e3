"""A tiny compiled launcher for the plugin executables: the fast path without a Python start-up.

A runtime execs the plugin for every ADD and DEL. With the agent listening, all
the executable does is forward env + stdin over a unix socket and print the
answer (main.py's `forward`), yet a Python interpreter costs ~9 ms of CPU to
start even with `-I -S` and nothing imported: more than the whole call costs
the reference Go plugin, and on a busy node (110 pods, parallel callers, two
cores) that start-up is most of the CPU spent. So `netplane cni install`
compiles this C program (about a millisecond to start) when a C compiler is
present; it speaks the same wire format as main.py, and whenever it cannot
answer by itself it execs the Python plugin with the stdin it consumed, so the
slow paths (no agent, a declined call, an agentSocket it cannot read with
certainty) stay in one Python implementation:

- VERSION: printed from a copy of version.version_reply() made at install time;
- socket: NETPLANE_CNI_SOCKET, else the config's top-level "agentSocket" (a
  small scanner accepts only an unescaped ASCII string in a well-formed object
  and leaves anything else to Python's json), else the default;
- no agent / DECLINE: exec Python with NETPLANE_CNI_LAUNCHER=no-agent|declined,
  which goes straight to the in-process work (no second forwarding attempt);
- lost connection / incomplete answer: exec Python with
  NETPLANE_CNI_LAUNCHER=error:<details>, which prints the spec's "try again
  later" error (code 11) in the config's cniVersion.

Without a compiler, install writes the Python script instead (see install.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

from .main import CALL_TIMEOUT, DEFAULT_SOCKET, MAGIC
from .version import version_reply

ENV_REASON = "NETPLANE_CNI_LAUNCHER"

SOURCE = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>
#include "launcher_config.h"

extern char **environ;

struct buf { char *p; size_t n, cap; };

static void put(struct buf *b, const void *data, size_t n) {
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap : 8192;
        while (cap < b->n + n) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) _exit(70);
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, data, n);
    b->n += n;
}

static void puts_buf(struct buf *b, const char *s) { put(b, s, strlen(s)); }

static int read_all(int fd, struct buf *b) {
    char chunk[65536];
    for (;;) {
        ssize_t r = read(fd, chunk, sizeof chunk);
        if (r == 0) return 0;
        if (r < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        put(b, chunk, (size_t)r);
    }
}

static int write_all(int fd, const char *p, size_t n) {
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* '<dev>:<ino>' of a file, '-' if there is none (main.py's file_id). */
static void file_id(const char *path, char *out, size_t outlen) {
    struct stat st;
    if (path && *path && stat(path, &st) == 0)
        snprintf(out, outlen, "%llu:%llu", (unsigned long long)st.st_dev, (unsigned long long)st.st_ino);
    else
        snprintf(out, outlen, "-");
}

/* Run the Python plugin on the stdin we consumed; never returns. */
static void python(const struct buf *in, const char *reason) {
    int fd = memfd_create("netplane-cni-stdin", 0);
    if (fd >= 0) {
        if (write_all(fd, in->p ? in->p : "", in->n) == 0 && lseek(fd, 0, SEEK_SET) == 0 && dup2(fd, 0) == 0) {
            if (fd != 0) close(fd);
        } else {
            fd = -1;
        }
    }
    if (fd < 0) {
        printf("{\"cniVersion\": \"%s\", \"code\": %d, \"msg\": \"cannot hand the call to the plugin\", "
               "\"details\": \"memfd: %s\"}\n", NP_CNI_VERSION, NP_CODE_INTERNAL, strerror(errno));
        exit(1);
    }
    setenv(NP_ENV_REASON, reason, 1);
    char *argv[] = {NP_PYTHON, "-IS", "-c", NP_FALLBACK_CODE, NULL};
    execv(NP_PYTHON, argv);
    printf("{\"cniVersion\": \"%s\", \"code\": %d, \"msg\": \"cannot run the netplane plugin\", "
           "\"details\": \"exec %s: %s\"}\n", NP_CNI_VERSION, NP_CODE_INTERNAL, NP_PYTHON, strerror(errno));
    exit(1);
}

static const char *skip_ws(const char *p, const char *end) {
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) p++;
    return p;
}

/* Past a JSON string starting at its quote; NULL if malformed. *plain: no escapes and ASCII only. */
static const char *skip_string(const char *p, const char *end, int *plain) {
    *plain = 1;
    for (p++; p < end; p++) {
        unsigned char c = (unsigned char)*p;
        if (c == '"') return p + 1;
        if (c < 0x20) return NULL;
        if (c == '\\' || c >= 0x80) *plain = 0;
        if (c == '\\') p++;
    }
    return NULL;
}

static int is_delim(char c) {
    return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == ',' || c == ':' || c == '[' || c == ']'
        || c == '{' || c == '}' || c == '"';
}

/* Past one JSON value (structure only; scalars are not validated); NULL if malformed. */
static const char *skip_value(const char *p, const char *end) {
    int depth = 0, plain;
    do {
        p = skip_ws(p, end);
        if (p >= end) return NULL;
        if (*p == '"') {
            p = skip_string(p, end, &plain);
            if (!p) return NULL;
        } else if (*p == '{' || *p == '[') {
            depth++;
            p++;
        } else if (*p == '}' || *p == ']') {
            if (depth == 0) return NULL;
            depth--;
            p++;
        } else if (*p == ',' || *p == ':') {
            if (depth == 0) return NULL;
            p++;
        } else {
            const char *q = p;
            while (q < end && !is_delim(*q)) q++;
            p = q;
        }
    } while (depth > 0);
    return p;
}

/* The config's top-level "agentSocket" as json.loads(stdin).get() sees it:
   1 found (copied to out), 0 absent or not a string, -1 cannot tell here (let Python decide). */
static int agent_socket(const char *buf, size_t n, char *out, size_t outlen) {
    static const char key[] = "agentSocket";
    const char *p = buf, *end = buf + n;
    int plain, result = 0;
    if (!buf || !memmem(buf, n, "\"agentSocket\"", sizeof key + 1)) return 0;
    if (memchr(buf, 0, n)) return -1;
    p = skip_ws(p, end);
    if (p >= end || *p != '{') return -1;
    p++;
    for (;;) {
        p = skip_ws(p, end);
        if (p >= end || *p != '"') return -1;
        const char *k = p + 1;
        p = skip_string(p, end, &plain);
        if (!p || !plain) return -1;
        int match = (size_t)(p - 1 - k) == sizeof key - 1 && memcmp(k, key, sizeof key - 1) == 0;
        p = skip_ws(p, end);
        if (p >= end || *p != ':') return -1;
        p = skip_ws(p + 1, end);
        if (match && p < end && *p == '"') {
            const char *v = p + 1;
            p = skip_string(p, end, &plain);
            if (!p || !plain || (size_t)(p - 1 - v) >= outlen) return -1;
            memcpy(out, v, (size_t)(p - 1 - v));
            out[p - 1 - v] = 0;
            result = 1;
        } else {
            p = skip_value(p, end);
            if (!p) return -1;
            if (match) result = 0;
        }
        p = skip_ws(p, end);
        if (p < end && *p == ',') {
            p++;
            continue;
        }
        if (p < end && *p == '}') return skip_ws(p + 1, end) == end ? result : -1;
        return -1;
    }
}

static int seen_before(char **env, size_t upto, const char *entry) {
    size_t klen = (size_t)(strchr(entry, '=') - entry);
    for (size_t i = 0; i < upto; i++)
        if (strchr(env[i], '=') && strncmp(env[i], entry, klen) == 0 && env[i][klen] == '=') return 1;
    return 0;
}

int main(void) {
    struct buf in = {0}, req = {0}, resp = {0};
    const char *cmd = getenv("CNI_COMMAND");
    int version = cmd && strcmp(cmd, "VERSION") == 0;
    if (!(version && isatty(0)) && read_all(0, &in) < 0) python(&in, "stdin");
    if (version) return write_all(1, NP_VERSION_REPLY, sizeof NP_VERSION_REPLY - 1) == 0 ? 0 : 1;

    char found[sizeof(((struct sockaddr_un *)0)->sun_path)];
    const char *path = getenv("NETPLANE_CNI_SOCKET");
    if (!path) {
        int r = agent_socket(in.p, in.n, found, sizeof found);
        if (r < 0) python(&in, "config");
        path = r == 1 ? found : NP_DEFAULT_SOCKET;
    }
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (!*path || strlen(path) >= sizeof addr.sun_path) python(&in, "no-agent");
    memcpy(addr.sun_path, path, strlen(path) + 1);

    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0) python(&in, "no-agent");
    /* A blocking connect waits for room in a busy server's backlog (see main.py). */
    int rc;
    do rc = connect(s, (struct sockaddr *)&addr, sizeof addr); while (rc < 0 && errno == EINTR);
    if (rc < 0) {
        close(s);
        python(&in, "no-agent");
    }
    struct timeval tv = {.tv_sec = NP_CALL_TIMEOUT};
    setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);

    char id[64];
    put(&req, NP_MAGIC, sizeof NP_MAGIC - 1);
    puts_buf(&req, NP_PLUGIN);
    file_id("/proc/self/ns/net", id, sizeof id);
    put(&req, "", 1);
    puts_buf(&req, "netns=");
    puts_buf(&req, id);
    put(&req, "", 1);
    file_id(getenv("CNI_NETNS"), id, sizeof id);
    puts_buf(&req, "nsfile=");
    puts_buf(&req, id);
    size_t count = 0;
    while (environ[count]) count++;
    for (size_t i = 0; i < count; i++) {
        if (!strchr(environ[i], '=') || seen_before(environ, i, environ[i])) continue;
        put(&req, "", 1);
        puts_buf(&req, environ[i]);
    }
    put(&req, "\0\0", 2);
    if (in.n) put(&req, in.p, in.n);

    char why[512];
    const char *at = req.p;
    size_t left = req.n;
    while (left > 0) {
        ssize_t w = send(s, at, left, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR) continue;
            snprintf(why, sizeof why, "error:lost the connection to %s: %s", path, strerror(errno));
            close(s);
            python(&in, why);
        }
        at += w;
        left -= (size_t)w;
    }
    shutdown(s, SHUT_WR);
    if (read_all(s, &resp) < 0) {
        snprintf(why, sizeof why, "error:lost the connection to %s: %s", path, strerror(errno));
        close(s);
        python(&in, why);
    }
    close(s);

    if (resp.n >= 7 && memcmp(resp.p, "DECLINE", 7) == 0) python(&in, "declined");
    char *nl = resp.n ? memchr(resp.p, '\n', resp.n) : NULL;
    int code = 0;
    int digits = nl != NULL && nl > resp.p && nl - resp.p < 10;
    for (char *c = resp.p; digits && c < nl; c++) {
        if (*c < '0' || *c > '9') digits = 0;
        else code = code * 10 + (*c - '0');
    }
    if (!digits) {
        /* The server took the call and died: its outcome is unknown, so do not redo it (main.py). */
        snprintf(why, sizeof why, "error:incomplete answer from %s", path);
        python(&in, why);
    }
    nl++;
    if (write_all(1, nl, resp.n - (size_t)(nl - resp.p)) < 0) return 1;
    return code;
}
"""


def c_string(data: bytes | str) -> str:
    """A C string literal holding exactly these bytes (octal escapes: they never run into what follows)."""
    raw = data.encode("utf-8", "surrogateescape") if isinstance(data, str) else data
    out = ['"']
    for b in raw:
        ch = chr(b)
        if 0x20 <= b < 0x7F and ch not in '"\\?':
            out.append(ch)
        else:
            out.append(f"\\{b:03o}")
    out.append('"')
    return "".join(out)


def config_header(plugin: str, python: str, paths: list[str], default_socket: str = DEFAULT_SOCKET) -> str:
    from .errors import CODE_INTERNAL
    from .version import CURRENT

    fallback = (f"import sys; sys.path[:0] = {paths!r}; from netplane.cni.main import main; "
                f"sys.exit(main({plugin!r}))")
    return "\n".join([
        f"#define NP_PLUGIN {c_string(plugin)}",
        f"#define NP_PYTHON {c_string(python)}",
        f"#define NP_FALLBACK_CODE {c_string(fallback)}",
        f"#define NP_DEFAULT_SOCKET {c_string(default_socket)}",
        f"#define NP_MAGIC {c_string(MAGIC)}",
        f"#define NP_VERSION_REPLY {c_string(version_reply())}",
        f"#define NP_ENV_REASON {c_string(ENV_REASON)}",
        f"#define NP_CNI_VERSION {c_string(CURRENT)}",
        f"#define NP_CODE_INTERNAL {CODE_INTERNAL}",
        f"#define NP_CALL_TIMEOUT {int(CALL_TIMEOUT)}",
        "",
    ])


def compiler() -> str | None:
    cc = os.environ.get("CC") or "cc"
    return shutil.which(cc) or shutil.which("gcc")


def build(out: str, plugin: str, python: str, paths: list[str], default_socket: str = DEFAULT_SOCKET) -> str | None:
    """Compile the launcher to `out`; None on success, else why not (the caller installs the script).

    `default_socket` must match main.DEFAULT_SOCKET, which the Python fallback uses; tests change both.
    """
    cc = compiler()
    if cc is None:
        return "no C compiler"
    with tempfile.TemporaryDirectory(prefix="netplane-launcher-") as tmp:
        src = os.path.join(tmp, "launcher.c")
        with open(src, "w", encoding="ascii") as f:
            f.write(SOURCE)
        with open(os.path.join(tmp, "launcher_config.h"), "w", encoding="ascii") as f:
            f.write(config_header(plugin, python, paths, default_socket))
        errors = []
        # Static first: no dynamic loader work at every exec (~0.5 ms); dynamic if libc.a is missing.
        for extra in (["-static"], []):
            cmd = [cc, "-std=gnu11", "-O2", "-Wall", "-Werror", *extra, "-o", out, src]
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
            except (OSError, subprocess.TimeoutExpired) as e:
                errors.append(str(e))
                continue
            if proc.returncode == 0:
                return None
            errors.append(proc.stderr.strip()[-500:])
        return "; ".join(errors)
