"""Connection-level defence through a real `moat serve`: rate limits (per address and per
IPv6 /64, connections and recipients), the pre-greet early-talker test, non-SMTP commands,
greylisting, and shared state in a real redis-server: two Moat instances sharing one limit,
and the Redis-down failure modes."""

import os
import shutil
import signal
import socket
import subprocess
import time
import unittest

from harness import LOCAL_DOMAIN, MoatTestCase, free_port

USER = "user@" + LOCAL_DOMAIN


def limit(name, key, counts, rate, per=60, **extra):
    text = (f'[[limit]]\nname = "{name}"\nkey = "{key}"\ncounts = "{counts}"\n'
            f'rate = {rate}\nper = {per}\n')
    for k, v in extra.items():
        text += f"{k} = {v}\n"
    return text


class RedisServer:
    """A private redis-server on a free loopback port, no persistence."""

    def __init__(self, workdir):
        self.port = free_port()
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", workdir, "--daemonize", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("redis-server did not start")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)


class Limits(MoatTestCase):

    def test_connection_limit_per_address_then_refill(self):
        moat = self.start_moat(extra=limit("conn", "client_ip", "connections", 3, per=3))
        for _ in range(3):
            c = moat.connect()
            c.cmd("QUIT")
        c = moat.connect(greet=False)
        r = c.reply()
        self.assertReply(r, 421, "4.7.0")
        self.assertIn("'conn'", r.text)
        moat.wait_log(r"event=limit name=conn key=ip value=\"127\.0\.0\.1\"")
        time.sleep(1.1)  # one token back (3 per 3 s)
        c = moat.connect()  # greeted: would raise on a 421
        c.cmd("QUIT")

    def test_recipient_limit_per_domain_with_exemption(self):
        moat = self.start_moat(
            relay={"domains": [LOCAL_DOMAIN, "other.test"]},
            extra=limit("rcpts", "rcpt_domain", "recipients", 2, exempt='["other.test"]'))
        c = moat.connect()
        c.ehlo()
        self.assertReply(c.cmd("MAIL FROM:<a@sender.test>"), 250)
        self.assertReply(c.cmd(f"RCPT TO:<{USER}>"), 250)
        self.assertReply(c.cmd(f"RCPT TO:<user2@{LOCAL_DOMAIN}>"), 250)
        r = c.cmd(f"RCPT TO:<user3@{LOCAL_DOMAIN}>")
        self.assertReply(r, 450, "4.7.1")
        self.assertIn("'rcpts'", r.text)
        for i in range(4):
            self.assertReply(c.cmd(f"RCPT TO:<u{i}@other.test>"), 250)

    def test_limit_keyed_on_ipv6_prefix(self):
        try:
            with socket.socket(socket.AF_INET6) as probe:
                probe.bind(("::1", 0))
                port = probe.getsockname()[1]
        except OSError:
            self.skipTest("no IPv6 loopback")
        self.start_moat(port=port, server={"listen": [f"[::1]:{port}"]},
                        extra=limit("net6", "client_net", "connections", 2))
        from harness import SmtpClient
        for _ in range(2):
            c = SmtpClient(port, host="::1")
            self.assertReply(c.reply(), 220)
            c.close()
        c = SmtpClient(port, host="::1")
        self.assertReply(c.reply(), 421, "4.7.0")
        c.close()
        self.servers[-1].wait_log(r'event=limit name=net6 key=net value="::/64"')

    def test_config_errors_name_the_line(self):
        moat = self.start_moat()
        bad = os.path.join(self.tmp, "bad.toml")
        with open(moat.config_path, encoding="utf-8") as f:
            text = f.read()
        text += limit("x", "recipient", "connections", 5) + '[greylist]\nenabled = "yes"\n'
        with open(bad, "w", encoding="utf-8") as f:
            f.write(text)
        from harness import moat_bin
        r = subprocess.run([moat_bin(), "config", "check", bad], capture_output=True, text=True,
                           timeout=10)
        self.assertEqual(r.returncode, 1)
        self.assertRegex(r.stderr, r"bad\.toml:\d+: key = \"recipient\" is not known when "
                                   r"connections are counted")
        self.assertRegex(r.stderr, r"bad\.toml:\d+: 'enabled' must be true or false")


class Pregreet(MoatTestCase):

    def test_early_talker_refused_and_patient_client_served_then_remembered(self):
        moat = self.start_moat(extra='[pregreet]\nwait = "600ms"\n')
        s = socket.create_connection(("127.0.0.1", moat.port), timeout=5)
        s.sendall(b"EHLO bot.example\r\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(1024)
            if not chunk:
                break
            data += chunk
        self.assertTrue(data.startswith(b"554 5.7.1 "), data)
        self.assertIn(b"talked before the greeting", data)
        s.close()
        moat.wait_log(r"event=pregreet_violation")
        start = time.monotonic()
        c = moat.connect()
        self.assertGreaterEqual(time.monotonic() - start, 0.55)
        c.cmd("QUIT")
        start = time.monotonic()
        c = moat.connect()  # passed before: no wait now
        self.assertLess(time.monotonic() - start, 0.4)
        c.cmd("QUIT")

    def test_http_request_ends_the_session(self):
        moat = self.start_moat()
        c = moat.connect()
        r = c.cmd("GET / HTTP/1.1")
        self.assertReply(r, 554, "5.7.1")
        self.assertTrue(c.is_closed())


class Greylist(MoatTestCase):

    def test_deferred_then_accepted_after_the_delay(self):
        moat = self.start_moat(extra='[greylist]\nenabled = true\ndelay = 1\n'
                                     'exempt = ["partner.test"]\n')
        c = moat.connect()
        c.ehlo()
        self.assertReply(c.cmd("MAIL FROM:<a@sender.test>"), 250)
        r = c.cmd(f"RCPT TO:<{USER}>")
        self.assertReply(r, 451, "4.7.1")
        self.assertIn("Greylisted", r.text)
        self.assertReply(c.cmd(f"RCPT TO:<{USER}>"), 451)  # too early
        c.cmd("RSET")
        self.assertReply(c.cmd("MAIL FROM:<b@partner.test>"), 250)
        self.assertReply(c.cmd(f"RCPT TO:<{USER}>"), 250)  # exempt sender domain
        time.sleep(1.1)
        c.cmd("RSET")
        self.assertReply(c.cmd("MAIL FROM:<a@sender.test>"), 250)
        self.assertReply(c.cmd(f"RCPT TO:<{USER}>"), 250)


@unittest.skipUnless(shutil.which("redis-server"), "redis-server is not installed")
class SharedState(MoatTestCase):

    def redis(self):
        r = RedisServer(self.tmp)
        self.addCleanup(r.stop)
        return r

    def state(self, port, on_error="allow"):
        return (f'[state]\nbackend = "redis"\nredis = "127.0.0.1:{port}"\n'
                f'timeout = "300ms"\non_error = "{on_error}"\nprefix = "t{port}:"\n')

    def test_two_instances_share_one_limit(self):
        redis = self.redis()
        conf = self.state(redis.port) + limit("shared", "client_ip", "connections", 4, per=600)
        a = self.start_moat(name="a", extra=conf)
        b = self.start_moat(name="b", extra=conf)
        for moat in (a, b, a, b):
            c = moat.connect()
            c.cmd("QUIT")
        for moat in (a, b):
            c = moat.connect(greet=False)
            self.assertReply(c.reply(), 421, "4.7.0")
            c.close()

    def test_greylist_state_is_shared(self):
        redis = self.redis()
        conf = self.state(redis.port) + '[greylist]\nenabled = true\ndelay = 1\n'
        a = self.start_moat(name="a", extra=conf)
        b = self.start_moat(name="b", extra=conf)
        c = a.connect()
        c.ehlo()
        c.cmd("MAIL FROM:<a@sender.test>")
        self.assertReply(c.cmd(f"RCPT TO:<{USER}>"), 451, "4.7.1")
        time.sleep(1.1)
        c = b.connect()  # the retry reaches the other node
        c.ehlo()
        c.cmd("MAIL FROM:<a@sender.test>")
        self.assertReply(c.cmd(f"RCPT TO:<{USER}>"), 250)

    def test_redis_down_allows_by_default_and_tempfails_when_configured(self):
        redis = self.redis()
        port = redis.port
        redis.stop()
        lim = limit("c", "client_ip", "recipients", 100)
        allow = self.start_moat(name="allow", extra=self.state(port) + lim)
        c = allow.connect()
        c.ehlo()
        c.cmd("MAIL FROM:<a@sender.test>")
        start = time.monotonic()
        self.assertReply(c.cmd(f"RCPT TO:<{USER}>"), 250)
        self.assertLess(time.monotonic() - start, 2)
        allow.wait_log(r"event=state_error check=ratelimit on_error=allow")
        strict = self.start_moat(name="strict", extra=self.state(port, "tempfail") + lim)
        c = strict.connect()
        c.ehlo()
        c.cmd("MAIL FROM:<a@sender.test>")
        self.assertReply(c.cmd(f"RCPT TO:<{USER}>"), 451, "4.3.0")

    def test_redis_that_hangs_costs_one_timeout(self):
        # A listener that accepts and never answers: each command waits at most the timeout.
        silent = socket.socket()
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        self.addCleanup(silent.close)
        lim = limit("c", "client_ip", "recipients", 100)
        moat = self.start_moat(extra=self.state(silent.getsockname()[1]) + lim)
        c = moat.connect()
        c.ehlo()
        c.cmd("MAIL FROM:<a@sender.test>")
        start = time.monotonic()
        self.assertReply(c.cmd(f"RCPT TO:<{USER}>"), 250)
        elapsed = time.monotonic() - start
        self.assertGreaterEqual(elapsed, 0.25)
        self.assertLess(elapsed, 1.5)
        moat.wait_log(r"event=redis_error .*error=timeout")


if __name__ == "__main__":
    unittest.main()
