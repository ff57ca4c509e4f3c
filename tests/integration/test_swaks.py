"""A real SMTP client: swaks sends through STARTTLS and the spooled message is byte-exact."""

import os
import re
import shutil
import subprocess
import unittest

from harness import LOCAL_DOMAIN, MoatTestCase

SWAKS = shutil.which("swaks") or ("/usr/bin/swaks" if os.access("/usr/bin/swaks", os.X_OK)
                                  else None)
SENDER = "sender@example.org"
RCPT = "user@" + LOCAL_DOMAIN

# CRLF line endings, lines that start with a dot (swaks must dot-stuff them, Moat must undo it),
# a line that is a single dot, and no final line break (swaks adds the CRLF before "." itself).
DATA = (b"Subject: swaks byte-exact\r\n"
        b"From: <sender@example.org>\r\n"
        b"To: <user@example.test>\r\n"
        b"\r\n"
        b"first line\r\n"
        b".leading dot line\r\n"
        b"..two dots\r\n"
        b".\r\n"
        b"\ttab and trailing space \r\n"
        b"last line")


@unittest.skipUnless(SWAKS, "swaks not installed")
class Swaks(MoatTestCase):

    def swaks(self, moat, *args):
        cmd = [SWAKS, "--server", f"127.0.0.1:{moat.port}", "--from", SENDER,
               "--helo", "client.example", "--timeout", "10", *args]
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           stdin=subprocess.DEVNULL, timeout=60)
        return p.returncode, p.stdout.decode("utf-8", "replace")

    @staticmethod
    def sent_data(transcript):
        """The DATA content swaks sent over TLS, from its transcript (" ~> " lines between the
        354 and the lone "."), with the dot-stuffing undone (RFC 5321 §4.5.2)."""
        # swaks ends each transcript line with the CRLF it sent or received.
        lines = [l[:-1] if l.endswith("\r") else l for l in transcript.split("\n")]
        start = next(i for i, l in enumerate(lines) if re.match(r"^<~\s+354 ", l))
        out = b""
        for l in lines[start + 1:]:
            m = re.match(r"^ ~> (.*)$", l)
            if not m:
                raise AssertionError(f"unexpected transcript line {l!r}")
            text = m.group(1)
            if text == ".":
                return out
            if text.startswith("."):
                text = text[1:]
            out += text.encode() + b"\r\n"
        raise AssertionError("no end of data in transcript")

    def test_swaks_starttls_byte_exact(self):
        moat = self.start_moat()
        data_file = os.path.join(self.tmp, "message.eml")
        with open(data_file, "wb") as f:
            f.write(DATA)
        rc, out = self.swaks(moat, "--to", RCPT, "--tls", "--data", "@" + data_file)
        self.assertEqual(rc, 0, out)
        self.assertRegex(out, r"(?m)^=== TLS started", out)
        # "<~" marks a line received over TLS: the 250 came through the encrypted channel.
        m = re.search(r"(?m)^<~\s+250 2\.0\.0 .*queued as (\S+)\s*$", out)
        self.assertIsNotNone(m, out)
        qid = m.group(1)
        # The dot lines went out stuffed.
        self.assertIn(" ~> ..leading dot line", out)
        self.assertIn(" ~> ...two dots", out)

        self.assertEqual(moat.spool_list("active"), [qid])
        q = moat.read_queued(qid)
        received, stored = q.split_received()
        # Byte-exact: what swaks sent, and that is the file plus the CRLF that ends its last line.
        self.assertEqual(stored, self.sent_data(out))
        self.assertEqual(stored, DATA + b"\r\n")
        self.assertRegex(received, rb"\bwith ESMTPS\b")
        self.assertRegex(received, rb"TLSv1\.[23]")
        self.assertEqual(q.sender, SENDER)
        self.assertEqual([r[0] for r in q.recipients], [RCPT])
        self.assertEqual(q.fields.get("helo"), "client.example")
        self.assertEqual(q.fields.get("protocol"), "ESMTPS")

    def test_swaks_pipelining_and_body(self):
        moat = self.start_moat()
        rc, out = self.swaks(moat, "--to", f"{RCPT},other@{LOCAL_DOMAIN}", "--tls", "--pipeline",
                             "--body", "pipelined body", "--header", "Subject: piped")
        self.assertEqual(rc, 0, out)
        m = re.search(r"(?m)^<~\s+250 2\.0\.0 .*queued as (\S+)\s*$", out)
        self.assertIsNotNone(m, out)
        q = moat.read_queued(m.group(1))
        stored = q.split_received()[1]
        self.assertEqual(stored, self.sent_data(out))
        self.assertIn(b"\r\n\r\npipelined body\r\n", stored)
        self.assertEqual([r[0] for r in q.recipients], [RCPT, f"other@{LOCAL_DOMAIN}"])

    def test_swaks_relay_denied(self):
        moat = self.start_moat()
        rc, out = self.swaks(moat, "--to", "someone@elsewhere.example", "--tls")
        # swaks exit code 24: no RCPTs accepted.
        self.assertEqual(rc, 24, out)
        self.assertRegex(out, r"(?m)^<~\*\s+554 5\.7\.1 ")
        self.assertEqual(moat.spool_list("active"), [])


if __name__ == "__main__":
    unittest.main()
