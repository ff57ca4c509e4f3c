"""STARTTLS (RFC 3207) with a certificate made at test time by the openssl CLI."""

import os
import random
import shutil
import ssl
import subprocess
import tempfile
import time
import unittest
import warnings

from harness import HOSTNAME, LOCAL_DOMAIN, ConnectionClosed, MoatTestCase

SENDER = "sender@example.org"
RCPT = "user@" + LOCAL_DOMAIN
OPENSSL = shutil.which("openssl")


def make_cert(directory):
    cert = os.path.join(directory, "cert.pem")
    key = os.path.join(directory, "key.pem")
    subprocess.run(
        [OPENSSL, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-subj", f"/CN={HOSTNAME}", "-addext", f"subjectAltName=DNS:{HOSTNAME}",
         "-days", "2", "-keyout", key, "-out", cert],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=30)
    return cert, key


def client_context(cafile, minimum=ssl.TLSVersion.TLSv1_2, maximum=None):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile)  # the configured certificate, and nothing else
    ctx.check_hostname = True
    ctx.minimum_version = minimum
    if maximum:
        ctx.maximum_version = maximum
    return ctx


@unittest.skipUnless(OPENSSL, "openssl CLI not found")
class StartTls(MoatTestCase):

    @classmethod
    def setUpClass(cls):
        cls.certdir = tempfile.mkdtemp(prefix="moat-it-cert-")
        cls.cert, cls.key = make_cert(cls.certdir)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.certdir, ignore_errors=True)

    def start(self, server=None, **tls):
        cfg = {"cert": self.cert, "key": self.key}
        cfg.update(tls)
        return self.start_moat(tls=cfg, server=server)

    def tls_client(self, moat, ctx=None):
        """Connects, EHLO, STARTTLS, handshake. Returns the client."""
        c = moat.connect()
        ext = c.extensions(c.ehlo())
        self.assertIn("STARTTLS", ext)
        self.assertReply(c.cmd("STARTTLS"), 220)
        c.starttls(ctx or client_context(self.cert))
        return c

    def test_handshake_uses_configured_certificate(self):
        m = self.start()
        c = self.tls_client(m)
        # Verified against the configured certificate (check_hostname on, CERT_REQUIRED).
        with open(self.cert) as f:
            pem = f.read()
        self.assertEqual(c.sock.getpeercert(binary_form=True), ssl.PEM_cert_to_DER_cert(pem))
        self.assertIn(c.sock.version(), ("TLSv1.2", "TLSv1.3"))

    def test_state_reset_after_tls(self):
        m = self.start()
        c = self.tls_client(m)
        # RFC 3207 §4.2: the server forgets everything it knew; the client must EHLO again.
        self.assertReply(c.cmd(f"MAIL FROM:<{SENDER}>"), 503, "5.5.1")
        ext = c.extensions(c.ehlo())
        self.assertNotIn("STARTTLS", ext, "STARTTLS must not be offered over TLS")
        for kw in ("PIPELINING", "SIZE", "8BITMIME", "ENHANCEDSTATUSCODES", "CHUNKING"):
            self.assertIn(kw, ext)
        self.assertReply(c.cmd("STARTTLS"), "5")  # no second TLS layer
        self.assertReply(c.cmd(f"MAIL FROM:<{SENDER}>"), 250)

    def test_transaction_before_tls_is_forgotten(self):
        m = self.start()
        c = m.connect()
        c.ehlo()
        self.assertReply(c.cmd(f"MAIL FROM:<{SENDER}>"), 250)
        # STARTTLS inside a transaction is refused (RFC 3207 §4: after EHLO, not mid-mail).
        self.assertReply(c.cmd("STARTTLS"), 503)
        self.assertReply(c.cmd("RSET"), 250)
        self.assertReply(c.cmd("STARTTLS"), 220)
        c.starttls(client_context(self.cert))
        c.ehlo()
        self.assertReply(c.cmd(f"RCPT TO:<{RCPT}>"), 503, "5.5.1")

    def test_starttls_needs_ehlo(self):
        m = self.start()
        c = m.connect()
        self.assertReply(c.cmd("STARTTLS"), 503)
        self.assertReply(c.cmd("HELO client.example"), 250)
        self.assertReply(c.cmd("STARTTLS"), "5")  # STARTTLS is an ESMTP extension
        c.ehlo()
        self.assertReply(c.cmd("STARTTLS now"), 501)  # RFC 3207 §4: no parameters

    def test_tls11_is_refused(self):
        m = self.start()
        c = m.connect()
        c.ehlo()
        self.assertReply(c.cmd("STARTTLS"), 220)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx = client_context(self.cert, minimum=ssl.TLSVersion.TLSv1,
                                 maximum=ssl.TLSVersion.TLSv1_1)
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")  # let the client offer TLS 1.1 at all
        with self.assertRaises((ssl.SSLError, ConnectionError, OSError)) as cm:
            c.starttls(ctx)
        # The refusal must come from the server (a protocol_version alert), not from a client
        # that found nothing to offer.
        self.assertNotIn("NO_PROTOCOLS_AVAILABLE", str(cm.exception))
        self.assertIsNotNone(m.wait_log(r"event=tls_failed"), "server did not see a handshake")

    def test_min_version_13_refuses_12(self):
        m = self.start(min_version="1.3")
        c = m.connect()
        c.ehlo()
        self.assertReply(c.cmd("STARTTLS"), 220)
        ctx = client_context(self.cert, maximum=ssl.TLSVersion.TLSv1_2)
        with self.assertRaises((ssl.SSLError, ConnectionError, OSError)):
            c.starttls(ctx)
        self.assertIsNotNone(m.wait_log(r"event=tls_failed"))
        c2 = self.tls_client(m)
        self.assertEqual(c2.sock.version(), "TLSv1.3")

    def test_tls12_accepted(self):
        m = self.start()
        c = self.tls_client(m, client_context(self.cert, maximum=ssl.TLSVersion.TLSv1_2))
        self.assertEqual(c.sock.version(), "TLSv1.2")
        c.ehlo()
        self.assertReply(c.cmd("NOOP"), 250)

    def check_injection_discarded(self, injected):
        m = self.start()
        c = m.connect()
        c.ehlo()
        # CVE-2011-0411: commands sent in plaintext together with STARTTLS must not be run
        # as if they had arrived over TLS.
        c.send(b"STARTTLS\r\n" + injected)
        self.assertReply(c.reply(), 220)
        c.starttls(client_context(self.cert))
        c.line("HELP")
        self.assertReply(c.reply(), "21", msg="the first reply over TLS must be HELP's")
        self.assertEqual(c.pending(0.3), b"", "a reply for the injected command arrived")
        return c

    def test_injected_rset_is_discarded(self):
        self.check_injection_discarded(b"RSET\r\n")

    def test_injected_mail_is_discarded(self):
        c = self.check_injection_discarded(f"MAIL FROM:<{SENDER}>\r\n".encode())
        c.ehlo()
        # No transaction is open: the injected MAIL never took effect.
        self.assertReply(c.cmd(f"RCPT TO:<{RCPT}>"), 503, "5.5.1")

    def test_injected_ehlo_mail_rcpt_are_discarded(self):
        c = self.check_injection_discarded(
            f"EHLO evil.example\r\nMAIL FROM:<{SENDER}>\r\nRCPT TO:<{RCPT}>\r\n".encode())
        self.assertReply(c.cmd("DATA"), 503)
        self.assertReply(c.cmd(f"MAIL FROM:<{SENDER}>"), 503, "5.5.1")  # no EHLO over TLS yet

    def test_require_tls(self):
        m = self.start(require=True)
        c = m.connect()
        ext = c.extensions(c.ehlo())
        self.assertIn("STARTTLS", ext)
        # RFC 3207 §4: 530 5.7.0 until the client has issued STARTTLS.
        self.assertReply(c.cmd(f"MAIL FROM:<{SENDER}>"), 530, "5.7.0")
        self.assertReply(c.cmd(f"RCPT TO:<{RCPT}>"), 530, "5.7.0")
        self.assertReply(c.cmd("DATA"), 530, "5.7.0")
        # A BDAT chunk is refused and its octets are still consumed.
        c.send(b"BDAT 6 LAST\r\nQUIT\r\nNOOP\r\n")
        self.assertReply(c.reply(), 530, "5.7.0")
        self.assertReply(c.reply(), 250)
        self.assertReply(c.cmd("NOOP"), 250)
        self.assertReply(c.cmd("STARTTLS"), 220)
        c.starttls(client_context(self.cert))
        c.ehlo()
        qid = self.assertQueued(self.send_message(c, SENDER, [RCPT], b"secret\r\n.\r\n",
                                                  ehlo=False))
        self.assertEqual(m.read_queued(qid).split_received()[1], b"secret\r\n")

    def test_received_header_records_tls(self):
        m = self.start()
        c = self.tls_client(m)
        version, cipher = c.sock.version(), c.sock.cipher()[0]
        qid = self.assertQueued(self.send_message(c, SENDER, [RCPT], b"x\r\n.\r\n"))
        q = m.read_queued(qid)
        received, rest = q.split_received()
        self.assertEqual(rest, b"x\r\n")
        # RFC 3848: ESMTPS for ESMTP over TLS; the version and cipher as a comment.
        self.assertRegex(received, rb"\bwith ESMTPS\b")
        self.assertIn(version.encode(), received)
        self.assertIn(cipher.encode(), received)
        self.assertEqual(q.fields.get("protocol"), "ESMTPS")
        self.assertEqual(q.fields.get("tls", "").split(" "), [version, cipher])

    def test_large_pipelined_messages_over_tls(self):
        m = self.start(server={"max_message_size": "4M"})
        c = self.tls_client(m)
        c.ehlo()
        rnd = random.Random(3207)
        table = bytes(33 + i % 94 for i in range(256))
        content = b"".join((b"." if rnd.random() < 0.1 else b"") +
                           rnd.randbytes(rnd.randrange(0, 990)).translate(table) + b"\r\n"
                           for _ in range(2000))
        stuffed = b"".join((b"." + l if l.startswith(b".") else l) + b"\r\n"
                           for l in content.split(b"\r\n")[:-1])
        half = len(content) // 3
        c.send(f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<{RCPT}>\r\nDATA\r\n".encode() + stuffed +
               f".\r\nMAIL FROM:<{SENDER}>\r\nRCPT TO:<{RCPT}>\r\n".encode() +
               b"BDAT %d\r\n" % half + content[:half] +
               b"BDAT %d LAST\r\n" % (len(content) - half) + content[half:] + b"QUIT\r\n")
        rs = c.read_until_closed(timeout=20)
        self.assertEqual([r.code for r in rs], [250, 250, 354, 250, 250, 250, 250, 250, 221])
        for r in (rs[3], rs[7]):
            q = m.read_queued(self.assertQueued(r))
            self.assertEqual(q.split_received()[1], content)

    def test_ephemeral_certificate(self):
        # No cert/key configured: Moat makes a self-signed one for its host name.
        m = self.start_moat()
        c = m.connect()
        c.ehlo()
        self.assertReply(c.cmd("STARTTLS"), 220)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        c.starttls(ctx)
        der = c.sock.getpeercert(binary_form=True)
        self.assertTrue(der)
        self.assertIn(HOSTNAME.encode(), der)
        c.ehlo()
        self.assertQueued(self.send_message(c, SENDER, [RCPT], b"x\r\n.\r\n", ehlo=False))

    def test_plaintext_after_starttls_220_is_not_tls(self):
        # A client that says STARTTLS and then keeps talking plaintext fails the handshake;
        # the session ends rather than falling back to plaintext.
        m = self.start()
        c = m.connect()
        c.ehlo()
        self.assertReply(c.cmd("STARTTLS"), 220)
        c.line("MAIL FROM:<x@example.org>")
        try:
            data = c.pending(3)
        except ConnectionClosed:
            data = b""
        self.assertNotRegex(data, rb"^250", data)
        self.assertTrue(c.eof, "the server must close after a failed handshake")

    def test_timeout_over_tls(self):
        m = self.start(server={"command_timeout": 1})
        c = self.tls_client(m)
        c.ehlo()
        # RFC 5321 §4.5.3.2.7 timeout, answered over TLS before the close.
        rs = c.read_until_closed(timeout=4)
        self.assertEqual([(r.code, r.enhanced) for r in rs], [(421, "4.4.2")])

    def test_stalled_handshake_is_dropped(self):
        m = self.start(server={"command_timeout": 1})
        c = m.connect()
        c.ehlo()
        self.assertReply(c.cmd("STARTTLS"), 220)
        t0 = time.monotonic()
        # No ClientHello: the server must give up on its own, and say nothing in plaintext.
        self.assertTrue(c.is_closed(4), c.buf)
        self.assertLess(time.monotonic() - t0, 3.5)


if __name__ == "__main__":
    unittest.main()
