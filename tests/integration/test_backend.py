"""Self-test of backend.py (PostfixBackend, SinkBackend), without Moat.

Mail goes in with Python's smtplib (and harness.SmtpClient for BDAT) and must come out of the
backends exactly as sent, apart from the headers Postfix adds itself."""

import os
import smtplib
import socket
import ssl
import time
import unittest

import backend
from backend import PostfixBackend, SinkBackend
from harness import SmtpClient

SENDER = "sender@example.org"
USER = "user@example.test"

# A message that exercises transparency: dot-stuffing, a line of just "..", 8-bit UTF-8,
# trailing white space, a folded header, an empty body line, tabs and a long line.
MESSAGE = (
    b"From: Sender <sender@example.org>\r\n"
    b"To: User <user@example.test>\r\n"
    b"Subject: backend self-test\r\n"
    b"X-Folded: first part\r\n"
    b"\tsecond part  \r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n"
    b"\r\n"
    b".leading dot\r\n"
    b"..\r\n"
    b"\r\n"
    b"caf\xc3\xa9 \xe2\x82\xac\ttab   \r\n"
    + b"x" * 900 + b"\r\n"
    b".\r\n"
    b"end\r\n"
)


def listening_ports():
    """Ports in LISTEN state (IPv4 and IPv6), from /proc/net/tcp{,6}."""
    ports = set()
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if parts[3] == "0A":
                        ports.add(int(parts[1].rsplit(":", 1)[1], 16))
        except OSError:
            pass
    return ports


def tls_context(cafile):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile)
    ctx.check_hostname = True
    return ctx


def ehlo_keywords(smtp):
    code, _ = smtp.ehlo("client.example")
    assert code == 250
    return {k.upper() for k in smtp.esmtp_features}


class BackendTestCase(unittest.TestCase):
    def postfix(self, **kw):
        pf = PostfixBackend(**kw)
        self.addCleanup(self._cleanup, pf)
        return pf.start()

    def sink(self, **kw):
        s = SinkBackend(**kw)
        self.addCleanup(self._cleanup, s)
        return s.start()

    def _cleanup(self, b):
        b.cleanup()
        if b.workdir and not os.environ.get("MOAT_KEEP_TMP"):
            self.assertFalse(os.path.exists(b.workdir), "temp dir left behind")

    def smtp(self, b):
        s = smtplib.SMTP(b.host, b.port, local_hostname="client.example", timeout=10)
        self.addCleanup(s.close)
        return s


@unittest.skipUnless(backend.postfix_available(), "Postfix not installed, or not root")
class PostfixBackendTest(BackendTestCase):

    def test_start_stop_by_pid(self):
        pf = self.postfix()
        self.assertLess(pf.start_seconds, 5.0)
        self.assertIn(pf.port, listening_ports())
        pids = pf.pids()
        self.assertIn(pf.master_pid, pids)
        for pid in pids:   # every process runs in our queue dir, i.e. belongs to this instance
            self.assertEqual(os.readlink(f"/proc/{pid}/cwd"), pf.queue_dir)
        # A session in progress (an smtpd child) does not keep the instance alive.
        with socket.create_connection((pf.host, pf.port), timeout=5) as c:
            self.assertTrue(c.recv(512).startswith(b"220 backend.test ESMTP"))
            self.assertGreater(len(pf.pids()), len(pids) - 1)
            pf.stop()
            self.assertEqual(c.recv(512), b"")
        self.assertLess(pf.stop_seconds, 5.0)
        self.assertEqual(pf.pids(), [])
        self.assertFalse(backend._pid_alive(pids[0]))
        self.assertNotIn(pf.port, listening_ports())
        pf.stop()  # twice is fine
        # Installing or running Postfix left nothing on the SMTP port.
        self.assertNotIn(25, listening_ports())

    def test_quick_start_makes_what_postfix_start_makes(self):
        """The fast path (queue dirs made by backend.py + quick-start) matches what the full
        `postfix start` integrity check (post-install create-missing) makes."""
        import grp
        import pwd
        full = self.postfix(full_check=True)
        self.assertLess(full.start_seconds, 5.0)

        def tree(pf):
            """{path relative to the temp dir: (owner, group, mode)} of the queue and data
            directories and every directory in them."""
            out = {}
            for top in (pf.queue_dir, pf.data_dir):
                paths = [top] + [os.path.join(top, n) for n in os.listdir(top)]
                for path in filter(os.path.isdir, paths):
                    st = os.lstat(path)
                    out[os.path.relpath(path, pf.workdir)] = (
                        pwd.getpwuid(st.st_uid).pw_name, grp.getgrgid(st.st_gid).gr_name,
                        oct(st.st_mode & 0o7777))
            return out
        quick = self.postfix()
        self.assertEqual(tree(quick), tree(full))
        s = self.smtp(full)
        self.assertEqual(s.sendmail(SENDER, [USER], MESSAGE), {})
        s.quit()
        self.assertEqual(full.wait_for(1)[0].content, MESSAGE)

    def test_delivery_byte_exact_with_envelope(self):
        pf = self.postfix()
        s = self.smtp(pf)
        self.assertEqual(s.sendmail(SENDER, [USER], MESSAGE), {})
        s.quit()
        [d] = pf.wait_for(1)
        self.assertEqual(d.content, MESSAGE)
        self.assertEqual(d.return_path, SENDER)
        self.assertEqual(d.original_to, USER)
        self.assertEqual(d.delivered_to, USER)
        self.assertEqual(d.protocol, "ESMTP")
        self.assertRegex(d.queue_id, r"^[0-9A-F]{6,}$")
        self.assertEqual([f.split(b":")[0] for f in d.added],
                         [b"Return-Path", b"X-Original-To", b"Delivered-To", b"Received"])
        self.assertIn("by backend.test (Postfix)", d.received)
        self.assertEqual(pf.messages(), [b"".join(d.added) + MESSAGE])
        self.assertEqual(pf.messages(raw=True)[0], d.raw)
        self.assertNotIn(b"\r", d.raw)          # the Maildir file has LF line ends
        self.assertEqual(d.header("Subject"), "backend self-test")
        # No Date/Message-ID added, nothing rewritten (local_header_rewrite_clients empty).
        self.assertIsNone(d.header("Date"))
        self.assertIsNone(d.header("Message-ID"))
        # The envelope as Postfix logged it.
        self.assertIn((d.queue_id, USER, None, "virtual", "sent", "delivered to maildir"),
                      pf.delivery_log())
        self.assertIn("mail FROM:<sender@example.org> size=%d" % len(MESSAGE), pf.commands())
        sess = pf.wait_sessions(1)[-1]
        self.assertEqual(sess["data"], "1")
        self.assertNotIn("bdat", sess)

    def test_smtputf8_and_dsn_notify_orcpt(self):
        sender, rcpt = "s\u00e9nder@example.test", "\u00fcser@example.test"
        pf = self.postfix(users=[sender, rcpt])
        msg = "Subject: \u00fcber\r\nFrom: <s\u00e9nder@example.test>\r\n\r\n\u00e9t\u00e9\r\n"
        msg = msg.encode("utf-8")
        s = self.smtp(pf)
        self.assertIn("SMTPUTF8", ehlo_keywords(s))
        self.assertIn("DSN", ehlo_keywords(s))
        self.assertEqual(s.sendmail(sender, [rcpt], msg, mail_options=["SMTPUTF8"],
                                    rcpt_options=["NOTIFY=SUCCESS",
                                                  "ORCPT=rfc822;orig@example.net"]), {})
        s.quit()
        [d] = pf.wait_for(1, mailbox=rcpt)
        self.assertEqual(d.content, msg)
        self.assertEqual(d.return_path, sender)
        self.assertEqual(d.original_to, rcpt)
        self.assertTrue(d.protocol.startswith("UTF8SMTP"), d.protocol)
        self.assertIn(f"rcpt TO:<{rcpt}> NOTIFY=SUCCESS ORCPT=rfc822;orig@example.net",
                      pf.commands())
        # NOTIFY=SUCCESS: Postfix sends the sender a delivery report that carries the ORCPT.
        [dsn] = pf.wait_for(1, mailbox=sender)
        self.assertEqual(dsn.return_path, "")
        self.assertIn(b"Original-Recipient: rfc822;orig@example.net\r\n", dsn.content)
        self.assertIn(b"Action: delivered\r\n", dsn.content)
        self.assertIn(f"Final-Recipient: utf-8; {rcpt}\r\n".encode(), dsn.content)
        self.assertEqual(len(pf.messages()), 2)
        self.assertEqual(pf.deliveries()[0].mailbox, d.mailbox)  # arrival order

    def test_unknown_user_rejected_at_rcpt(self):
        pf = self.postfix()
        s = self.smtp(pf)
        s.ehlo("client.example")
        self.assertEqual(s.mail(SENDER)[0], 250)
        code, text = s.rcpt("nobody@example.test")
        self.assertEqual(code, 550)
        self.assertTrue(text.startswith(b"5.1.1 <nobody@example.test>"), text)
        code, text = s.rcpt("someone@elsewhere.example")       # no open relay
        self.assertEqual((code, text[:5]), (554, b"5.7.1"))
        s.rset()
        with self.assertRaises(smtplib.SMTPRecipientsRefused):
            s.sendmail(SENDER, ["nobody@example.test"], MESSAGE)
        s.quit()
        time.sleep(0.2)
        self.assertEqual(pf.messages(), [])

    def test_unknown_user_accepted_when_switched_off(self):
        pf = self.postfix(reject_unlisted=False)
        s = self.smtp(pf)
        s.ehlo("client.example")
        s.mail(SENDER)
        self.assertEqual(s.rcpt("nobody@example.test")[0], 250)
        s.rset()
        s.quit()

    def test_recipient_access_4xx_5xx(self):
        pf = self.postfix(recipient_access={"busy@example.test": "452 4.2.2 mailbox full"})
        s = self.smtp(pf)
        s.ehlo("client.example")
        s.mail(SENDER)
        # Postfix puts "<address>: Recipient address rejected: " before the table's text.
        for rcpt, code, text in (("fail5@example.test", 550, b"5.1.1 no such user"),
                                 ("fail4@example.test", 450, b"4.2.0 try later"),
                                 ("busy@example.test", 452, b"4.2.2 mailbox full")):
            self.assertEqual(s.rcpt(rcpt), (code, b"%s <%s>: Recipient address rejected: %s" % (
                text[:5], rcpt.encode(), text[6:])))
        self.assertEqual(s.rcpt(USER)[0], 250)
        self.assertEqual(s.data(MESSAGE)[0], 250)
        s.quit()
        [d] = pf.wait_for(1)
        self.assertEqual(d.content, MESSAGE)

    def test_restart_on_same_port_and_reload(self):
        pf = self.postfix()
        port = pf.port
        s = self.smtp(pf)
        self.assertEqual(s.sendmail(SENDER, [USER], MESSAGE), {})
        s.quit()
        pf.wait_for(1)
        pf.stop()
        with self.assertRaises(ConnectionRefusedError):   # a backend that is down
            socket.create_connection((pf.host, port), timeout=5).close()
        pf.start()
        self.assertEqual(pf.port, port)
        self.assertEqual(len(pf.messages()), 1)          # mail and log survive a restart
        # Change the replies at run time: new sessions get the new table.
        pf.set_recipient_access({USER: "451 4.3.0 come back later"})
        s = self.smtp(pf)
        s.ehlo("client.example")
        s.mail(SENDER)
        self.assertEqual(s.rcpt(USER)[0], 451)
        self.assertEqual(s.rcpt("fail5@example.test")[0], 550)   # defaults stay
        s.quit()

    def test_starttls(self):
        pf = self.postfix(tls=True)
        self.assertTrue(os.path.exists(pf.cert))
        s = self.smtp(pf)
        self.assertIn("STARTTLS", ehlo_keywords(s))
        s.starttls(context=tls_context(pf.cert))   # verified for 127.0.0.1
        cert = s.sock.getpeercert()
        self.assertEqual(cert["subject"], ((("commonName", "backend.test"),),))
        self.assertEqual(cert["subjectAltName"], (("DNS", "backend.test"),
                                                  ("IP Address", "127.0.0.1")))
        self.assertNotIn("STARTTLS", ehlo_keywords(s))
        self.assertEqual(s.sendmail(SENDER, [USER], MESSAGE), {})
        s.quit()
        [d] = pf.wait_for(1)
        self.assertEqual(d.content, MESSAGE)
        self.assertEqual(d.protocol, "ESMTPS")
        self.assertTrue(pf.wait_log(r"TLS connection established from \S+: TLSv1\.[23]"))

    def test_tls_required(self):
        pf = self.postfix(tls_required=True)
        s = self.smtp(pf)
        ehlo_keywords(s)
        code, text = s.mail(SENDER)
        self.assertEqual((code, text[:5]), (530, b"5.7.0"))
        s.starttls(context=tls_context(pf.cert))
        ehlo_keywords(s)
        self.assertEqual(s.mail(SENDER)[0], 250)
        s.quit()

    def bdat_send(self, pf, chunks):
        c = SmtpClient(pf.port)
        self.addCleanup(c.close)
        self.assertEqual(c.reply().code, 220)
        exts = c.extensions(c.ehlo())
        self.assertIn("CHUNKING", exts)
        self.assertEqual(c.cmd(f"MAIL FROM:<{SENDER}>").code, 250)
        self.assertEqual(c.cmd(f"RCPT TO:<{USER}>").code, 250)
        for i, chunk in enumerate(chunks):
            last = " LAST" if i == len(chunks) - 1 else ""
            c.send(b"BDAT %d%s\r\n" % (len(chunk), last.encode()) + chunk)
            r = c.reply()
            self.assertEqual(r.code, 250, str(r))
        self.assertEqual(c.cmd("QUIT").code, 221)

    def test_chunking_offered(self):
        pf = self.postfix()
        s = self.smtp(pf)
        self.assertIn("CHUNKING", ehlo_keywords(s))
        s.quit()
        # BDAT delivers the same bytes: no dot-stuffing, chunks split anywhere (even in CRLF).
        cut1, cut2 = MESSAGE.index(b"\r\n..") + 1, len(MESSAGE) // 2
        self.bdat_send(pf, [MESSAGE[:cut1], MESSAGE[cut1:cut2], MESSAGE[cut2:]])
        [d] = pf.wait_for(1)
        self.assertEqual(d.content, MESSAGE)
        # (Two sessions: their disconnect lines may be logged in either order.)
        [sess] = [x for x in pf.wait_sessions(2) if "mail" in x]
        self.assertEqual(sess["bdat"], "3")
        self.assertNotIn("data", sess)
        self.assertIn("BDAT %d LAST" % (len(MESSAGE) - cut2), pf.commands())
        self.assertTrue(pf.wait_log(r"disconnect from \S+ ehlo=1 mail=1 rcpt=1 bdat=3 quit=1"))

    def test_chunking_and_pipelining_switched_off(self):
        pf = self.postfix(chunking=False, pipelining=False)
        s = self.smtp(pf)
        kws = ehlo_keywords(s)
        self.assertNotIn("CHUNKING", kws)
        self.assertNotIn("PIPELINING", kws)
        self.assertIn("8BITMIME", kws)
        self.assertEqual(s.mail(SENDER)[0], 250)
        self.assertEqual(s.rcpt(USER)[0], 250)
        code, _ = s.docmd("BDAT 5 LAST")   # Postfix hangs up: it cannot skip the chunk
        self.assertEqual(code, 521)
        s.close()
        self.assertEqual(pf.wait_sessions(1)[-1]["bdat"], "0/1")

    def test_arrival_order_and_wait_for(self):
        pf = self.postfix()
        s = self.smtp(pf)
        sent = []
        for i, rcpt in enumerate(["user2@example.test", USER, "user3@example.test", USER]):
            msg = b"Subject: message %d\r\n\r\nbody %d\r\n" % (i, i)
            self.assertEqual(s.sendmail(SENDER, [rcpt], msg), {})
            sent.append((rcpt, msg))
        s.quit()
        got = pf.wait_for(4)
        self.assertEqual([(d.delivered_to, d.content) for d in got], sent)
        self.assertEqual([d.content for d in pf.deliveries(mailbox=USER)],
                         [sent[1][1], sent[3][1]])
        with self.assertRaises(AssertionError):
            pf.wait_for(5, timeout=0.2)

    def test_one_message_many_recipients(self):
        pf = self.postfix()
        s = self.smtp(pf)
        rcpts = [USER, "user2@example.test"]
        self.assertEqual(s.sendmail("", rcpts, MESSAGE), {})   # null sender
        s.quit()
        got = pf.wait_for(2)
        self.assertEqual(sorted(d.delivered_to for d in got), sorted(rcpts))
        self.assertEqual({d.queue_id for d in got}, {got[0].queue_id})
        for d in got:
            self.assertEqual(d.content, MESSAGE)
            self.assertEqual(d.return_path, "")

    def test_what_postfix_changes(self):
        """Documents what cleanup(8)/smtpd(8) of Postfix 3.7 change, so that tests know what
        they cannot compare: Return-Path: and Content-Length: fields of the message are
        dropped, a bare CR becomes a space, a bare LF ends a line."""
        pf = self.postfix()
        c = SmtpClient(pf.port)
        self.addCleanup(c.close)
        c.reply()
        c.ehlo()
        c.cmd(f"MAIL FROM:<{SENDER}>")
        c.cmd(f"RCPT TO:<{USER}>")
        self.assertEqual(c.cmd("DATA").code, 354)
        c.send(b"Subject: x\r\nReturn-Path: <a@b>\r\nContent-Length: 5\r\n\r\n"
               b"bare\rcr\r\nbare\nlf\r\n.\r\n")
        self.assertEqual(c.reply().code, 250)
        [d] = pf.wait_for(1)
        self.assertEqual(d.content, b"Subject: x\r\n\r\nbare cr\r\nbare\r\nlf\r\n")


@unittest.skipUnless(backend.smtp_sink_available(), "smtp-sink not installed")
class SinkBackendTest(BackendTestCase):

    def test_start_stop_by_pid(self):
        sink = self.sink()
        self.assertLess(sink.start_seconds, 5.0)
        self.assertIn(sink.port, listening_ports())
        pid = sink.pid
        self.assertTrue(backend._pid_alive(pid))
        with socket.create_connection((sink.host, sink.port), timeout=5) as c:
            self.assertEqual(c.recv(512), b"220 backend.test ESMTP\r\n")
        sink.stop()
        self.assertFalse(backend._pid_alive(pid))
        self.assertNotIn(sink.port, listening_ports())
        self.assertLess(sink.stop_seconds, 5.0)
        sink.stop()

    def test_restart_on_same_port(self):
        sink = self.sink()
        port = sink.port
        s = self.smtp(sink)
        self.assertEqual(s.sendmail(SENDER, [USER], MESSAGE), {})
        s.quit()
        sink.stop()
        with self.assertRaises(ConnectionRefusedError):
            socket.create_connection((sink.host, port), timeout=5).close()
        sink.start()
        self.assertEqual(sink.port, port)
        s = self.smtp(sink)
        self.assertEqual(s.sendmail(SENDER, [USER], MESSAGE), {})
        s.quit()
        self.assertEqual(len(sink.wait_for(2)), 2)

    def test_ehlo_keywords(self):
        s = self.smtp(self.sink())
        kws = ehlo_keywords(s)
        self.assertEqual(kws, {"PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES", "DSN"})
        s.quit()
        s = self.smtp(self.sink(pipelining=False, eightbitmime=False, dsn=False))
        self.assertEqual(ehlo_keywords(s), {"ENHANCEDSTATUSCODES"})
        s.quit()

    def test_dump(self):
        sink = self.sink()
        s = self.smtp(sink)
        self.assertEqual(s.sendmail(SENDER, [USER, "user2@example.test"], MESSAGE,
                                    mail_options=["BODY=8BITMIME"],
                                    rcpt_options=["NOTIFY=SUCCESS,FAILURE"]), {})
        self.assertEqual(s.sendmail("", [USER], b"Subject: 2\r\n\r\n"), {})
        s.quit()
        m1, m2 = sink.wait_for(2)
        self.assertEqual(m1.data, MESSAGE)
        self.assertEqual(m1.sender, SENDER)
        self.assertEqual(m1.mail, f"<{SENDER}> BODY=8BITMIME")  # no SIZE: not offered
        self.assertEqual(m1.recipients, [USER, "user2@example.test"])
        self.assertEqual(m1.rcpts[0], f"<{USER}> NOTIFY=SUCCESS,FAILURE")
        self.assertEqual(m1.helo, "client.example")
        self.assertEqual(m1.client_addr, "127.0.0.1")
        self.assertEqual((m2.sender, m2.recipients, m2.data), ("", [USER], b"Subject: 2\r\n\r\n"))

    def test_replies(self):
        sink = self.sink(hard_reject=["RCPT"], hard_reply="550 5.1.1 no such user")
        s = self.smtp(sink)
        s.ehlo("client.example")
        s.mail(SENDER)
        self.assertEqual(s.rcpt(USER), (550, b"5.1.1 no such user"))
        s.quit()

        sink = self.sink(soft_reject=["."], soft_reply="451 4.3.0 try again")
        s = self.smtp(sink)
        with self.assertRaises(smtplib.SMTPDataError) as cm:
            s.sendmail(SENDER, [USER], MESSAGE)
        self.assertEqual(cm.exception.smtp_code, 451)
        s.close()
        self.assertEqual(sink.messages()[0].data, MESSAGE)  # dumped all the same

        sink = self.sink(disconnect=["MAIL"])
        s = self.smtp(sink)
        s.ehlo("client.example")
        with self.assertRaises(smtplib.SMTPServerDisconnected):
            s.mail(SENDER)


if __name__ == "__main__":
    unittest.main()
