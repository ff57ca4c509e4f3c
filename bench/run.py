#!/usr/bin/python3
"""Moat delivery benchmark: smtp-source -> server -> smtp-sink, end to end.

For every configuration (a server set up in a given way) and every workload (concurrency x
message size), this starts a fresh smtp-sink(1) on a free loopback port, a fresh server that
relays into it, runs smtp-source(1) against the server, and measures

  - end-to-end msg/s: messages / (time from starting smtp-source until smtp-sink has received
    all of them), and the accept rate (until smtp-source is done),
  - server CPU seconds per 1,000 messages (utime+stime of the server's whole process tree,
    reaped children included), and
  - peak RSS of the server (sampled sum over its processes; VmHWM for a single process).

Each cell is run --runs times (interleaved, so background load hits every configuration alike);
the table shows medians and the ratios of each configuration to the baseline (Postfix).
See bench/README.md. Python standard library only; stops everything it started by PID.
"""

import argparse
import json
import pwd
import re
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests", "integration"))

import backend  # noqa: E402  (tests/integration: throwaway Postfix, process helpers)
import harness  # noqa: E402  (tests/integration: `moat serve` with a TOML config)

SMTP_SOURCE = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
SMTP_SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

DOMAIN = "example.test"            # smtp-source's recipient domain = what the servers relay
SENDER = "bench@example.org"
RECIPIENT = "user@" + DOMAIN
CLIENT_NAME = "source.bench.test"  # smtp-source's HELO name
SAMPLE_INTERVAL = 0.1              # seconds between RSS samples
COUNTER_RE = re.compile(rb"mesg=(\d+)\r")  # smtp-sink -c: "sess=N quit=N mesg=N\r"


# ------------------------------------------------------------------------------------------------
# /proc: CPU and memory of a process tree

def _stat_fields(pid):
    """Fields of /proc/PID/stat after the command name (index 0 = state), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def children(pid):
    """Direct children of pid (all its threads), from /proc/PID/task/TID/children."""
    out = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(x) for x in f.read().split()]
        except OSError:
            pass
    return out


def tree(pid):
    """pid and all its descendants that exist now."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children(p)
    return out


def tree_cpu_seconds(pid):
    """CPU seconds the tree has used: for every live process utime+stime plus cutime+cstime
    (the children it has reaped), so a process that exited and was waited for still counts."""
    ticks = 0
    for p in tree(pid):
        f = _stat_fields(p)
        if f and f[0] != "Z":
            ticks += sum(int(x) for x in f[11:15])
    return ticks / CLK_TCK


def rss_bytes(pid):
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


def hwm_bytes(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, IndexError, ValueError):
        pass
    return 0


def machine_busy_seconds():
    """CPU seconds all cores spent not idle since boot (/proc/stat), to estimate background
    load during a cell."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal [guest guest_nice: already in user/nice]
    return (sum(v[:8]) - v[3] - v[4]) / CLK_TCK


class RssSampler(threading.Thread):
    """Samples the sum of VmRSS over a process tree every SAMPLE_INTERVAL; keeps the peak sum
    and the peak number of processes."""

    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = 0
        self.peak_procs = 0
        self._stop_event = threading.Event()

    def sample(self):
        pids = tree(self.pid)
        self.peak = max(self.peak, sum(rss_bytes(p) for p in pids))
        self.peak_procs = max(self.peak_procs, len(pids))

    def run(self):
        while not self._stop_event.is_set():
            self.sample()
            self._stop_event.wait(SAMPLE_INTERVAL)

    def finish(self):
        self._stop_event.set()
        self.join()
        self.sample()
        # A single process knows its own peak exactly.
        self.peak = max(self.peak, hwm_bytes(self.pid))
        return self.peak


def filesystem_of(path):
    """(mount point, fs type, device) of the mount holding path, from /proc/self/mounts."""
    path = os.path.realpath(path)
    best = ("/", "?", "?")
    with open("/proc/self/mounts") as f:
        for line in f:
            dev, mnt, fstype = line.split()[:3]
            mnt = mnt.replace("\\040", " ")
            if (path == mnt or path.startswith(mnt.rstrip("/") + "/")) and \
                    len(mnt) >= len(best[0]):
                best = (mnt, fstype, dev)
    return best


# ------------------------------------------------------------------------------------------------
# The downstream: smtp-sink with a running counter

class Sink:
    """smtp-sink on a free loopback port; `-c` writes "sess=N quit=N mesg=N" after every
    session end, QUIT and final ".", flushed at once, into a file we poll."""

    def __init__(self, workdir):
        self.workdir = workdir
        self.count_path = os.path.join(workdir, "sink-counter")
        self.port = None
        self.proc = None

    def start(self):
        for attempt in range(5):
            self.port = harness.free_port()
            argv = [SMTP_SINK, "-4", "-c", "-h", "sink.bench.test", "-m", "1024"]
            if os.geteuid() == 0:
                argv += ["-u", "nobody"]
            argv += [f"127.0.0.1:{self.port}", "1024"]
            with open(self.count_path, "wb") as out:
                self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                             stderr=subprocess.STDOUT, cwd=self.workdir)
            if backend._wait_port("127.0.0.1", self.port, time.monotonic() + 10,
                                  alive=lambda: self.proc.poll() is None):
                return self
            self.stop()
            if attempt == 4:
                raise RuntimeError(f"smtp-sink did not start:\n{self.output()}")
        return self

    def output(self):
        try:
            with open(self.count_path, "rb") as f:
                return f.read().decode("ascii", "replace")
        except OSError:
            return ""

    def messages(self):
        """Messages received so far: the last complete "mesg=N\\r" in the counter file."""
        try:
            with open(self.count_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 200))
                tail = f.read()
        except OSError:
            return 0
        found = COUNTER_RE.findall(tail)
        return int(found[-1]) if found else 0

    def cpu_seconds(self):
        return tree_cpu_seconds(self.proc.pid) if self.proc else 0.0

    def stop(self):
        if self.proc:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
            self.proc.wait()
            self.proc = None


# ------------------------------------------------------------------------------------------------
# Servers (configurations). Each has start(sink_port), pid (root of its process tree), stop(),
# port, describe() and log_tail().

class MoatTarget:
    """`moat serve` (Release build), queue mode: accept, fsync, 250, then deliver per [[route]]
    to the sink. `extra` is more TOML (checks, for configurations that have them)."""

    def __init__(self, workdir, name, extra="", server=None, delivery=None, route=None):
        self.workdir = workdir
        self.name = name
        self.extra = extra
        self.server_overrides = {
            # smtp-source connects from one address with up to 100 sessions at once.
            "max_sessions": 2000,
            "max_sessions_per_ip": 2000,
            "command_timeout": "5m",
            "data_timeout": "3m",
        }
        self.server_overrides.update(server or {})
        self.delivery = {"enabled": True}
        self.delivery.update(delivery or {})
        self.route_overrides = dict(route or {})
        self.moat = None

    def start(self, sink_port):
        route = {"domains": [DOMAIN], "host": f"127.0.0.1:{sink_port}", "tls": "none"}
        route.update(self.route_overrides)
        self.moat = harness.MoatServer(self.workdir, name=self.name,
                                       server=self.server_overrides,
                                       relay={"domains": [DOMAIN]}, delivery=self.delivery,
                                       routes=[route], extra=self.extra)
        self.moat.start()
        return self

    @property
    def port(self):
        return self.moat.port

    @property
    def pid(self):
        return self.moat.pid

    @property
    def spool_dir(self):
        return self.moat.spool_dir

    def settled(self):
        """True when nothing is left in the spool's active/ and incoming/."""
        return not self.moat.spool_list("active") and not self.moat.spool_list("incoming")

    def stop(self):
        if self.moat:
            try:
                self.moat.stop()
            finally:
                self.moat.kill()
            self.moat = None

    def log_tail(self):
        return self.moat.log()[-3000:] if self.moat else ""


class PostfixRelay(backend.PostfixBackend):
    """A throwaway Postfix as a plain relay: smtpd accepts mail for example.test (relay_domains),
    cleanup writes and fsyncs it into its own queue, qmgr hands it to smtp(8), which relays to
    [127.0.0.1]:SINKPORT. Postfix's defaults otherwise (process limits, concurrency, in_flow_delay,
    connection cache); no content filters, no logging of SMTP transcripts, no rDNS lookups."""

    def __init__(self, parent, sink_port):
        super().__init__(parent, log_smtp=False, name="postfix-bench")
        self.sink_port = sink_port

    def main_cf(self):
        q = {
            "compatibility_level": "3.6",
            "queue_directory": self.queue_dir,
            "data_directory": self.data_dir,
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "syslog_name": "moat-bench-postfix",
            "maillog_file": self.maillog_path,
            "maillog_file_prefixes": os.path.dirname(self.maillog_path),
            "myhostname": "relay.bench.test",
            "mydomain": "bench.test",
            "myorigin": "$myhostname",
            "mydestination": "",
            "inet_interfaces": backend.LOOPBACK,
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "relay_domains": DOMAIN,
            "relayhost": f"[127.0.0.1]:{self.sink_port}",
            "relay_transport": f"relay:[127.0.0.1]:{self.sink_port}",
            "default_transport": f"smtp:[127.0.0.1]:{self.sink_port}",
            "local_recipient_maps": "",
            "local_transport": "error:5.1.1 local delivery is disabled",
            "alias_maps": "",
            "alias_database": "",
            "smtp_dns_support_level": "disabled",
            "smtpd_peername_lookup": "no",
            "smtpd_tls_security_level": "none",
            "smtp_tls_security_level": "none",
            "biff": "no",
            "notify_classes": "",
        }
        q.update(self.extra_main)
        return "".join(f"{k} = {v}\n" for k, v in q.items())

    def master_cf(self):
        # Debian's master.cf services that a relay uses, without chroot (temp dir instance).
        return f"""\
{backend.LOOPBACK}:{self.port} inet n - n - - smtpd
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
smtp       unix - - n - - smtp
relay      unix - - n - - smtp -o syslog_name=moat-bench-postfix/$service_name
error      unix - - n - - error
retry      unix - - n - - error
discard    unix - - n - - discard
anvil      unix - - n - 1 anvil
scache     unix - - n - 1 scache
postlog    unix-dgram n - n - 1 postlogd
"""


class PostfixTarget:
    def __init__(self, workdir, name):
        self.workdir = workdir
        self.name = name
        self.pf = None

    def start(self, sink_port):
        self.pf = PostfixRelay(self.workdir, sink_port)
        self.pf.start()
        return self

    @property
    def port(self):
        return self.pf.port

    @property
    def pid(self):
        return self.pf.master_pid

    @property
    def spool_dir(self):
        return self.pf.queue_dir

    def settled(self):
        for sub in ("incoming", "active", "maildrop"):
            for _, _, files in os.walk(os.path.join(self.pf.queue_dir, sub)):
                if files:
                    return False
        return True

    def stop(self):
        if self.pf:
            self.pf.stop()
            self.pf = None

    def log_tail(self):
        return self.pf.log()[-3000:] if self.pf else ""


class DirectTarget:
    """No server: smtp-source talks to smtp-sink directly. The ceiling of the load generator
    and sink on this machine; a server cannot look faster than this."""

    def __init__(self, workdir, name):
        self.workdir = workdir
        self.name = name
        self._port = None

    def start(self, sink_port):
        self._port = sink_port
        return self

    @property
    def port(self):
        return self._port

    pid = None
    spool_dir = None

    def settled(self):
        return True

    def stop(self):
        pass

    def log_tail(self):
        return ""


# Configurations: name -> (factory(workdir, name), one-line description). A new configuration
# (e.g. Moat with every check on) is one more entry here.
CONFIGS = {
    "moat-nochecks": (lambda wd, n: MoatTarget(wd, n),
                      "moat serve, queue mode (fsync before 250), relay check only, delivery "
                      "to the sink per [[route]], defaults otherwise"),
    "postfix": (PostfixTarget,
                "throwaway Postfix plain relay (relay_domains), own queue with its own fsync, "
                "defaults otherwise"),
    "direct": (DirectTarget, "no server: smtp-source -> smtp-sink (load generator ceiling)"),
}
DEFAULT_CONFIGS = ["moat-nochecks", "postfix", "direct"]
BASELINE = "postfix"


# ------------------------------------------------------------------------------------------------
# Workloads

@dataclass
class Workload:
    concurrency: int       # smtp-source -s: parallel sessions
    size: int              # smtp-source -l: payload bytes (plus smtp-source's few header lines)
    messages: int          # smtp-source -m, at --scale 1
    reuse: bool = False    # smtp-source -d: send every message of a session on one connection
    # Planned: idle_sessions (connections held open during the run), for the 10,000-idle case.

    @property
    def name(self):
        size = f"{self.size // 1024}KB" if self.size % 1024 == 0 else f"{self.size}B"
        return f"c={self.concurrency} {size}" + (" reuse" if self.reuse else "")


KB = 1024
# Message counts give a few seconds per cell for Postfix (the slowest) on a 2-core machine.
DEFAULT_WORKLOADS = [
    Workload(1, 5 * KB, 1500), Workload(10, 5 * KB, 3000), Workload(100, 5 * KB, 3000),
    Workload(1, 100 * KB, 800), Workload(10, 100 * KB, 1500), Workload(100, 100 * KB, 1500),
]


@dataclass
class Result:
    config: str
    workload: str
    run: int
    messages: int
    seconds: float            # start of smtp-source -> sink has every message
    accept_seconds: float     # start of smtp-source -> smtp-source exited
    server_cpu: float         # CPU seconds of the server's process tree in that window
    peak_rss: int             # bytes
    peak_procs: int
    background_cpu: float     # machine busy CPU seconds not used by server, source or sink
    extra: dict = field(default_factory=dict)

    @property
    def msgs_per_s(self):
        return self.messages / self.seconds

    @property
    def accept_per_s(self):
        return self.messages / self.accept_seconds

    @property
    def cpu_per_1k(self):
        return self.server_cpu * 1000.0 / self.messages


# ------------------------------------------------------------------------------------------------
# One cell

class CellError(RuntimeError):
    pass


def run_cell(config_name, workload, messages, run_index, parent, timeout_factor=1.0, verbose=False):
    factory = CONFIGS[config_name][0]
    workdir = tempfile.mkdtemp(prefix=f"moat-bench-{config_name}-", dir=parent)
    os.chmod(workdir, 0o755)
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        os.chown(workdir, nobody.pw_uid, nobody.pw_gid)   # smtp-sink -u nobody writes here
    sink = Sink(workdir)
    server = factory(workdir, config_name)
    source = None
    sampler = None
    try:
        sink.start()
        server.start(sink.port)
        time.sleep(0.2)   # let the server's start-up work (spool scan, children) finish
        cpu0 = tree_cpu_seconds(server.pid) if server.pid else 0.0
        sink_cpu0 = sink.cpu_seconds()
        busy0 = machine_busy_seconds()
        if server.pid:
            sampler = RssSampler(server.pid)
            sampler.start()
        argv = [SMTP_SOURCE, "-4", "-s", str(workload.concurrency), "-m", str(messages),
                "-l", str(workload.size), "-f", SENDER, "-t", RECIPIENT, "-M", CLIENT_NAME]
        if workload.reuse:
            argv.append("-d")
        argv.append(f"127.0.0.1:{server.port}")
        source_err = os.path.join(workdir, "source.err")
        t0 = time.monotonic()
        with open(source_err, "wb") as err:
            source = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                      stdout=subprocess.DEVNULL, stderr=err)
        # Generous: 20 msg/s is far below anything sane on loopback.
        deadline = t0 + (30 + messages / 20.0) * timeout_factor
        t_accept = t_end = None
        source_rusage = None
        while t_accept is None or t_end is None:
            now = time.monotonic()
            if t_accept is None:
                pid, status, ru = os.wait4(source.pid, os.WNOHANG)
                if pid:
                    t_accept = now
                    source.returncode = os.waitstatus_to_exitcode(status)
                    source_rusage = ru
                    if source.returncode != 0:
                        with open(source_err, "rb") as f:
                            text = f.read().decode("utf-8", "replace")[-2000:]
                        raise CellError(f"smtp-source exited with {source.returncode}: {text}")
            if t_end is None and sink.messages() >= messages:
                # The figures stop here, also if smtp-source has not quit yet.
                t_end = now
                cpu1 = tree_cpu_seconds(server.pid) if server.pid else 0.0
                busy1 = machine_busy_seconds()
                sink_cpu = sink.cpu_seconds() - sink_cpu0
            if now > deadline:
                raise CellError(f"timeout: sink has {sink.messages()} of {messages} messages "
                                f"after {now - t0:.1f}s (smtp-source "
                                f"{'done' if t_accept else 'running'})")
            time.sleep(0.005)
        peak = sampler.finish() if sampler else 0
        procs = sampler.peak_procs if sampler else 0
        sampler = None
        source_cpu = (source_rusage.ru_utime + source_rusage.ru_stime) if source_rusage else 0.0
        # Time the server needs to finish up (unlink, last envelope writes) after the sink has
        # the last message: not part of the figures, but reported if it stays busy.
        settle = time.monotonic()
        while not server.settled() and time.monotonic() - settle < 5:
            time.sleep(0.02)
        server_cpu = cpu1 - cpu0
        extra = {"settle_s": round(time.monotonic() - settle, 3),
                 "source_cpu": round(source_cpu, 3), "sink_cpu": round(sink_cpu, 3)}
        res = Result(config=config_name, workload=workload.name, run=run_index,
                     messages=messages, seconds=t_end - t0, accept_seconds=t_accept - t0,
                     server_cpu=server_cpu, peak_rss=peak, peak_procs=procs,
                     background_cpu=max(0.0, (busy1 - busy0) - server_cpu - sink_cpu
                                        - source_cpu),
                     extra=extra)
        if verbose:
            print(f"    {config_name:14} {workload.name:12} run {run_index}: "
                  f"{res.msgs_per_s:8.0f} msg/s  {res.cpu_per_1k:6.2f} CPU s/1k  "
                  f"{peak / 2**20:7.1f} MB  bg {res.background_cpu / res.seconds:4.2f} cores",
                  flush=True)
        return res
    except Exception:
        tail = server.log_tail()
        if tail:
            print(f"--- {config_name} log (tail) ---\n{tail}\n--- end ---", file=sys.stderr)
        raise
    finally:
        if sampler:
            sampler.finish()
        if source and source.returncode is None and source.poll() is None:
            source.kill()
            source.wait()
        try:
            server.stop()
        finally:
            sink.stop()
            if not os.environ.get("MOAT_KEEP_TMP"):
                shutil.rmtree(workdir, ignore_errors=True)


# ------------------------------------------------------------------------------------------------
# Tables

def median(xs):
    return statistics.median(xs) if xs else float("nan")


def fmt_rate(x):
    return f"{x:,.0f}"


def summarize(results, configs, workloads):
    """{(config, workload): {metric: median}} plus the min/max of msg/s."""
    out = {}
    for c in configs:
        for w in workloads:
            rs = [r for r in results if r.config == c and r.workload == w.name]
            if not rs:
                continue
            rates = [r.msgs_per_s for r in rs]
            out[(c, w.name)] = {
                "runs": len(rs),
                "msgs_per_s": median(rates),
                "msgs_per_s_min": min(rates),
                "msgs_per_s_max": max(rates),
                "accept_per_s": median([r.accept_per_s for r in rs]),
                "cpu_per_1k": median([r.cpu_per_1k for r in rs]),
                "peak_rss_mb": median([r.peak_rss / 2**20 for r in rs]),
                "peak_procs": median([r.peak_procs for r in rs]),
                "background_cores": median([r.background_cpu / r.seconds for r in rs]),
            }
    return out


def print_table(rows, header, out=sys.stdout):
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    def line(cells):
        return "  ".join(str(c).rjust(w) if i > 1 else str(c).ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths)))
    print(line(header), file=out)
    print("  ".join("-" * w for w in widths), file=out)
    for r in rows:
        print(line(r), file=out)


def report(summary, configs, workloads, baseline, target, out=sys.stdout):
    print("\nMedians per configuration and workload (end-to-end = smtp-source start until "
          "smtp-sink has every message):\n", file=out)
    rows = []
    for w in workloads:
        for c in configs:
            s = summary.get((c, w.name))
            if not s:
                continue
            server = c != "direct"
            rows.append([w.name, c, fmt_rate(s["msgs_per_s"]),
                         f"{fmt_rate(s['msgs_per_s_min'])}-{fmt_rate(s['msgs_per_s_max'])}",
                         fmt_rate(s["accept_per_s"]),
                         f"{s['cpu_per_1k']:.2f}" if server else "-",
                         f"{s['peak_rss_mb']:.1f}" if server else "-",
                         f"{s['peak_procs']:.0f}" if server else "-",
                         f"{s['background_cores']:.2f}"])
    print_table(rows, ["workload", "server", "e2e msg/s", "(min-max)", "accept msg/s",
                       "CPU s/1k msgs", "peak RSS MB", "procs", "bg cores"], out)
    others = [c for c in configs if c not in (baseline, "direct")]
    if baseline not in configs or not others:
        return
    print(f"\nRatios to {baseline} (msg/s: higher is better, target >= {target:g}x at c>=10; "
          "CPU and RSS: lower is better):\n", file=out)
    rows = []
    for w in workloads:
        b = summary.get((baseline, w.name))
        if not b:
            continue
        for c in others:
            s = summary.get((c, w.name))
            if not s:
                continue
            ratio = s["msgs_per_s"] / b["msgs_per_s"]
            verdict = "-"
            if w.concurrency >= 10:
                verdict = "met" if ratio >= target else "MISSED"
            rows.append([w.name, f"{c}/{baseline}", f"{ratio:.2f}x",
                         f"{s['cpu_per_1k'] / b['cpu_per_1k']:.2f}x",
                         f"{s['peak_rss_mb'] / b['peak_rss_mb']:.2f}x", verdict])
    print_table(rows, ["workload", "ratio", "msg/s", "CPU/1k msgs", "peak RSS", "target"], out)


# ------------------------------------------------------------------------------------------------
# Main

def build_release(build_dir):
    print(f"building Release in {build_dir} ...", flush=True)
    subprocess.run(["cmake", "-S", REPO, "-B", build_dir, "-G", "Ninja",
                    "-DCMAKE_BUILD_TYPE=Release"], check=True, stdout=subprocess.DEVNULL)
    # Only the server binary: the benchmark needs nothing else.
    subprocess.run(["cmake", "--build", build_dir, "--target", "moat"], check=True)


def parse_workloads(specs):
    """"C:SIZE[:MESSAGES]" items, SIZE like 5K or 100K or bytes."""
    out = []
    for spec in specs:
        parts = spec.split(":")
        if len(parts) not in (2, 3):
            raise argparse.ArgumentTypeError(f"workload {spec!r}: want C:SIZE[:MESSAGES]")
        size = parts[1].upper()
        mult = 1
        if size.endswith("KB"):
            size, mult = size[:-2], KB
        elif size.endswith("K"):
            size, mult = size[:-1], KB
        try:
            c, n = int(parts[0]), int(size) * mult
            m = int(parts[2]) if len(parts) == 3 else (1500 if c == 1 else 3000)
        except ValueError:
            raise argparse.ArgumentTypeError(f"workload {spec!r}: want numbers") from None
        if c < 1 or n < 1 or m < 1:
            raise argparse.ArgumentTypeError(f"workload {spec!r}: must be positive")
        out.append(Workload(c, n, m))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(
        description="Delivery benchmark: smtp-source -> server -> smtp-sink, end to end, for "
                    "Moat and a throwaway Postfix relay. Prints medians and ratios.",
        epilog="configurations: " + "; ".join(f"{k}: {v[1]}" for k, v in CONFIGS.items()))
    ap.add_argument("--quick", action="store_true",
                    help="1 run, a quarter of the messages (a smoke test, not a figure)")
    ap.add_argument("--runs", type=int, default=None, help="runs per cell (default 3; "
                    "--quick: 1); the table shows medians")
    ap.add_argument("--scale", type=float, default=None,
                    help="multiply every workload's message count (default 1; --quick: 0.25)")
    ap.add_argument("--configs", default=",".join(DEFAULT_CONFIGS),
                    help=f"comma-separated, from {', '.join(CONFIGS)} "
                         f"(default {','.join(DEFAULT_CONFIGS)})")
    ap.add_argument("--workload", action="append", metavar="C:SIZE[:MESSAGES]",
                    help="instead of the default matrix (c=1,10,100 x 5K,100K); repeatable, "
                         "e.g. --workload 10:5K:3000")
    ap.add_argument("--reuse", action="store_true",
                    help="smtp-source -d: each session sends all its messages over one "
                         "connection (default: a new connection per message)")
    ap.add_argument("--target", type=float, default=4.0,
                    help="required msg/s ratio to the baseline at c>=10 (default 4)")
    ap.add_argument("--build-dir", default=os.path.join(REPO, "build-release"))
    ap.add_argument("--no-build", action="store_true", help="use the existing Release build")
    ap.add_argument("--tmpdir", default=None,
                    help="where spools and queues go (default $TMPDIR or /tmp); must be a real "
                         "disk for fsync to mean anything")
    ap.add_argument("--json", metavar="FILE", help="also write every result to FILE")
    ap.add_argument("-v", "--verbose", action="store_true", help="print every run")
    args = ap.parse_args(argv)

    runs = args.runs if args.runs is not None else (1 if args.quick else 3)
    scale = args.scale if args.scale is not None else (0.25 if args.quick else 1.0)
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    for c in configs:
        if c not in CONFIGS:
            ap.error(f"unknown configuration {c!r} (known: {', '.join(CONFIGS)})")
    try:
        workloads = parse_workloads(args.workload) if args.workload else \
            [Workload(w.concurrency, w.size, w.messages) for w in DEFAULT_WORKLOADS]
    except argparse.ArgumentTypeError as e:
        ap.error(str(e))
    for w in workloads:
        w.reuse = args.reuse
    if runs < 1 or scale <= 0:
        ap.error("--runs and --scale must be positive")
    for tool in (SMTP_SOURCE, SMTP_SINK):
        if not os.access(tool, os.X_OK):
            sys.exit(f"{tool} not found (Debian package postfix)")
    if "postfix" in configs and not backend.postfix_available():
        sys.exit("the postfix configuration needs Postfix installed and root (its master "
                 "starts as root); leave it out with --configs")

    if not args.no_build:
        build_release(args.build_dir)
    moat = os.path.join(args.build_dir, "moat")
    if not os.access(moat, os.X_OK):
        sys.exit(f"{moat} not found; build it or drop --no-build")
    os.environ["MOAT_BIN"] = moat

    parent = tempfile.mkdtemp(prefix="moat-bench-", dir=args.tmpdir)
    os.chmod(parent, 0o755)   # smtp-sink (nobody) and Postfix daemons must reach their dirs
    mnt, fstype, dev = filesystem_of(parent)
    print(f"spools and queues in {parent}: {fstype} on {dev} (mounted at {mnt})"
          + ("  WARNING: not a disk, fsync is free" if fstype in ("tmpfs", "ramfs") else ""))
    mode = "connection reuse (-d)" if args.reuse else "new connection per message"
    print(f"machine: {os.cpu_count()} cores, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; {runs} run(s) per cell, "
          f"messages x{scale:g}, {mode}")

    # SIGTERM/SIGHUP behave like Ctrl-C, so that the finally blocks stop everything.
    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGHUP, interrupt)

    results = []
    t_start = time.monotonic()
    try:
        for run in range(1, runs + 1):
            for w in workloads:
                n = max(10, int(round(w.messages * scale)))
                for c in configs:
                    try:
                        results.append(run_cell(c, w, n, run, parent, verbose=args.verbose))
                    except CellError as e:
                        print(f"  {c} {w.name} run {run}: FAILED: {e}", file=sys.stderr,
                              flush=True)
            if not args.verbose:
                print(f"  run {run}/{runs} done ({time.monotonic() - t_start:.0f}s)", flush=True)
    except KeyboardInterrupt:
        print("\ninterrupted; stopped what was running; partial results follow",
              file=sys.stderr)
    finally:
        shutil.rmtree(parent, ignore_errors=True)

    summary = summarize(results, configs, workloads)
    report(summary, configs, workloads, BASELINE, args.target)
    print(f"\ntotal {time.monotonic() - t_start:.0f}s")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"filesystem": {"path": parent, "type": fstype, "device": dev},
                       "runs": runs, "scale": scale, "reuse": args.reuse,
                       "results": [dict(r.__dict__, msgs_per_s=r.msgs_per_s,
                                        cpu_per_1k=r.cpu_per_1k) for r in results],
                       "summary": [dict(config=c, workload=w, **v)
                                   for (c, w), v in summary.items()]}, f, indent=1)
    expected = len(configs) * len(workloads) * runs
    return 0 if len(results) == expected else 1


if __name__ == "__main__":
    sys.exit(main())
