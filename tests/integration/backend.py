"""Real SMTP backends for Moat's delivery tests (Python standard library only).

Both backends listen on 127.0.0.1 only, live in a throwaway directory of their own, and are
started and stopped by the test, by PID. Neither ever touches a system-wide Postfix.

- PostfixBackend: a private Postfix instance (Debian package `postfix`) with its own
  config_directory, queue_directory, data_directory and maillog_file under a temp dir. Its
  smtpd listens on a free loopback port; mail for the virtual domains (default example.test)
  is delivered by virtual(8) into one Maildir per address under the temp dir. Switches:
  unknown users refused at RCPT (550 5.1.1), CHUNKING/PIPELINING/DSN/... offered or not,
  SMTPUTF8, STARTTLS with a certificate made at start by the openssl CLI (optionally
  required), and per-recipient 4xx/5xx replies via check_recipient_access.

      pf = PostfixBackend(chunking=False, tls=True).start()
      ...                                   # relay mail to 127.0.0.1:pf.port
      d = pf.wait_for(1)[0]                 # Delivery objects, in arrival order
      assert d.content == sent_bytes        # message without Postfix's own added headers
      assert d.return_path == "sender@example.org"
      assert "bdat" not in pf.sessions()[-1]
      pf.stop()

- SinkBackend: Postfix's smtp-sink(1) test server: fast, dumb, optionally dumps every
  transaction (envelope + message) to a file, and can reply 4xx/5xx to or drop any command.

      sink = SinkBackend(hard_reject=["RCPT"]).start()
      ...
      sink.stop()

Both are context managers (`with PostfixBackend() as pf:`). `.stop()` (safe to call twice)
stops the processes and keeps the temp dir, so that `.start()` again brings the backend back
on the same port with its mail and log; `.cleanup()` stops and removes the temp dir
(kept if MOAT_KEEP_TMP is set). Postfix needs root (its master starts as root); use
postfix_available() / smtp_sink_available() to skip tests.
"""

import grp
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field

POSTFIX = shutil.which("postfix") or ("/usr/sbin/postfix" if os.path.exists("/usr/sbin/postfix")
                                      else None)
SMTP_SINK = shutil.which("smtp-sink") or ("/usr/sbin/smtp-sink"
                                          if os.path.exists("/usr/sbin/smtp-sink") else None)
OPENSSL = shutil.which("openssl")

LOOPBACK = "127.0.0.1"
BACKEND_HOSTNAME = "backend.test"      # Postfix's myhostname: greeting, EHLO, Received "by"
BACKEND_DOMAIN = "example.test"        # the virtual mailbox domain (harness.LOCAL_DOMAIN)
DEFAULT_USERS = ("user@example.test", "user2@example.test", "user3@example.test",
                 "postmaster@example.test")
# check_recipient_access entries that every PostfixBackend has unless told otherwise.
DEFAULT_RECIPIENT_ACCESS = {
    "fail5@example.test": "550 5.1.1 no such user",
    "fail4@example.test": "450 4.2.0 try later",
}
START_TIMEOUT = 10.0


def postfix_available():
    """True if Postfix is installed and we are root (the Postfix master must start as root)."""
    return bool(POSTFIX) and os.geteuid() == 0 and _user_exists("postfix")


def smtp_sink_available():
    return bool(SMTP_SINK)


def _user_exists(name):
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def free_port(host=LOOPBACK):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _listening(host, port):
    """True if something listens on host:port (IPv4 TCP), read from /proc/net/tcp, so that
    checking does not open an SMTP session (which the backend would log)."""
    want = "%s:%04X" % ("".join("%02X" % int(b) for b in reversed(host.split("."))), port)
    try:
        with open("/proc/net/tcp") as f:
            next(f)
            for line in f:
                parts = line.split()
                if parts[1] == want and parts[3] == "0A":
                    return True
    except OSError:
        pass
    return False


def _port_free(host, port):
    """True if we can bind host:port (with SO_REUSEADDR, as the Postfix master does)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


def _wait_port(host, port, deadline, alive=lambda: True):
    """Waits until host:port is in LISTEN state. False on deadline or if not alive()."""
    while time.monotonic() < deadline:
        if not alive():
            return False
        if _listening(host, port):
            return True
        time.sleep(0.005)
    return False


def _pid_alive(pid):
    """True if pid exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def _proc_cwd(pid):
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return None


def _proc_pgid(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[2])
    except (OSError, IndexError, ValueError):
        return None


def make_self_signed_cert(directory, hostname=BACKEND_HOSTNAME, name="backend",
                          ip=LOOPBACK):
    """A P-256 self-signed certificate for `hostname` (CN, and subjectAltName DNS:hostname
    plus IP:ip unless ip is None), made with the openssl CLI. Returns (cert_path, key_path);
    the cert is also its own CA file."""
    san = f"DNS:{hostname}" + (f",IP:{ip}" if ip else "")
    if not OPENSSL:
        raise RuntimeError("openssl CLI not found")
    cert = os.path.join(directory, name + "-cert.pem")
    key = os.path.join(directory, name + "-key.pem")
    subprocess.run(
        [OPENSSL, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-subj", f"/CN={hostname}", "-addext", f"subjectAltName={san}",
         "-days", "2", "-keyout", key, "-out", cert],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=30)
    os.chmod(key, 0o600)
    return cert, key


# ------------------------------------------------------------------------------------------------
# Delivered messages

def _header_fields(data, nl=b"\n"):
    """Yields (name_lower, whole_field_bytes_incl_line_ends) for the header section of `data`
    (lines end with `nl`), stopping at the empty line or at something that is not a field."""
    pos = 0
    while pos < len(data):
        if data.startswith(nl, pos):
            return
        end = data.find(nl, pos)
        if end < 0:
            return
        end += len(nl)
        while data[end:end + 1] in (b" ", b"\t"):
            nxt = data.find(nl, end)
            if nxt < 0:
                return
            end = nxt + len(nl)
        fld = data[pos:end]
        colon = fld.find(b":")
        if colon <= 0:
            return
        yield fld[:colon].strip().lower().decode("utf-8", "replace"), fld
        pos = end


def _field_value(fld):
    """Unfolded value of a header field (bytes incl. name) as str."""
    v = fld.split(b":", 1)[1]
    v = re.sub(rb"\r?\n[ \t]", b" ", v).strip()
    return v.decode("utf-8", "replace")


def _angle(v):
    m = re.fullmatch(r"\s*<(.*)>\s*", v)
    return m.group(1) if m else v.strip()


ADDED_BY_VIRTUAL = ("return-path", "x-original-to", "delivered-to")


@dataclass
class Delivery:
    """One message that virtual(8) wrote into a Maildir.

    raw:     the Maildir file as is (Postfix writes LF line ends).
    data:    the same with every LF turned into CRLF: the message as it would be on the wire.
    added:   the header fields Postfix itself put in front (CRLF form): Return-Path,
             X-Original-To and Delivered-To from virtual(8), then the Received field from the
             backend's smtpd. Everything after them is `content`.
    content: `data` without `added`, i.e. exactly what the SMTP client sent (after dot
             unstuffing / BDAT reassembly), to compare byte for byte.
    """
    path: str
    mailbox: str
    raw: bytes
    data: bytes = b""
    added: list = field(default_factory=list)
    content: bytes = b""
    return_path: str = None     # MAIL FROM as Postfix saw it ("" for the null sender)
    original_to: str = None     # RCPT TO as Postfix saw it (X-Original-To)
    delivered_to: str = None    # the final recipient (Delivered-To)
    received: str = None        # the backend's own Received field, unfolded
    queue_id: str = None        # Postfix queue id, from that Received field
    protocol: str = None        # "with ..." in that field: ESMTP, ESMTPS, UTF8SMTPS, ...

    @classmethod
    def parse(cls, path, mailbox, raw, hostname=BACKEND_HOSTNAME):
        d = cls(path=path, mailbox=mailbox, raw=raw)
        d.data = raw.replace(b"\n", b"\r\n")
        pos = 0
        for name, fld in _header_fields(d.data, b"\r\n"):
            if name in ADDED_BY_VIRTUAL:
                value = _field_value(fld)
                if name == "return-path":
                    d.return_path = _angle(value)
                elif name == "x-original-to":
                    d.original_to = value
                else:
                    d.delivered_to = value
            elif name == "received" and f"by {hostname} (Postfix)" in _field_value(fld):
                d.received = _field_value(fld)
                m = re.search(r"\bby \S+ \(Postfix\)(?: with (\S+))? id ([0-9A-Za-z]+)",
                              d.received)
                if m:
                    d.protocol, d.queue_id = m.group(1), m.group(2)
            else:
                break
            d.added.append(fld)
            pos += len(fld)
            if name == "received":
                break
        d.content = d.data[pos:]
        return d

    def header(self, name):
        """Value of the first `name` field of `content` (unfolded), or None."""
        for n, fld in _header_fields(self.content, b"\r\n"):
            if n == name.lower():
                return _field_value(fld)
        return None


# Maildir file names from virtual(8): "<sec>.V<dev>I<ino>M<usec>.<host>[:2,flags]"
MAILDIR_NAME_RE = re.compile(r"^(\d+)\.V[0-9a-fA-F]+I[0-9a-fA-F]+M(\d+)\.")


def _maildir_key(path):
    name = os.path.basename(path)
    m = MAILDIR_NAME_RE.match(name)
    st = os.stat(path)
    if m:
        return (int(m.group(1)), int(m.group(2)), st.st_mtime_ns, name)
    return (int(st.st_mtime), 0, st.st_mtime_ns, name)


# ------------------------------------------------------------------------------------------------
# Postfix

class _Backend:
    """What both backends share: a context manager that stops and removes its temp dir."""

    def cleanup(self):
        """stop(), then remove the temp dir (kept when MOAT_KEEP_TMP is set)."""
        self.stop()
        if self.workdir and not os.environ.get("MOAT_KEEP_TMP"):
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self):
        return self.start() if not self.running() else self

    def __exit__(self, *exc):
        self.cleanup()


class PostfixBackend(_Backend):
    """A throwaway, private Postfix instance on a free loopback port.

    Arguments (all optional):
      parent:           directory to create the instance's temp dir in (default: $TMPDIR).
      hostname:         myhostname (greeting, EHLO reply, Received "by"). Default backend.test.
      domains:          virtual mailbox domains. Default ("example.test",).
      users:            addresses with a Maildir (others are unknown users).
      reject_unlisted:  smtpd_reject_unlisted_recipient: unknown users get 550 5.1.1 at RCPT
                        (default). If False, they are accepted and then bounced.
      recipient_access: {address or domain: "NNN x.y.z text" or OK/REJECT/...} added to
                        check_recipient_access (before the defaults fail5@/fail4@example.test;
                        pass default_access=False to drop those).
      chunking, pipelining, dsn, eightbitmime, size, enhancedstatuscodes:
                        offer the EHLO keyword or not (smtpd_discard_ehlo_keywords).
      smtputf8:         smtputf8_enable (default True).
      tls:              offer STARTTLS with a self-signed cert for `hostname` and 127.0.0.1
                        (default False). `.cert` is then the CA file a client can verify
                        against, by either name.
      tls_required:     smtpd_tls_security_level = encrypt (implies tls).
      message_size_limit: bytes (default: Postfix's 10240000).
      log_smtp:         log the SMTP conversation (debug_peer_list = 127.0.0.1) so that
                        `.transcript()` works (default True).
      main:             extra main.cf settings {name: value}, applied last.
      port:             a fixed port (default: a free one, re-picked if the bind fails).
      full_check:       let `postfix start` run its integrity check (post-install
                        create-missing, postsuper, permission checks: ~0.25 s more) instead
                        of making the queue directories itself and starting with
                        `quick-start`.
    """

    def __init__(self, parent=None, *, hostname=BACKEND_HOSTNAME, domains=(BACKEND_DOMAIN,),
                 users=DEFAULT_USERS, reject_unlisted=True, recipient_access=None,
                 default_access=True, chunking=True, pipelining=True, dsn=True,
                 eightbitmime=True, size=True, enhancedstatuscodes=True, smtputf8=True,
                 tls=False, tls_required=False, message_size_limit=None, log_smtp=True,
                 main=None, port=None, full_check=False, name="postfix"):
        self.parent = parent
        self.full_check = full_check
        self.name = name
        self.hostname = hostname
        self.domains = list(domains)
        self.users = list(users)
        self.reject_unlisted = reject_unlisted
        self.recipient_access = dict(recipient_access or {})
        if default_access:
            for k, v in DEFAULT_RECIPIENT_ACCESS.items():
                self.recipient_access.setdefault(k, v)
        self.discard_keywords = [kw for kw, on in (
            ("chunking", chunking), ("pipelining", pipelining), ("dsn", dsn),
            ("8bitmime", eightbitmime), ("size", size),
            ("enhancedstatuscodes", enhancedstatuscodes)) if not on]
        self.smtputf8 = smtputf8
        self.tls = tls or tls_required
        self.tls_required = tls_required
        self.message_size_limit = message_size_limit
        self.log_smtp = log_smtp
        self.extra_main = dict(main or {})
        self.fixed_port = port
        self.port = port
        self.host = LOOPBACK
        self.workdir = None
        self.master_pid = None
        self.cert = self.key = None
        self.start_seconds = None
        self.stop_seconds = None
        self._seen = {}       # Maildir path -> arrival key, to keep arrival order stable

    # --- paths --------------------------------------------------------------------------------
    @property
    def config_dir(self):
        return os.path.join(self.workdir, "etc")

    @property
    def queue_dir(self):
        return os.path.join(self.workdir, "spool")

    @property
    def data_dir(self):
        return os.path.join(self.workdir, "data")

    @property
    def mail_dir(self):
        return os.path.join(self.workdir, "mail")

    @property
    def maillog_path(self):
        return os.path.join(self.workdir, "log", "maillog")

    @property
    def pid_file(self):
        return os.path.join(self.queue_dir, "pid", "master.pid")

    def maildir(self, address):
        """The Maildir of `address` (as configured in virtual_mailbox_maps)."""
        return os.path.join(self.mail_dir, self._mailbox_name(address))

    @staticmethod
    def _mailbox_name(address):
        # One directory per address; keep it a single safe path component.
        return re.sub(r"[^A-Za-z0-9@._+-]", lambda m: "%%%02X" % ord(m.group(0)) if ord(
            m.group(0)) < 256 else "%%u%04X" % ord(m.group(0)), address.lower())

    # --- configuration ------------------------------------------------------------------------
    def main_cf(self):
        # virtual(8) writes the Maildirs as this user (never root: virtual_minimum_uid).
        nobody = pwd.getpwnam("nobody")
        q = {
            "compatibility_level": "3.6",
            "queue_directory": self.queue_dir,
            "data_directory": self.data_dir,
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "syslog_name": f"moat-{self.name}",
            "maillog_file": self.maillog_path,
            "maillog_file_prefixes": os.path.dirname(self.maillog_path),
            "myhostname": self.hostname,
            "mydomain": self.hostname,
            "myorigin": "$myhostname",
            "mydestination": "",
            "inet_interfaces": LOOPBACK,
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "smtpd_banner": "$myhostname ESMTP Postfix (moat test backend)",
            # Nothing leaves this instance: no local(8), no smtp(8), no DNS.
            "local_recipient_maps": "",
            "local_transport": "error:5.1.1 local delivery is disabled",
            "alias_maps": "",
            "alias_database": "",
            "relay_domains": "",
            "default_transport": "discard:the test backend relays nothing",
            "relay_transport": "discard:the test backend relays nothing",
            "smtp_dns_support_level": "disabled",
            "smtpd_peername_lookup": "no",
            "biff": "no",
            "notify_classes": "",
            # Keep headers as the client sent them: no rewriting, no added Date/Message-ID/From.
            "local_header_rewrite_clients": "",
            "remote_header_rewrite_domain": "",
            "always_add_missing_headers": "no",
            "enable_original_recipient": "yes",
            # Virtual mailboxes.
            "virtual_mailbox_domains": " ".join(self.domains),
            "virtual_mailbox_maps": f"texthash:{self.config_dir}/vmailbox",
            "virtual_mailbox_base": self.mail_dir,
            "virtual_uid_maps": f"static:{nobody.pw_uid}",
            "virtual_gid_maps": f"static:{nobody.pw_gid}",
            "virtual_mailbox_limit": "0",
            "smtpd_reject_unlisted_recipient": "yes" if self.reject_unlisted else "no",
            "smtpd_relay_restrictions": "reject_unauth_destination",
            "smtpd_recipient_restrictions":
                f"check_recipient_access texthash:{self.config_dir}/recipient_access",
            "smtputf8_enable": "yes" if self.smtputf8 else "no",
            "smtpd_discard_ehlo_keywords": ", ".join(self.discard_keywords),
            # Fast and forgiving for tests.
            "smtpd_error_sleep_time": "0",
            "smtpd_soft_error_limit": "100",
            "smtpd_hard_error_limit": "1000",
            "in_flow_delay": "0",
            "queue_run_delay": "1s",
            "minimal_backoff_time": "1s",
            "maximal_backoff_time": "2s",
            "delay_warning_time": "0",
        }
        if self.message_size_limit is not None:
            q["message_size_limit"] = str(self.message_size_limit)
        if self.tls:
            q.update({
                "smtpd_tls_security_level": "encrypt" if self.tls_required else "may",
                "smtpd_tls_cert_file": self.cert,
                "smtpd_tls_key_file": self.key,
                "smtpd_tls_loglevel": "1",
            })
        else:
            q["smtpd_tls_security_level"] = "none"
        if self.log_smtp:
            q["debug_peer_list"] = LOOPBACK
            q["debug_peer_level"] = "1"
        q.update(self.extra_main)
        return "".join(f"{k} = {v}\n" for k, v in q.items())

    def master_cf(self):
        # chroot "n" everywhere: the instance lives in a temp dir without a chroot jail.
        return f"""\
{LOOPBACK}:{self.port} inet n - n - - smtpd
cleanup    unix n - n - 0 cleanup
qmgr       unix n - n 300 1 qmgr
tlsmgr     unix - - n 1000? 1 tlsmgr
rewrite    unix - - n - - trivial-rewrite
bounce     unix - - n - 0 bounce
defer      unix - - n - 0 bounce
trace      unix - - n - 0 bounce
verify     unix - - n - 1 verify
flush      unix n - n 1000? 0 flush
proxymap   unix - - n - - proxymap
error      unix - - n - - error
retry      unix - - n - - error
discard    unix - - n - - discard
virtual    unix - n n - - virtual
anvil      unix - - n - 1 anvil
scache     unix - - n - 1 scache
postlog    unix-dgram n - n - 1 postlogd
"""

    def _write(self, name, text, mode=0o644):
        path = os.path.join(self.config_dir, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(path, mode)
        # Postfix's dict_load_file() (main.cf, texthash: tables) sleeps in 300 ms steps until
        # the file is older than a second, in case an editor is still writing it: backdate.
        past = time.time() - 60
        os.utime(path, (past, past))
        return path

    def write_config(self):
        self._write("main.cf", self.main_cf())
        self._write("master.cf", self.master_cf())
        self._write("vmailbox", "".join(
            f"{u} {self._mailbox_name(u)}/\n" for u in self.users))
        self._write("recipient_access", "".join(
            f"{k} {v}\n" for k, v in self.recipient_access.items()))

    def _prepare(self):
        if self.workdir:
            return
        if self.parent:
            st = os.stat(self.parent)
            if not st.st_mode & 0o001:   # virtual(8) runs as nobody and must reach mail/
                os.chmod(self.parent, st.st_mode | 0o011)
        self.workdir = tempfile.mkdtemp(prefix=f"moat-{self.name}-", dir=self.parent)
        os.chmod(self.workdir, 0o755)
        nobody = pwd.getpwnam("nobody")
        for d in (self.config_dir, self.queue_dir, os.path.dirname(self.maillog_path),
                  self.mail_dir):
            os.mkdir(d)
            os.chmod(d, 0o755)     # whatever the umask
        os.chown(self.mail_dir, nobody.pw_uid, nobody.pw_gid)
        if not self.full_check:
            self._make_queue_dirs()
        if self.tls:
            self.cert, self.key = make_self_signed_cert(self.workdir, self.hostname)

    # Queue and data directories as $meta_directory/postfix-files has them (what
    # `post-install create-missing` makes): name -> (owner, group, mode).
    QUEUE_DIRS = {
        "active": ("postfix", "root", 0o700), "bounce": ("postfix", "root", 0o700),
        "corrupt": ("postfix", "root", 0o700), "defer": ("postfix", "root", 0o700),
        "deferred": ("postfix", "root", 0o700), "flush": ("postfix", "root", 0o700),
        "hold": ("postfix", "root", 0o700), "incoming": ("postfix", "root", 0o700),
        "private": ("postfix", "root", 0o700), "saved": ("postfix", "root", 0o700),
        "trace": ("postfix", "root", 0o700), "maildrop": ("postfix", "postdrop", 0o730),
        "public": ("postfix", "postdrop", 0o710), "pid": ("root", "root", 0o755),
    }

    def _make_queue_dirs(self):
        """Creates what `postfix start` would create with its integrity check (which takes
        ~0.25 s: post-install runs postconf dozens of times, then postsuper and find), so
        that start() can skip that check with postfix-script's own `quick-start` file."""
        def ids(user, group):
            return pwd.getpwnam(user).pw_uid, grp.getgrnam(group).gr_gid
        for name, (user, group, mode) in self.QUEUE_DIRS.items():
            path = os.path.join(self.queue_dir, name)
            os.mkdir(path)
            os.chown(path, *ids(user, group))
            os.chmod(path, mode)
        os.mkdir(self.data_dir)
        os.chown(self.data_dir, *ids("postfix", "root"))
        os.chmod(self.data_dir, 0o700)

    # --- process ------------------------------------------------------------------------------
    def _postfix(self, *args, timeout=30):
        return subprocess.run([POSTFIX, "-c", self.config_dir, *args],
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, timeout=timeout)

    def start(self, timeout=START_TIMEOUT):
        """Writes the configuration, runs `postfix -c DIR start` and waits until smtpd listens
        on the port. The first start picks a free port (another one if the bind fails); a
        start after stop() keeps the port, the mail and the log. Returns self."""
        if not postfix_available():
            raise RuntimeError("Postfix is not installed or we are not root")
        if self.running():
            raise RuntimeError(f"{self.name} is already running")
        t0 = time.monotonic()
        self._prepare()
        keep_port = bool(self.fixed_port or self.port)
        for attempt in range(5):
            if not keep_port:
                self.port = free_port()
            # A master that cannot bind takes ~3 s to fail (it sleeps after its fatal error).
            if not _port_free(self.host, self.port):
                if keep_port:
                    raise RuntimeError(f"{self.host}:{self.port} is in use")
                continue
            self.write_config()
            if not self.full_check:
                open(os.path.join(self.queue_dir, "quick-start"), "w").close()
            started = self.log().count(self.STARTED)
            r = self._postfix("start", timeout=timeout)
            out = r.stdout.decode("utf-8", "replace")
            self.master_pid = self._read_pid()
            if r.returncode == 0 and self.master_pid:
                deadline = time.monotonic() + timeout
                if _wait_port(self.host, self.port, deadline,
                              alive=lambda: _pid_alive(self.master_pid)) and \
                        self._wait_logged(self.STARTED, started + 1, deadline):
                    self.start_seconds = time.monotonic() - t0
                    return self
            log = self.log()
            self._kill_all()
            if re.search(r"bind .* port \d+: Address already in use", out + log) \
                    and not keep_port and attempt < 4:
                continue
            raise RuntimeError(f"postfix did not start (rc={r.returncode}):\n{out}\n"
                               f"--- maillog ---\n{log}")
        raise RuntimeError("postfix could not bind a port")

    STARTED = "daemon started -- version"   # the master's first log line
    RELOADED = "reload -- version"

    def _wait_logged(self, text, count, deadline):
        """Waits until `text` occurs `count` times in the maillog, i.e. until the master's
        postlogd has written what the master logged."""
        while self.log().count(text) < count:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)
        return True

    def reload(self):
        """Rewrites the configuration and runs `postfix -c DIR reload`: the master re-reads it
        and replaces its children (a session in progress finishes with the old settings)."""
        self.write_config()
        n = self.log().count(self.RELOADED)
        r = self._postfix("reload")
        if r.returncode != 0:
            raise RuntimeError(f"postfix reload failed: {r.stdout!r}")
        # Wait until the master has logged the reload, i.e. it has replaced its children.
        if not self._wait_logged(self.RELOADED, n + 1, time.monotonic() + 5):
            raise RuntimeError(f"{self.name}: no reload in the maillog after 5 s\n"
                               f"{self.log()[-3000:]}")

    def set_recipient_access(self, table, default_access=True):
        """Replaces the check_recipient_access table at run time ({address: reply}), then
        reload()s."""
        self.recipient_access = dict(table)
        if default_access:
            for k, v in DEFAULT_RECIPIENT_ACCESS.items():
                self.recipient_access.setdefault(k, v)
        self.reload()

    def _read_pid(self):
        try:
            with open(self.pid_file) as f:
                pid = int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        # Guard against a stale pid file / reused PID: the master runs in our queue dir.
        return pid if self._ours(pid) else None

    def _ours(self, pid):
        cwd = _proc_cwd(pid)
        return cwd is not None and self.queue_dir is not None and (
            cwd == self.queue_dir or cwd.startswith(self.queue_dir + os.sep))

    def _instance_pids(self):
        """PIDs of every process of this instance: the master, and anything running with its
        working directory in our queue directory (all Postfix daemons chdir there)."""
        out = set()
        if not self.workdir:
            return out
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                pid = int(entry)
                if pid != os.getpid() and self._ours(pid):
                    out.add(pid)
        return out

    def running(self):
        return bool(self.master_pid) and _pid_alive(self.master_pid)

    def pids(self):
        return sorted(self._instance_pids())

    def stop(self, timeout=5.0, use_postfix_stop=True):
        """Stops the instance: `postfix -c DIR stop` (SIGTERM to the master named in
        pid/master.pid; the master takes its children down; the script polls `master -t`
        once a second for up to 5 s, usually done at once), or with use_postfix_stop=False
        that SIGTERM directly. Then waits for the master to exit and SIGKILLs every leftover
        process of this instance by PID (processes whose cwd is our queue directory, which
        no other Postfix has). Keeps the temp dir (see cleanup()). Safe to call twice."""
        if not self.workdir:
            return
        t0 = time.monotonic()
        pid = self._read_pid() or self.master_pid
        if pid and _pid_alive(pid):
            if use_postfix_stop:
                try:
                    self._postfix("stop", timeout=timeout + 10)
                except subprocess.TimeoutExpired:
                    pass
            if _pid_alive(pid) and self._ours(pid):
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and _pid_alive(pid):
                time.sleep(0.005)
        # The master's children exit when the master does; give them a moment, then kill.
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline and self._instance_pids():
            time.sleep(0.005)
        self._kill_all()
        self.master_pid = None
        self.stop_seconds = time.monotonic() - t0

    def _kill_all(self):
        for _ in range(50):
            pids = self._instance_pids()
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.01)
        raise RuntimeError(f"processes of {self.workdir} survived SIGKILL: {pids}")


    # --- delivered mail -----------------------------------------------------------------------
    def _maildir_files(self, mailbox=None):
        boxes = [self._mailbox_name(mailbox)] if mailbox else sorted(
            os.listdir(self.mail_dir)) if os.path.isdir(self.mail_dir) else []
        out = []
        for box in boxes:
            for sub in ("new", "cur"):
                d = os.path.join(self.mail_dir, box, sub)
                try:
                    names = os.listdir(d)
                except FileNotFoundError:
                    continue
                out += [(box, os.path.join(d, n)) for n in names]
        return out

    RECEIPT_RE = re.compile(r"/cleanup\[\d+\]: ([0-9A-Za-z]+): message-id=", re.M)

    def receipt_order(self):
        """{queue_id: n}: the order in which cleanup(8) took the messages in (its
        "message-id=" log line, written when the header is complete)."""
        order = {}
        for m in self.RECEIPT_RE.finditer(self.log()):
            order.setdefault(m.group(1), len(order))
        return order

    def deliveries(self, mailbox=None):
        """Every message delivered so far (to `mailbox`, an address, or to all), in arrival
        order, as Delivery objects. A message for n recipients is n deliveries. Arrival order
        is the order in which Postfix received the messages (receipt_order(): deliveries may
        run in parallel and finish in another order), then the Maildir file names' time."""
        items = []
        for box, path in self._maildir_files(mailbox):
            key = self._seen.get(path)
            if key is None:
                try:
                    key = self._seen[path] = _maildir_key(path)
                except FileNotFoundError:
                    continue
            items.append((key, box, path))
        order = self.receipt_order()
        out = []
        for key, box, path in items:
            with open(path, "rb") as f:
                d = Delivery.parse(path, box, f.read(), self.hostname)
            out.append(((order.get(d.queue_id, len(order)), key), d))
        out.sort(key=lambda x: x[0])
        return [d for _, d in out]

    def messages(self, mailbox=None, raw=False):
        """Delivered messages as bytes, in arrival order. By default in wire form (CRLF line
        ends; the Maildir files have LF), including the headers Postfix added at the top
        (Return-Path, X-Original-To, Delivered-To, Received); Delivery.content is the rest.
        raw=True gives the Maildir files unchanged."""
        return [d.raw if raw else d.data for d in self.deliveries(mailbox)]

    def wait_for(self, n, timeout=5.0, mailbox=None):
        """Waits until at least n messages have been delivered; returns the deliveries.
        Raises AssertionError (with the tail of the maillog) on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.deliveries(mailbox)
            if len(got) >= n:
                return got
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"{self.name}: {len(got)} of {n} messages delivered after {timeout}s\n"
                    f"--- maillog (tail) ---\n{self.log()[-4000:]}")
            time.sleep(0.02)

    # --- log ----------------------------------------------------------------------------------
    def log(self):
        try:
            with open(self.maillog_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except (FileNotFoundError, TypeError):
            return ""

    def wait_log(self, pattern, timeout=5.0):
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            m = rx.search(self.log())
            if m or time.monotonic() >= deadline:
                return m
            time.sleep(0.02)

    DISCONNECT_RE = re.compile(r"smtpd\[(\d+)\]: disconnect from \S+ (.*)$", re.M)

    def sessions(self):
        """One dict per finished smtpd session, from its "disconnect from" log line:
        {"ehlo": "1", "mail": "1", "rcpt": "1/2", "bdat": "1", "quit": "1", "commands": "5/6"}
        (values are "ok" or "ok/total" as Postfix logs them)."""
        out = []
        for m in self.DISCONNECT_RE.finditer(self.log()):
            d = {}
            for item in m.group(2).split():
                k, _, v = item.partition("=")
                d[k.lower()] = v
            out.append(d)
        return out

    def wait_sessions(self, n, timeout=5.0):
        deadline = time.monotonic() + timeout
        while True:
            s = self.sessions()
            if len(s) >= n or time.monotonic() >= deadline:
                return s
            time.sleep(0.02)

    TRANSCRIPT_RE = re.compile(r"smtpd\[(\d+)\]: ([<>]) \S+\[[^\]]*\]: (.*)$", re.M)

    def transcript(self):
        """The SMTP conversations as smtpd logged them (needs log_smtp=True): a list of
        (smtpd_pid, "<" for client commands or ">" for replies, text). BDAT chunk contents
        and DATA lines are not logged, only commands and replies."""
        return [(int(m.group(1)), m.group(2), m.group(3))
                for m in self.TRANSCRIPT_RE.finditer(self.log())]

    def commands(self):
        """Just the client commands from transcript(), e.g. "MAIL FROM:<a@b> SMTPUTF8"."""
        return [t for _, d, t in self.transcript() if d == "<"]

    DELIVERY_LOG_RE = re.compile(
        r"\]: (\w+): to=<([^>]*)>,(?: orig_to=<([^>]*)>,)? relay=([^,]+),.*?"
        r"status=(\w+) \((.*)\)$", re.M)

    def delivery_log(self):
        """[(queue_id, to, orig_to, relay, status, text)] from the delivery agents' log lines."""
        return [m.groups() for m in self.DELIVERY_LOG_RE.finditer(self.log())]


# ------------------------------------------------------------------------------------------------
# smtp-sink

@dataclass
class SinkMessage:
    """One transaction dumped by smtp-sink: its generated headers (envelope) and the message.

    `mail` / `rcpts` are the MAIL / RCPT arguments after the colon, parameters included
    ("<a@b> SIZE=12 SMTPUTF8"). `data` is the message in wire form (CRLF), without the sink's
    X-* and Received fields. NOT byte-exact: smtp-sink drops every CR it reads in DATA (bare
    CRs vanish, CRLF becomes LF; `data` turns every LF back into CRLF, so a bare LF comes
    back as CRLF). It does undo dot-stuffing. Use PostfixBackend for byte-exact checks."""
    raw: bytes
    client_addr: str = None
    client_proto: str = None
    helo: str = None
    mail: str = None            # the MAIL arguments after "FROM:", e.g. "<a@b> SMTPUTF8"
    rcpts: list = field(default_factory=list)   # the RCPT commands' arguments
    received: str = None
    data: bytes = b""

    @property
    def sender(self):
        m = re.match(r"(?i)(?:FROM:)?\s*<([^>]*)>", self.mail or "")
        return m.group(1) if m else None

    @property
    def recipients(self):
        out = []
        for r in self.rcpts:
            m = re.match(r"(?i)(?:TO:)?\s*<([^>]*)>", r)
            out.append(m.group(1) if m else r)
        return out

    @classmethod
    def parse(cls, raw):
        m = cls(raw=raw)
        pos = 0
        for name, fld in _header_fields(raw, b"\n"):
            v = _field_value(fld)
            pos += len(fld)
            if name == "x-client-addr":
                m.client_addr = v
            elif name == "x-client-proto":
                m.client_proto = v
            elif name == "x-helo-args":
                m.helo = v
            elif name == "x-mail-args":
                m.mail = v
            elif name == "x-rcpt-args":
                m.rcpts.append(v)
            elif name == "received":
                m.received = v
                break
        body = raw[pos:]
        if body.endswith(b"\n"):    # the LF of the terminating ".<CR><LF>"
            body = body[:-1]
        m.data = body.replace(b"\n", b"\r\n")
        return m


class SinkBackend(_Backend):
    """Postfix's smtp-sink(1) on a free loopback port, started and stopped by PID.

    Arguments (all optional):
      parent:        directory for the temp dir (dump file, stderr log).
      hostname:      -h: name in the greeting and EHLO reply (default backend.test).
      dump:          -D: append every transaction to one file (default True); see messages().
      hard_reject:   -f: commands to reject with a 5xx reply (e.g. ["RCPT"], ["."] for the end
                     of DATA). Implies no PIPELINING.
      soft_reject:   -r: commands to reject with a 4xx reply.
      hard_reply / soft_reply: -B / -b: the 5xx / 4xx reply text, e.g. "550 5.1.1 no such user".
      disconnect:    -q: commands after which the sink hangs up without a reply.
      disconnect_421: -Q: commands answered with 421 and a hang-up.
      data_delay:    -w: seconds to wait before answering DATA.
      command_delays: -W: {command: seconds}.
      eightbitmime, esmtp, enhancedstatuscodes, dsn, pipelining: announce or not (-8 -e -E -N -p).
      auth, xclient, xforward: announce AUTH / XCLIENT / XFORWARD (default not: -a -C -F).
                     smtp-sink never offers SIZE, STARTTLS, SMTPUTF8 or CHUNKING (it does
                     not know BDAT: "500 5.5.1 Error: unknown command").
      verbose:       -v: log the conversation to the stderr log (default True; see log()).
      extra_args:    anything else, passed before the address.
    """

    def __init__(self, parent=None, *, hostname=BACKEND_HOSTNAME, dump=True, hard_reject=(),
                 soft_reject=(), hard_reply=None, soft_reply=None, disconnect=(),
                 disconnect_421=(), data_delay=None, command_delays=None, eightbitmime=True,
                 esmtp=True, enhancedstatuscodes=True, dsn=True, pipelining=True,
                 auth=False, xclient=False, xforward=False, verbose=True, timeout=100,
                 extra_args=(), port=None, name="sink"):
        self.parent = parent
        self.name = name
        self.hostname = hostname
        self.dump = dump
        self.hard_reject = list(hard_reject)
        self.soft_reject = list(soft_reject)
        self.hard_reply = hard_reply
        self.soft_reply = soft_reply
        self.disconnect = list(disconnect)
        self.disconnect_421 = list(disconnect_421)
        self.data_delay = data_delay
        self.command_delays = dict(command_delays or {})
        self.flags = [f for f, on in (("-8", eightbitmime), ("-e", esmtp),
                                      ("-E", enhancedstatuscodes), ("-N", dsn),
                                      ("-p", pipelining), ("-a", auth), ("-C", xclient),
                                      ("-F", xforward)) if not on]
        self.verbose = verbose
        self.timeout = timeout
        self.extra_args = list(extra_args)
        self.fixed_port = port
        self.port = port
        self.host = LOOPBACK
        self.workdir = None
        self.proc = None
        self.marker = None
        self.start_seconds = None
        self.stop_seconds = None

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    @property
    def dump_path(self):
        return os.path.join(self.workdir, "dump")

    @property
    def log_path(self):
        return os.path.join(self.workdir, "sink.log")

    def argv(self):
        a = [SMTP_SINK, "-4", "-h", self.hostname, "-t", str(self.timeout), "-m", "64"]
        if os.geteuid() == 0:
            a += ["-u", "nobody"]    # required as root; the dump dir is writable by nobody
        a += self.flags
        if self.dump:
            a += ["-S", self.marker.decode() + "\\n", "-D", self.dump_path]
        for opt, cmds in (("-f", self.hard_reject), ("-r", self.soft_reject),
                          ("-q", self.disconnect), ("-Q", self.disconnect_421)):
            if cmds:
                a += [opt, ",".join(cmds)]
        if self.hard_reply:
            a += ["-B", self.hard_reply]
        if self.soft_reply:
            a += ["-b", self.soft_reply]
        if self.data_delay is not None:
            a += ["-w", str(self.data_delay)]
        for cmd, delay in self.command_delays.items():
            a += ["-W", f"{cmd}:{delay}"]
        if self.verbose:
            a += ["-v"]
        a += self.extra_args
        a += [f"{self.host}:{self.port}", "64"]
        return a

    def start(self, timeout=START_TIMEOUT):
        if not SMTP_SINK:
            raise RuntimeError("smtp-sink not found (Debian package postfix)")
        t0 = time.monotonic()
        if not self.workdir:
            self.workdir = tempfile.mkdtemp(prefix=f"moat-{self.name}-", dir=self.parent)
            os.chmod(self.workdir, 0o755)
            if os.geteuid() == 0:
                nobody = pwd.getpwnam("nobody")
                os.chown(self.workdir, nobody.pw_uid, nobody.pw_gid)
            self.marker = b"=====smtp-sink-message-" + os.urandom(8).hex().encode() + b"====="
        if self.running():
            raise RuntimeError(f"{self.name} is already running")
        keep_port = bool(self.fixed_port or self.port)
        for attempt in range(5):
            if not keep_port:
                self.port = free_port()
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL,
                                             stdout=log, stderr=log, cwd=self.workdir)
            if _wait_port(self.host, self.port, time.monotonic() + timeout,
                          alive=lambda: self.proc.poll() is None):
                self.start_seconds = time.monotonic() - t0
                return self
            rc = self.proc.poll()
            self.kill()
            if rc is not None and "in use" in self.log() and not keep_port \
                    and attempt < 4:
                continue
            raise RuntimeError(f"smtp-sink did not start (rc={rc}):\n{self.log()}")
        raise RuntimeError("smtp-sink could not bind a port")

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout=5.0):
        """SIGTERM by PID, SIGKILL after `timeout`, reap. Safe to call twice."""
        if not self.proc:
            return None
        t0 = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        rc = self.proc.wait()
        self.proc = None
        self.stop_seconds = time.monotonic() - t0
        return rc

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
        if self.proc:
            self.proc.wait()
        self.proc = None


    def log(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except (FileNotFoundError, TypeError):
            return ""

    def dumped(self):
        """The dump file's bytes split into transactions. smtp-sink appends a transaction as
        a whole when it reads the final ".", before it replies (also when that reply is an
        error from -f/-r), so what a client saw answered is complete here."""
        try:
            with open(self.dump_path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return []
        parts = data.split(self.marker + b"\n")
        if parts[0]:
            raise AssertionError(f"dump file does not start with the marker: {data[:200]!r}")
        return parts[1:]

    def messages(self):
        """Every dumped transaction, in arrival order, as SinkMessage objects."""
        return [SinkMessage.parse(p) for p in self.dumped()]

    def wait_for(self, n, timeout=5.0):
        """Waits until at least n transactions were answered and dumped; returns messages()."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.messages()
            if len(got) >= n:
                return got
            if time.monotonic() >= deadline:
                raise AssertionError(f"{self.name}: {len(got)} of {n} messages dumped after "
                                     f"{timeout}s\n--- log ---\n{self.log()[-4000:]}")
            time.sleep(0.02)
