"""Test harness for Moat's integration tests (Python standard library only).

- MoatServer: writes a throwaway TOML config and spool directory, starts `moat serve --config`
  on a free loopback port, waits for "event=ready", and stops it by PID (SIGTERM, then SIGKILL).
  Its log (stderr, key=value lines) is kept in a file for assertions.
- SmtpClient: a raw SMTP client that sends arbitrary bytes and reads whole (multi-line) replies
  with a timeout. It checks the reply syntax of RFC 5321 §4.2 on everything it reads.
- Queue-file helpers: read a spooled message back (message = bytes [0, trailer offset)).
- MoatTestCase: unittest.TestCase that owns a temp dir and the servers started in it, and
  prints every server log when a test fails.
"""

import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import unittest
from dataclasses import dataclass, field

CRLF = b"\r\n"
HOSTNAME = "mx.test"        # server.hostname in every config the harness writes
LOCAL_DOMAIN = "example.test"  # relay.domains
QID_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
QID_RE = re.compile(r"^[%s]{14}$" % QID_ALPHABET)
SPOOL_STATES = ("incoming", "active", "deferred", "hold", "quarantine", "corrupt")

READY_TIMEOUT = 10.0
REPLY_TIMEOUT = 5.0


def moat_bin():
    path = os.environ.get("MOAT_BIN")
    if not path:
        here = os.path.dirname(os.path.abspath(__file__))
        path = os.path.join(here, "..", "..", "build", "moat")
    path = os.path.abspath(path)
    if not os.access(path, os.X_OK):
        raise RuntimeError(f"moat binary not found at {path}; set MOAT_BIN")
    return path


def free_port(host="127.0.0.1"):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------------------
# TOML writing (just what Moat's config needs)

def toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, str):
        out = '"'
        for ch in v:
            if ch in '"\\':
                out += "\\" + ch
            elif ord(ch) < 0x20 or ord(ch) == 0x7F:
                out += "\\u%04X" % ord(ch)
            else:
                out += ch
        return out + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"cannot write {v!r} as TOML")


def toml_table(name, values):
    lines = [f"[{name}]"]
    for k, v in values.items():
        if v is None:
            continue
        lines.append(f"{k} = {toml_value(v)}")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------
# The server

class MoatServer:
    """One `moat serve` process with its own config, spool and log, under `workdir`."""

    def __init__(self, workdir, server=None, tls=None, relay=None, extra="", name="moat",
                 preexec_fn=None, delivery=None, routes=None, listener=None):
        self.workdir = workdir
        self.name = name
        self.spool_dir = os.path.join(workdir, name + "-spool")
        self.config_path = os.path.join(workdir, name + ".toml")
        self.log_path = os.path.join(workdir, name + ".log")
        self.port = None
        self.server_overrides = dict(server or {})
        self.tls = dict(tls or {})
        self.relay = {"domains": [LOCAL_DOMAIN]}
        self.relay.update(relay or {})
        self.extra = extra
        # Front-end tests read accepted mail in active/: delivery stays paused unless a test
        # gives [delivery] settings (and [[route]]s) of its own.
        self.delivery = {"enabled": False} if delivery is None else dict(delivery)
        self.routes = list(routes or [])
        # Extra keys of the listen entry, e.g. {"mode": "proxy", "proxy_timeout": 2}.
        self.listener = dict(listener or {})
        self.preexec_fn = preexec_fn  # run in the child before exec (e.g. setrlimit)
        self.proc = None
        self._log_start = 0
        self.clients = []

    # --- config -------------------------------------------------------------------------------
    def config_text(self):
        server = {
            "hostname": HOSTNAME,
            "listen": [dict(address=f"127.0.0.1:{self.port}", **self.listener)
                       if self.listener else f"127.0.0.1:{self.port}"],
            "spool_dir": self.spool_dir,
            # Small, fast defaults for tests; a test overrides what it exercises.
            "command_timeout": 30,
            "data_timeout": 30,
        }
        server.update(self.server_overrides)
        text = toml_table("server", server)
        if self.tls:
            text += "\n" + toml_table("tls", self.tls)
        text += "\n" + toml_table("relay", self.relay)
        text += "\n" + toml_table("delivery", self.delivery)
        for route in self.routes:
            text += "\n" + toml_table("route", route).replace("[route]", "[[route]]", 1)
        if self.extra:
            text += "\n" + self.extra
        return text

    def write_config(self):
        with open(self.config_path, "w", encoding="utf-8") as f:
            f.write(self.config_text())

    # --- process ------------------------------------------------------------------------------
    def start(self, timeout=READY_TIMEOUT, keep_port=False):
        """Starts moat and waits for event=ready. Retries with a new port if the bind fails."""
        for attempt in range(5):
            if not (keep_port and self.port):
                self.port = free_port()
            self.write_config()
            with open(self.log_path, "ab") as log:
                self._log_start = log.tell()
                log.write(f"--- harness: starting moat on port {self.port} ---\n".encode())
                log.flush()
                self.proc = subprocess.Popen(
                    [moat_bin(), "serve", "--config", self.config_path],
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
                    cwd=self.workdir, preexec_fn=self.preexec_fn)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if "event=ready" in self.log_since_start():
                    return self
                if self.proc.poll() is not None:
                    break
                time.sleep(0.01)
            rc = self.proc.poll()
            if rc is None:
                self.kill()
                raise AssertionError(f"moat did not print event=ready within {timeout}s")
            self.proc = None
            in_use = re.search(r"error=.*listen .*in use", self.log_since_start())
            if in_use and not keep_port and attempt < 4:
                continue  # port taken between free_port() and bind: try another
            raise AssertionError(f"moat exited with {rc} before ready:\n{self.log_since_start()}")
        raise AssertionError("moat could not bind a port")

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def close_clients(self):
        for c in self.clients:
            c.close()
        self.clients = []

    def wait_sessions_ended(self, timeout=2.0):
        """Waits until every logged event=connect has its event=disconnect."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            log = self.log_since_start()
            if log.count("event=connect ") <= log.count("event=disconnect "):
                return True
            time.sleep(0.01)
        return False

    def stop(self, term_timeout=5.0):
        """SIGTERM, then SIGKILL after term_timeout. Returns the exit status."""
        if not self.proc:
            return None
        self.close_clients()
        if self.proc.poll() is None:
            self.wait_sessions_ended()
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(term_timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        rc = self.proc.wait()
        self.proc = None
        return rc

    def kill(self):
        """SIGKILL (kill -9) by PID, and reap."""
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        if self.proc:
            self.proc.wait()
        rc = self.proc.returncode if self.proc else None
        self.proc = None
        return rc

    # --- log ----------------------------------------------------------------------------------
    def cpu_seconds(self):
        """User + system CPU time the process has used so far."""
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def log(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def log_since_start(self):
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._log_start)
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def wait_log(self, pattern, timeout=3.0):
        """Waits for a regex to match the log since the last start; returns the match."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            m = rx.search(self.log_since_start())
            if m or time.monotonic() >= deadline:
                return m
            time.sleep(0.01)

    # --- clients and spool --------------------------------------------------------------------
    def connect(self, timeout=REPLY_TIMEOUT, source=None, greet=True):
        c = SmtpClient(self.port, timeout=timeout, source=source)
        self.clients.append(c)
        if greet:
            r = c.reply()
            if r.code != 220:
                raise AssertionError(f"expected a 220 greeting, got {r}")
            c.greeting = r
        return c

    def spool_path(self, state, qid=None):
        p = os.path.join(self.spool_dir, state)
        return os.path.join(p, qid) if qid else p

    def spool_list(self, state):
        try:
            return sorted(os.listdir(self.spool_path(state)))
        except FileNotFoundError:
            return []

    def read_queued(self, qid, state="active"):
        return parse_queue_file(read_bytes(self.spool_path(state, qid)))

    def all_queued(self, state="active"):
        return [self.read_queued(q, state) for q in self.spool_list(state)]


# ------------------------------------------------------------------------------------------------
# SMTP client

class ConnectionClosed(AssertionError):
    pass


class ReplyTimeout(AssertionError):
    pass


@dataclass
class Reply:
    code: int
    lines: list          # text after "NNN-" / "NNN " on each line (str)
    raw: bytes = b""

    @property
    def text(self):
        return self.lines[-1] if self.lines else ""

    @property
    def enhanced(self):
        """RFC 3463 status code at the start of the first line, or None."""
        m = re.match(r"^([245])\.(\d{1,3})\.(\d{1,3})(?: |$)", self.lines[0] if self.lines else "")
        return "%s.%s.%s" % m.groups() if m else None

    @property
    def first_text(self):
        """First line's text without the enhanced code."""
        t = self.lines[0] if self.lines else ""
        return re.sub(r"^[245]\.\d{1,3}\.\d{1,3} ?", "", t)

    def __str__(self):
        return self.raw.decode("utf-8", "replace").rstrip("\r\n")


REPLY_LINE_RE = re.compile(rb"^([2-5][0-9][0-9])([ -])(.*)$", re.S)


class SmtpClient:
    def __init__(self, port, host="127.0.0.1", timeout=REPLY_TIMEOUT, source=None):
        self.timeout = timeout
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if source:
            self.sock.bind((source, 0))
        self.sock.settimeout(timeout)
        self.sock.connect((host, port))
        self.buf = b""
        self.eof = False
        self.greeting = None

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- writing ------------------------------------------------------------------------------
    def send(self, data):
        if isinstance(data, str):
            data = data.encode("utf-8")
        self.sock.sendall(data)

    def line(self, text):
        if isinstance(text, str):
            text = text.encode("utf-8")
        self.send(text + CRLF)

    # --- reading ------------------------------------------------------------------------------
    def _recv(self, deadline):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise socket.timeout()
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            data = b""
        if not data:
            self.eof = True
        return data

    def _read_line(self, deadline):
        while b"\r\n" not in self.buf:
            if self.eof:
                raise ConnectionClosed(f"connection closed; unterminated data {self.buf!r}")
            try:
                data = self._recv(deadline)
            except socket.timeout:
                raise ReplyTimeout(f"no complete reply line in time; have {self.buf!r}") from None
            self.buf += data
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def reply(self, timeout=None):
        """Reads one complete reply (all lines of a multi-line reply)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        code = None
        lines = []
        raw = b""
        while True:
            line = self._read_line(deadline)
            raw += line + b"\r\n"
            m = REPLY_LINE_RE.match(line)
            if not m:
                raise AssertionError(f"malformed reply line {line!r} (RFC 5321 4.2)")
            c = int(m.group(1))
            if code is not None and c != code:
                raise AssertionError(f"reply code changed inside a multi-line reply: {raw!r}")
            code = c
            if b"\r" in m.group(3) or b"\n" in m.group(3) or b"\0" in m.group(3):
                raise AssertionError(f"control character in reply: {line!r}")
            lines.append(m.group(3).decode("utf-8", "replace"))
            if m.group(2) == b" ":
                return Reply(code, lines, raw)

    def replies(self, n, timeout=None):
        return [self.reply(timeout) for _ in range(n)]

    def cmd(self, text, timeout=None):
        self.line(text)
        return self.reply(timeout)

    def read_until_closed(self, timeout=None):
        """Reads replies until the server closes the connection. Returns the replies; raises
        ReplyTimeout if the connection stays open."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        out = []
        while True:
            try:
                out.append(self.reply(timeout=max(0.0, deadline - time.monotonic())))
            except ConnectionClosed:
                if self.buf:
                    raise AssertionError(f"partial reply before close: {self.buf!r}")
                return out

    def pending(self, wait=0.3):
        """Returns whatever arrives within `wait` seconds (without waiting for CRLF)."""
        deadline = time.monotonic() + wait
        while not self.eof:
            try:
                data = self._recv(deadline)
            except (socket.timeout, ssl.SSLError):
                break
            self.buf += data
        return self.buf

    def is_closed(self, wait=0.5):
        """True if the server closed the connection within `wait` (and sent nothing more)."""
        self.pending(wait)
        return self.eof and not self.buf

    # --- TLS ----------------------------------------------------------------------------------
    def starttls(self, context, server_hostname=HOSTNAME):
        """Wraps the socket after a 220 to STARTTLS (the caller sends the command)."""
        if self.buf:
            raise AssertionError(f"data after the 220 to STARTTLS, before TLS: {self.buf!r}")
        self.sock.settimeout(self.timeout)
        self.sock = context.wrap_socket(self.sock, server_hostname=server_hostname)
        return self.sock

    # --- conveniences -------------------------------------------------------------------------
    def ehlo(self, name="client.example"):
        r = self.cmd(f"EHLO {name}")
        if r.code != 250:
            raise AssertionError(f"EHLO refused: {r}")
        return r

    def extensions(self, ehlo_reply):
        """The EHLO keywords (upper case) -> parameter text, from a 250 reply."""
        out = {}
        for line in ehlo_reply.lines[1:]:
            parts = line.split(" ", 1)
            out[parts[0].upper()] = parts[1] if len(parts) > 1 else ""
        return out


# ------------------------------------------------------------------------------------------------
# Queue files (gateway/spool/spool.hpp)

TRAILER_PREFIX = b"moat-trailer "
TRAILER_LEN = len(TRAILER_PREFIX) + 20 + 1  # 34


@dataclass
class QueueFile:
    message: bytes
    envelope_text: bytes
    fields: dict = field(default_factory=dict)     # single-valued keys -> str
    recipients: list = field(default_factory=list)  # (address, notify, orcpt)
    headers: list = field(default_factory=list)     # (name, value)

    @property
    def qid(self):
        return self.fields.get("qid")

    @property
    def sender(self):
        return self.fields.get("from")

    def split_received(self):
        """(Moat's Received header incl. its CRLF, the rest of the message)."""
        return split_first_header(self.message)


def read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def unescape(s):
    out = bytearray()
    i = 0
    while i < len(s):
        if s[i:i + 1] == b"%":
            out.append(int(s[i + 1:i + 3], 16))
            i += 3
        else:
            out += s[i:i + 1]
            i += 1
    return bytes(out).decode("utf-8")


def parse_queue_file(data):
    if len(data) < TRAILER_LEN:
        raise AssertionError(f"queue file shorter than its trailer: {data!r}")
    trailer = data[-TRAILER_LEN:]
    m = re.fullmatch(rb"moat-trailer ([0-9]{20})\n", trailer)
    if not m:
        raise AssertionError(f"bad trailer {trailer!r}")
    offset = int(m.group(1))
    if offset > len(data) - TRAILER_LEN:
        raise AssertionError(f"trailer offset {offset} beyond the envelope")
    message, env = data[:offset], data[offset:-TRAILER_LEN]
    if not env.startswith(b"moat-envelope 1\n") or not env.endswith(b"\n"):
        raise AssertionError(f"bad envelope {env!r}")
    q = QueueFile(message=message, envelope_text=env)
    for line in env.split(b"\n")[1:-1]:
        f = [unescape(x) for x in line.split(b" ")]
        if f[0] == "rcpt":
            q.recipients.append(tuple(f[1:4]))
        elif f[0] == "header":
            q.headers.append(tuple(f[1:3]))
        else:
            if len(f) != 2:
                raise AssertionError(f"malformed envelope line {line!r}")
            if f[0] in q.fields:
                raise AssertionError(f"duplicate envelope key {f[0]}")
            q.fields[f[0]] = f[1]
    return q


def split_first_header(message):
    """Splits off the first header field (with its folded continuation lines)."""
    pos = 0
    while True:
        end = message.find(b"\r\n", pos)
        if end < 0:
            raise AssertionError("unterminated header")
        nxt = message[end + 2:end + 3]
        if nxt not in (b" ", b"\t"):
            return message[:end + 2], message[end + 2:]
        pos = end + 2


def has_bare_cr_or_lf(data):
    return re.search(rb"\r(?!\n)|(?<!\r)\n", data) is not None


# ------------------------------------------------------------------------------------------------
# TestCase

class MoatTestCase(unittest.TestCase):
    """Owns a temp dir and the servers started in it; prints their logs when a test fails."""

    keep_tmp = bool(os.environ.get("MOAT_KEEP_TMP"))

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="moat-it-")
        self.servers = []
        self.addCleanup(self._cleanup)

    def _cleanup(self):
        for s in self.servers:
            try:
                s.stop()
            except Exception as e:  # never leave a process behind
                print(f"harness: stopping {s.name}: {e}", file=sys.stderr)
                s.kill()
        self._logs = [(s.name, s.log()) for s in self.servers]
        if not self.keep_tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def run(self, result=None):
        if result is None:
            return super().run(result)
        before = len(result.failures) + len(result.errors)
        self._logs = []
        out = super().run(result)
        if len(result.failures) + len(result.errors) > before:
            for name, log in self._logs:
                sys.stderr.write(f"\n===== {self.id()}: log of {name} =====\n{log}"
                                 f"===== end of log =====\n")
            sys.stderr.flush()
        return out

    # --- helpers ------------------------------------------------------------------------------
    def start_moat(self, port=None, **kw):
        """Starts a server in this test's temp dir (on `port`, or a free one)."""
        s = MoatServer(self.tmp, name=kw.pop("name", f"moat{len(self.servers)}"), **kw)
        self.servers.append(s)
        s.port = port
        s.start(keep_port=port is not None)
        return s

    def assertReply(self, reply, code, enhanced=None, msg=None):
        """code: an int (exact) or a str like "5" or "55" (prefix)."""
        ok = (reply.code == code) if isinstance(code, int) else str(reply.code).startswith(code)
        self.assertTrue(ok, msg or f"expected {code}, got {reply}")
        if enhanced is not None:
            self.assertEqual(reply.enhanced, enhanced, msg or f"enhanced code in {reply}")
            # RFC 3463 §2: the class digit matches the reply code's first digit.
        if reply.enhanced is not None:
            self.assertEqual(reply.enhanced[0], str(reply.code)[0],
                             f"enhanced class does not match reply code: {reply}")

    def assertQueued(self, reply):
        """A 250 'queued as QID' reply; returns the QID."""
        self.assertReply(reply, 250, "2.0.0")
        m = re.search(r"queued as (\S+)$", reply.text)
        self.assertIsNotNone(m, f"no queue id in {reply}")
        qid = m.group(1)
        self.assertRegex(qid, QID_RE)
        return qid

    def assertSpoolEmpty(self, server, states=("incoming", "active", "quarantine")):
        for st in states:
            self.assertEqual(server.spool_list(st), [], f"{st}/ should be empty")

    def send_message(self, client, sender, rcpts, body, mail_params="", ehlo=True):
        """A plain transaction with DATA; `body` is sent as is (must end with CRLF.CRLF).
        Returns the final reply."""
        if ehlo:
            client.ehlo()
        self.assertReply(client.cmd(f"MAIL FROM:<{sender}>{mail_params}"), 250)
        for r in rcpts:
            self.assertReply(client.cmd(f"RCPT TO:<{r}>"), 250)
        self.assertReply(client.cmd("DATA"), 354)
        client.send(body)
        return client.reply()


def dot_stuff(content):
    """RFC 5321 §4.5.2: the client side of transparency, plus the terminator."""
    assert content.endswith(CRLF) or content == b""
    lines = content.split(CRLF)[:-1]
    out = b"".join((b"." + l if l.startswith(b".") else l) + CRLF for l in lines)
    return out + b".\r\n"
