"""Before-queue proxy mode and recipient callouts, end to end with a real Postfix as the
backend. A proxy listener relays the client's transaction live: the backend's own recipient
validation answers each RCPT, the end-of-data checks run before anything is committed
downstream, and the client gets the backend's final reply; a dead or silent backend gives
451 4.4.1 within the listener's proxy_timeout. In queue mode, [relay] callout = true probes
each new recipient at the backend and caches the answer."""

import socket
import threading
import time
import unittest

from backend import PostfixBackend, free_port, postfix_available
from harness import LOCAL_DOMAIN, MoatTestCase, dot_stuff

SENDER = "sender@example.test"
USER = "user@example.test"
USER2 = "user2@example.test"
BODY = (b"From: <sender@example.test>\r\nTo: <user@example.test>\r\nSubject: proxied\r\n\r\n"
        b"hello\r\n.leading dot\r\n")


class SilentServer:
    """Accepts connections and never says anything: a backend that hangs."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.conns = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(c)

    def close(self):
        self.sock.close()
        for c in self.conns:
            c.close()


@unittest.skipUnless(postfix_available(), "postfix is not installed")
class Proxy(MoatTestCase):

    def backend(self, **kw):
        pf = PostfixBackend(parent=self.tmp, users=(USER, USER2, SENDER), **kw).start()
        self.addCleanup(pf.cleanup)
        return pf

    def proxy_for(self, port, timeout=3):
        return self.start_moat(
            listener={"mode": "proxy", "proxy_timeout": timeout},
            routes=[{"domains": ["*"], "host": f"127.0.0.1:{port}", "tls": "none"}])

    def test_message_gets_the_backends_own_final_reply_and_nothing_is_spooled(self):
        pf = self.backend()
        moat = self.proxy_for(pf.port)
        c = moat.connect()
        c.ehlo()
        self.assertReply(c.cmd(f"MAIL FROM:<{SENDER}> SIZE={len(BODY)}"), 250)
        self.assertReply(c.cmd(f"RCPT TO:<{USER}>"), 250)
        self.assertReply(c.cmd("DATA"), 354)
        c.send(dot_stuff(BODY))
        reply = c.reply()
        # Postfix's "queued as" names Postfix's queue id, not one of Moat's.
        self.assertReply(reply, 250, "2.0.0")
        self.assertRegex(reply.text, r"Ok: .*queued as [0-9A-F]{6,}$")
        got = pf.wait_for(1)
        self.assertTrue(got[0].content.endswith(BODY), got[0].content)
        self.assertIn(b"(Moat) with ESMTP id", got[0].content)
        self.assertIn(f"MAIL FROM:<{SENDER}> SIZE={len(BODY)}", pf.commands())
        self.assertIn(f"RCPT TO:<{USER}>", pf.commands())
        self.assertSpoolEmpty(moat, ("incoming", "active", "deferred", "quarantine"))
        moat.wait_log(r"event=message disposition=relayed .*check=backend")

    def test_forged_authentication_results_never_reach_the_backend(self):
        from harness import HOSTNAME
        pf = self.backend()
        moat = self.proxy_for(pf.port)
        forged = (f"Authentication-Results: {HOSTNAME}; dmarc=pass header.from=bank.test\r\n"
                  f"Authentication-Results: upstream.test; spf=pass\r\n").encode()
        c = moat.connect()
        c.ehlo()
        self.assertReply(c.cmd(f"MAIL FROM:<{SENDER}>"), 250)
        self.assertReply(c.cmd(f"RCPT TO:<{USER}>"), 250)
        self.assertReply(c.cmd("DATA"), 354)
        c.send(dot_stuff(forged + BODY))
        self.assertReply(c.reply(), 250)
        content = pf.wait_for(1)[0].content
        self.assertTrue(content.endswith(b"Authentication-Results: upstream.test; spf=pass\r\n"
                                         + BODY), content)
        self.assertEqual(content.count(f"Authentication-Results: {HOSTNAME};".encode()), 1)
        self.assertNotIn(b"dmarc=pass header.from=bank.test", content)

    def test_backend_refuses_an_unknown_user_at_rcpt_and_takes_the_others(self):
        pf = self.backend()
        moat = self.proxy_for(pf.port)
        c = moat.connect()
        c.ehlo()
        self.assertReply(c.cmd(f"MAIL FROM:<{SENDER}>"), 250)
        r = c.cmd("RCPT TO:<nobody@example.test>")
        self.assertReply(r, 550, "5.1.1")
        self.assertIn("nobody@example.test", r.text)  # the backend's own words
        self.assertReply(c.cmd(f"RCPT TO:<{USER2}>"), 250)
        self.assertReply(c.cmd("DATA"), 354)
        c.send(dot_stuff(BODY))
        self.assertReply(c.reply(), 250)
        got = pf.wait_for(1)
        self.assertEqual([d.original_to for d in got], [USER2])

    def test_backend_4xx_at_end_of_data_reaches_the_client(self):
        pf = self.backend(main={"smtpd_end_of_data_restrictions":
                                "check_sender_access inline:{ {later@example.test = 451 4.7.1 "
                                "Come back later} }"})
        moat = self.proxy_for(pf.port)
        c = moat.connect()
        c.ehlo()
        self.assertReply(c.cmd("MAIL FROM:<later@example.test>"), 250)
        self.assertReply(c.cmd(f"RCPT TO:<{USER}>"), 250)
        self.assertReply(c.cmd("DATA"), 354)
        c.send(dot_stuff(BODY))
        r = c.reply()
        self.assertReply(r, 451, "4.7.1")
        self.assertIn("Come back later", r.text)
        # The same session goes on: the next message is relayed on the same backend connection.
        self.assertReply(c.cmd(f"MAIL FROM:<{SENDER}>"), 250)
        self.assertReply(c.cmd(f"RCPT TO:<{USER}>"), 250)
        self.assertReply(c.cmd("DATA"), 354)
        c.send(dot_stuff(BODY))
        self.assertReply(c.reply(), 250)
        self.assertEqual(len(pf.wait_for(1)), 1)
        self.assertSpoolEmpty(moat, ("incoming", "active", "deferred"))

    def test_message_refused_by_moat_never_reaches_the_backend(self):
        pf = self.backend()
        moat = self.proxy_for(pf.port)
        c = moat.connect()
        c.ehlo()
        self.assertReply(c.cmd(f"MAIL FROM:<{SENDER}>"), 250)
        self.assertReply(c.cmd(f"RCPT TO:<{USER}>"), 250)
        self.assertReply(c.cmd("DATA"), 354)
        c.send(b"Subject: smuggle\r\n\r\nbare\nLF\r\n.\r\n")
        self.assertReply(c.reply(), 550)
        c.cmd("QUIT")
        moat.wait_sessions_ended()
        time.sleep(0.3)
        self.assertEqual(pf.deliveries(), [])
        verbs = [x.split(" ")[0].upper() for x in pf.commands()]
        self.assertNotIn("DATA", verbs)
        self.assertNotIn("BDAT", verbs)
        self.assertIn("RSET", verbs)

    def test_backend_down_gives_451_4_4_1_at_mail(self):
        moat = self.proxy_for(free_port())
        c = moat.connect()
        c.ehlo()
        r = c.cmd(f"MAIL FROM:<{SENDER}>")
        self.assertReply(r, 451, "4.4.1")
        self.assertNotIn("127.0.0.1", r.text)  # internal addresses stay in the log
        moat.wait_log(r"event=proxy_error step=connect")

    def test_silent_backend_gives_451_4_4_1_within_the_timeout(self):
        silent = SilentServer()
        self.addCleanup(silent.close)
        moat = self.proxy_for(silent.port, timeout=1)
        c = moat.connect()
        c.ehlo()
        start = time.monotonic()
        r = c.cmd(f"MAIL FROM:<{SENDER}>", timeout=10)
        elapsed = time.monotonic() - start
        self.assertReply(r, 451, "4.4.1")
        self.assertLess(elapsed, 2.5)
        self.assertGreaterEqual(elapsed, 0.9)

    def test_config_refuses_a_proxy_listener_without_a_backend(self):
        from harness import MoatServer
        s = MoatServer(self.tmp, listener={"mode": "proxy"},
                       routes=[{"domains": ["a.test"], "host": "127.0.0.1:1"},
                               {"domains": ["b.test"], "host": "127.0.0.1:2"}])
        s.port = free_port()
        s.write_config()
        import subprocess
        from harness import moat_bin
        r = subprocess.run([moat_bin(), "config", "check", s.config_path],
                           capture_output=True, text=True, timeout=10)
        self.assertEqual(r.returncode, 1)
        self.assertRegex(r.stderr, r"moat\.toml:\d+: a proxy listener needs a backend")


@unittest.skipUnless(postfix_available(), "postfix is not installed")
class Callout(MoatTestCase):

    def moat_for(self, port, **relay):
        settings = {"callout": True, "callout_timeout": 2}
        settings.update(relay)
        return self.start_moat(
            relay=settings,
            routes=[{"domains": [LOCAL_DOMAIN], "host": f"127.0.0.1:{port}", "tls": "none"}])

    def rcpt(self, moat, address):
        c = moat.connect()
        c.ehlo()
        self.assertReply(c.cmd(f"MAIL FROM:<{SENDER}>"), 250)
        r = c.cmd(f"RCPT TO:<{address}>")
        c.cmd("QUIT")
        return r

    def test_unknown_user_refused_known_accepted_and_answers_cached(self):
        pf = PostfixBackend(parent=self.tmp, users=(USER, SENDER)).start()
        self.addCleanup(pf.cleanup)
        moat = self.moat_for(pf.port)
        r = self.rcpt(moat, "ghost@example.test")
        self.assertReply(r, 550, "5.1.1")
        self.assertReply(self.rcpt(moat, USER), 250)
        self.assertReply(self.rcpt(moat, "Ghost@Example.TEST"), 550, "5.1.1")
        self.assertReply(self.rcpt(moat, USER), 250)
        probes = [x for x in pf.commands() if x.upper().startswith("RCPT")]
        # One probe per address: the second answer of each came from the cache.
        self.assertEqual(len(probes), 2, probes)
        # The probe uses the null sender, so the backend never mails anyone about it.
        self.assertIn("MAIL FROM:<>", pf.commands())

    def test_backend_unreachable_gives_450_4_1_1_and_is_not_cached(self):
        port = free_port()
        moat = self.moat_for(port)
        self.assertReply(self.rcpt(moat, USER), 450, "4.1.1")
        pf = PostfixBackend(parent=self.tmp, users=(USER, SENDER), port=port).start()
        self.addCleanup(pf.cleanup)
        self.assertReply(self.rcpt(moat, USER), 250)

    def test_backend_4xx_gives_450_4_1_1(self):
        pf = PostfixBackend(parent=self.tmp, users=(USER, SENDER)).start()
        self.addCleanup(pf.cleanup)
        moat = self.moat_for(pf.port)
        self.assertReply(self.rcpt(moat, "fail4@example.test"), 450, "4.1.1")

    def test_negative_answer_expires(self):
        pf = PostfixBackend(parent=self.tmp, users=(USER, SENDER)).start()
        self.addCleanup(pf.cleanup)
        moat = self.moat_for(pf.port, callout_negative_ttl=1)
        self.assertReply(self.rcpt(moat, "late@example.test"), 550, "5.1.1")
        pf.users.append("late@example.test")
        pf.reload()
        time.sleep(1.2)
        self.assertReply(self.rcpt(moat, "late@example.test"), 250)


if __name__ == "__main__":
    unittest.main()
