"""Delivery to the internal MTA, end to end with a real Postfix as the backend: byte-exact
relay with the envelope (and RFC 3461 DSN parameters) preserved, BDAT when offered and DATA
otherwise, retries while the backend is down (also across a kill -9 of Moat), failover between
a route's hosts, RFC 3464 bounces for 5xx (never for the null sender), and `moat queue`."""

import email
import email.policy
import json
import os
import random
import re
import subprocess
import time
import unittest

from backend import PostfixBackend, free_port, postfix_available
from harness import (CRLF, HOSTNAME, LOCAL_DOMAIN, MoatTestCase, dot_stuff, moat_bin,
                     split_first_header)

SENDER = "sender@example.test"  # a mailbox on the backend, so bounces can be read there
USER = "user@example.test"
USER2 = "user2@example.test"

BODY = (b"From: <sender@example.test>\r\nTo: <user@example.test>\r\nSubject: relay\r\n\r\n"
        b"first line\r\n.a line that starts with a dot\r\n..two dots\r\n.\t.\r\nlast\r\n")


@unittest.skipUnless(postfix_available(), "postfix is not installed")
class Delivery(MoatTestCase):

    def backend(self, **kw):
        users = kw.pop("users", (USER, USER2, SENDER))
        pf = PostfixBackend(parent=self.tmp, users=users, **kw).start()
        self.addCleanup(pf.cleanup)
        return pf

    def moat_for(self, hosts, **delivery):
        settings = {"retry_min": 1, "retry_max": 2, "connect_timeout": 2}
        settings.update(delivery)
        return self.start_moat(
            delivery=settings,
            routes=[{"domains": [LOCAL_DOMAIN], "hosts": [f"127.0.0.1:{p}" for p in hosts],
                     "tls": "none"}])

    def send(self, moat, rcpts, body=BODY, sender=SENDER, mail_params="", rcpt_params=""):
        c = moat.connect()
        c.ehlo()
        self.assertReply(c.cmd(f"MAIL FROM:<{sender}>{mail_params}"), 250)
        for r in rcpts:
            self.assertReply(c.cmd(f"RCPT TO:<{r}>{rcpt_params}"), 250)
        self.assertReply(c.cmd("DATA"), 354)
        c.send(dot_stuff(body))
        qid = self.assertQueued(c.reply())
        c.cmd("QUIT")
        return qid

    def wait_spool_empty(self, moat, timeout=10.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not any(moat.spool_list(s) for s in ("incoming", "active", "deferred")):
                return
            time.sleep(0.05)
        self.fail("spool not empty: " + str({s: moat.spool_list(s) for s in ("active", "deferred")}))

    def verbs(self, pf):
        return [c.split(" ")[0].upper() for c in pf.commands()]

    def assertRelayed(self, delivery, body, qid, protocol="ESMTP"):
        # What Postfix received is Moat's Authentication-Results and Received headers followed
        # by the client's message.
        self.assertTrue(delivery.content.endswith(body), delivery.content)
        added = delivery.content[:len(delivery.content) - len(body)]
        auth_results, received = split_first_header(added)
        self.assertTrue(auth_results.startswith(f"Authentication-Results: {HOSTNAME};".encode()),
                        added)
        self.assertTrue(received.startswith(b"Received: from "), received)
        self.assertIn(f"(Moat) with {protocol} id {qid}".encode(), received)

    def test_bdat_relay_is_byte_exact_with_envelope_and_dsn_parameters(self):
        pf = self.backend(chunking=True)
        moat = self.moat_for([pf.port])
        qid = self.send(moat, [USER, USER2], mail_params=" RET=HDRS ENVID=env+2B1",
                        rcpt_params=" NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;orig+40example.test")
        got = pf.wait_for(1, timeout=10, mailbox=USER) + pf.wait_for(1, timeout=10, mailbox=USER2)
        for d in got:
            self.assertEqual(d.return_path, SENDER)
            self.assertRelayed(d, BODY, qid)
        # Postfix honoured NOTIFY=SUCCESS, so the parameters reached it: its own success DSN.
        success = pf.wait_for(1, timeout=10, mailbox=SENDER)[0]
        self.assertIn(b"delivery-status", success.content)
        # One transaction, body by BDAT (the backend offered CHUNKING), DSN parameters passed on.
        self.assertIn("BDAT", self.verbs(pf))
        self.assertNotIn("DATA", self.verbs(pf))
        commands = " ".join(pf.commands())
        self.assertIn("RET=HDRS", commands)
        self.assertIn("ENVID=env+2B1", commands)
        self.assertIn("NOTIFY=SUCCESS,FAILURE", commands)
        self.assertIn("ORCPT=rfc822;orig+40example.test", commands)
        self.wait_spool_empty(moat)
        self.assertIn(f"qid={qid} event=removed", moat.log())

    def test_data_with_dot_stuffing_when_the_backend_has_no_chunking(self):
        pf = self.backend(chunking=False)
        moat = self.moat_for([pf.port])
        qid = self.send(moat, [USER])
        d = pf.wait_for(1, timeout=10)[0]
        self.assertRelayed(d, BODY, qid)
        self.assertIn("DATA", self.verbs(pf))
        self.assertNotIn("BDAT", self.verbs(pf))

    def test_smtputf8_message_keeps_its_utf8_envelope(self):
        pf = self.backend(users=("j\u00fcrgen@example.test", SENDER))
        moat = self.moat_for([pf.port])
        body = "Subject: gr\u00fc\u00dfe\r\n\r\nk\u00e4se\r\n".encode()
        qid = self.send(moat, ["j\u00fcrgen@example.test"], body=body, mail_params=" SMTPUTF8")
        d = pf.wait_for(1, timeout=10)[0]
        self.assertRelayed(d, body, qid, protocol="UTF8SMTP")
        self.assertTrue(d.protocol.startswith("UTF8SMTP"), d.protocol)  # Postfix saw SMTPUTF8

    def test_backend_down_defers_then_delivers_also_after_kill_9(self):
        pf = self.backend()
        pf.stop()
        moat = self.moat_for([pf.port])
        qid = self.send(moat, [USER])
        deadline = time.monotonic() + 10
        while qid not in moat.spool_list("deferred") and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertIn(qid, moat.spool_list("deferred"))
        # The admin sees why.
        out = subprocess.run([moat_bin(), "queue", "--config", moat.config_path, "list", "--json"],
                             capture_output=True, text=True, check=True).stdout
        listed = {m["qid"]: m for m in json.loads(out)}
        self.assertEqual(listed[qid]["state"], "deferred")
        self.assertGreaterEqual(listed[qid]["attempts"], 1)
        self.assertIn("connect to 127.0.0.1:", listed[qid]["recipients"][0]["diagnostic"])
        self.assertEqual(listed[qid]["recipients"][0]["state"], "pending")
        # Moat dies hard; the backend comes back; a new Moat delivers what the old one kept.
        moat.kill()
        pf.start()
        moat.start(keep_port=True)
        d = pf.wait_for(1, timeout=15)[0]
        self.assertRelayed(d, BODY, qid)
        self.wait_spool_empty(moat)

    def test_failover_to_the_next_host_of_the_route(self):
        pf = self.backend()
        dead = free_port()
        moat = self.moat_for([dead, pf.port])
        qid = self.send(moat, [USER])
        d = pf.wait_for(1, timeout=10)[0]
        self.assertRelayed(d, BODY, qid)
        self.assertIn(f"relay=127.0.0.1:{dead}", moat.log())  # it did try the first host

    def test_5xx_bounces_to_the_sender_as_multipart_report(self):
        pf = self.backend()
        moat = self.moat_for([pf.port])
        qid = self.send(moat, [USER, "fail5@example.test"])
        got = pf.wait_for(2, timeout=10)
        by_rcpt = {d.original_to: d for d in got}
        self.assertRelayed(by_rcpt[USER], BODY, qid)
        dsn = by_rcpt[SENDER]
        self.assertEqual(dsn.return_path, "")  # from the null sender: never bounced again
        msg = email.message_from_bytes(dsn.content, policy=email.policy.compat32)
        self.assertEqual(msg.get_content_type(), "multipart/report")
        self.assertEqual(msg.get_param("report-type"), "delivery-status")
        parts = msg.get_payload()
        self.assertEqual([p.get_content_type() for p in parts],
                         ["text/plain", "message/delivery-status", "message/rfc822"])
        status = parts[1].as_string()
        self.assertIn("Final-Recipient: rfc822; fail5@example.test", status)
        self.assertIn("Action: failed", status)
        self.assertIn("Status: 5.1.1", status)
        self.assertNotIn(USER, status)  # delivered recipients are not reported
        self.assertIn("Subject: relay", parts[2].as_string())
        self.wait_spool_empty(moat)

    def test_null_sender_is_never_bounced(self):
        pf = self.backend()
        moat = self.moat_for([pf.port])
        qid = self.send(moat, ["fail5@example.test"], sender="")
        self.assertIsNotNone(moat.wait_log(rf"qid={qid} event=no_dsn reason=null-sender", timeout=10))
        self.wait_spool_empty(moat)
        time.sleep(0.5)
        self.assertEqual(pf.messages(), [])

    def test_4xx_recipient_is_retried_while_others_are_done(self):
        pf = self.backend()
        moat = self.moat_for([pf.port])
        qid = self.send(moat, [USER, "fail4@example.test"])
        pf.wait_for(1, timeout=10)
        self.assertIsNotNone(moat.wait_log(rf"qid={qid} event=deferred attempts=1", timeout=10))
        # The delivered recipient is recorded: later attempts carry only the pending one.
        self.assertIsNotNone(moat.wait_log(rf"qid={qid} event=deferred attempts=2", timeout=10))
        time.sleep(0.3)
        self.assertEqual(len(pf.messages(mailbox=USER)), 1)
        self.assertIn(qid, moat.spool_list("deferred"))

    def test_expiry_bounces_once_and_the_bounce_expires_without_a_loop(self):
        pf = self.backend()
        pf.stop()  # never comes back
        moat = self.moat_for([pf.port], max_lifetime=2)
        qid = self.send(moat, [USER])
        self.assertIsNotNone(moat.wait_log(rf"qid={qid} event=expired", timeout=15))
        dsn = moat.wait_log(rf"qid={qid} event=dsn dsn_qid=(\w+) to=<{SENDER}>", timeout=5)
        self.assertIsNotNone(dsn)
        # The DSN (from <>) cannot be delivered either; when it expires, nothing answers it.
        dsn_qid = dsn.group(1)
        self.assertIsNotNone(moat.wait_log(rf"qid={dsn_qid} event=no_dsn reason=null-sender",
                                           timeout=15))
        self.wait_spool_empty(moat, timeout=10)
        self.assertEqual(len(re.findall(r"event=dsn ", moat.log())), 1)

    def test_kill_9_at_random_moments_loses_no_acknowledged_message(self):
        """Several hundred messages; Moat is killed with SIGKILL at random moments and
        restarted. Every message that got its 250 must reach the backend at least once."""
        pf = self.backend()
        moat = self.moat_for([pf.port])
        rng = random.Random(int(os.environ.get("MOAT_SEED", "7")))
        total, acked, kills = 300, set(), 0
        next_kill = rng.randint(20, 80)
        i = 0
        while i < total:
            c = None
            try:
                c = moat.connect()
                c.ehlo()
                for _ in range(10):  # a few messages per connection
                    if i >= total:
                        break
                    body = (f"Subject: load {i}\r\nX-Load-Id: {i}\r\n\r\nmessage {i}\r\n"
                            ).encode()
                    c.send(f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<{USER}>\r\nDATA\r\n".encode())
                    rs = c.replies(3)
                    if [r.code for r in rs] != [250, 250, 354]:
                        break
                    c.send(dot_stuff(body))
                    if c.reply().code == 250:
                        acked.add(i)
                    i += 1
                    if i == next_kill:
                        moat.kill()  # right after a 250, or mid-delivery of earlier ones
                        kills += 1
                        next_kill = i + rng.randint(20, 80)
                        moat.start(keep_port=True)
                        break
            except (OSError, AssertionError, ConnectionError):
                if not moat.running():
                    moat.start(keep_port=True)
            finally:
                if c is not None:
                    c.close()
        self.assertGreaterEqual(kills, 3)
        self.assertGreater(len(acked), total * 0.9)
        # Well under delivery.idle_connection (30 s): deliveries must not wait for idle
        # connections to expire when they could reuse them.
        deadline = time.monotonic() + 20
        seen = {}
        while time.monotonic() < deadline:
            seen = {}
            for d in pf.deliveries(mailbox=USER):
                m = re.search(rb"X-Load-Id: (\d+)", d.content)
                if m:
                    n = int(m.group(1))
                    seen[n] = seen.get(n, 0) + 1
            if acked <= set(seen):
                break
            time.sleep(0.2)
        missing = sorted(acked - set(seen))
        self.assertEqual(missing, [], f"acknowledged but never delivered: {missing}")
        duplicates = sum(n - 1 for n in seen.values())
        # At-least-once: a kill between the backend's 250 and Moat's record repeats a delivery.
        print(f"\ncrash-under-load: sent={total} acked={len(acked)} kills={kills} "
              f"delivered={len(seen)} duplicates={duplicates}")
        self.wait_spool_empty(moat, timeout=30)


if __name__ == "__main__":
    unittest.main()
