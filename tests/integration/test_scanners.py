"""Scanner plugins over ZeroMQ (plugins/PROTOCOL.md) against a real `moat serve`, with the
Python example plugin (plugins/examples/example_scanner.py) as the plugin. Everything runs in the
test's temp dir (ipc:// endpoints) and is stopped by PID. Expected replies come from the
protocol's documented mapping (reject → 554 5.7.1 with the plugin's text; failure → on_error)."""

import os
import signal
import subprocess
import sys
import time
import unittest

from harness import CRLF, LOCAL_DOMAIN, MoatTestCase, dot_stuff

HERE = os.path.dirname(os.path.abspath(__file__))
PLUGIN = os.path.join(HERE, "..", "..", "plugins", "examples", "example_scanner.py")
SENDER = "sender@example.org"
RCPT = "user@" + LOCAL_DOMAIN
# The EICAR test file (a harmless, standard antivirus test string).
EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"


def message(body):
    return dot_stuff(b"From: a@example.org\r\nTo: user@" + LOCAL_DOMAIN.encode() +
                     b"\r\nSubject: scan\r\n\r\n" + body + CRLF)


class ScannerTestCase(MoatTestCase):
    TIMEOUT = 2
    ON_ERROR = "tempfail"

    def setUp(self):
        super().setUp()
        self.endpoint = f"ipc://{self.tmp}/av.sock"
        self.plugins = []
        self.addCleanup(self.stop_plugins)

    def start_moat_with_scanner(self, on_error=None):
        extra = (f'[[scanner]]\nname = "av"\nendpoint = "{self.endpoint}"\n'
                 f'timeout = {self.TIMEOUT}\non_error = "{on_error or self.ON_ERROR}"\n')
        return self.start_moat(extra=extra)

    def start_plugin(self, mode="normal", name="example"):
        log = os.path.join(self.tmp, f"plugin{len(self.plugins)}.log")
        proc = subprocess.Popen(["/usr/bin/python3", PLUGIN, "--endpoint", self.endpoint,
                                 "--name", name, "--log", log, "--mode", mode],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        self.plugins.append(proc)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if "ready" in self.read(log):
                return proc, log
            self.assertIsNone(proc.poll(), "plugin exited")
            time.sleep(0.02)
        self.fail("plugin did not connect")

    @staticmethod
    def read(path):
        try:
            with open(path) as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def stop_plugins(self):
        for p in self.plugins:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGKILL)
            p.wait()


class Verdicts(ScannerTestCase):
    def setUp(self):
        super().setUp()
        self.moat = self.start_moat_with_scanner()
        self.start_plugin()

    def test_eicar_is_refused_naming_the_signature(self):
        c = self.moat.connect()
        r = self.send_message(c, SENDER, [RCPT], message(EICAR))
        self.assertReply(r, 554, "5.7.1")
        self.assertIn("Eicar-Test-Signature", r.text)
        self.assertEqual(self.moat.spool_list("active"), [])
        self.assertTrue(self.moat.wait_log(r"scanner=av .*action=reject"))
        # The session goes on.
        self.assertReply(c.cmd("RSET"), 250)

    def test_clean_message_passes_with_the_plugins_header(self):
        c = self.moat.connect()
        qid = self.assertQueued(self.send_message(c, SENDER, [RCPT], message(b"hello")))
        q = self.moat.read_queued(qid)
        names = [h[0] for h in q.headers]
        self.assertIn("X-Example-Scanner", names)


class PluginKilled(ScannerTestCase):
    def run_killed(self, on_error):
        moat = self.start_moat_with_scanner(on_error)
        proc, log = self.start_plugin(mode="slow")
        c = moat.connect()
        c.ehlo()
        self.assertReply(c.cmd(f"MAIL FROM:<{SENDER}>"), 250)
        self.assertReply(c.cmd(f"RCPT TO:<{RCPT}>"), 250)
        self.assertReply(c.cmd("DATA"), 354)
        t0 = time.monotonic()
        c.send(message(b"hello"))
        deadline = time.monotonic() + 3
        while "request" not in self.read(log) and time.monotonic() < deadline:
            time.sleep(0.01)
        self.assertIn("request", self.read(log), "the plugin never got the request")
        os.kill(proc.pid, signal.SIGKILL)  # mid-scan
        proc.wait()
        r = c.reply(timeout=self.TIMEOUT + 3)
        took = time.monotonic() - t0
        self.assertLess(took, self.TIMEOUT + 1.5, "the deadline was not kept")
        # The session goes on after the failure.
        self.assertReply(c.cmd("RSET"), 250)
        self.assertReply(c.cmd("NOOP"), 250)
        return r, moat

    def test_killed_plugin_tempfails(self):
        r, moat = self.run_killed("tempfail")
        self.assertReply(r, 451, "4.7.1")
        self.assertEqual(moat.spool_list("active"), [])

    def test_killed_plugin_continue_accepts(self):
        r, moat = self.run_killed("continue")
        self.assertQueued(r)


class LoadSharing(ScannerTestCase):
    def test_two_instances_share_the_load(self):
        moat = self.start_moat_with_scanner()
        _, log1 = self.start_plugin(name="one")
        _, log2 = self.start_plugin(name="two")
        c = moat.connect()
        c.ehlo()
        n = 6
        for _ in range(n):
            self.assertQueued(self.send_message(c, SENDER, [RCPT], message(b"hi"), ehlo=False))
        served = [self.read(log).count("request id=") for log in (log1, log2)]
        self.assertEqual(sum(served), n)
        self.assertGreater(served[0], 0, f"instance one served nothing: {served}")
        self.assertGreater(served[1], 0, f"instance two served nothing: {served}")


class Misbehaving(ScannerTestCase):
    TIMEOUT = 1

    def test_garbage_answer_is_a_failure_not_a_crash(self):
        moat = self.start_moat_with_scanner("tempfail")
        self.start_plugin(mode="garbage")
        c = moat.connect()
        t0 = time.monotonic()
        r = self.send_message(c, SENDER, [RCPT], message(b"hello"))
        self.assertReply(r, 451, "4.7.1")
        self.assertLess(time.monotonic() - t0, self.TIMEOUT + 1.5)
        self.assertTrue(moat.running())
        self.assertReply(c.cmd("RSET"), 250)

    def test_no_plugin_at_all_follows_on_error(self):
        moat = self.start_moat_with_scanner("continue")
        c = moat.connect()
        self.assertQueued(self.send_message(c, SENDER, [RCPT], message(b"hello")))
        self.assertTrue(moat.wait_log(r"event=scanner_failed scanner=av .*on_error=continue"))


CLAMD = "/usr/sbin/clamd"


@unittest.skipUnless(os.path.exists(CLAMD), "clamav-daemon is not installed")
class ClamAV(ScannerTestCase):
    """moat-clamav with a private clamd whose only signature is written here: no download."""
    SIGNATURE = "Moat-Test-Eicar"

    def setUp(self):
        super().setUp()
        db = os.path.join(self.tmp, "clamdb")
        os.mkdir(db)
        # An .ndb body signature: name:target(0 = any file):offset(* = anywhere):hex.
        with open(os.path.join(db, "moat-test.ndb"), "w") as f:
            f.write(f"{self.SIGNATURE}:0:*:{EICAR.hex()}\n")
        self.clamd_sock = os.path.join(self.tmp, "clamd.sock")
        conf = os.path.join(self.tmp, "clamd.conf")
        with open(conf, "w") as f:
            f.write(f"LocalSocket {self.clamd_sock}\nDatabaseDirectory {db}\nForeground yes\n"
                    f"LogFile {self.tmp}/clamd.log\nTemporaryDirectory {self.tmp}\nBytecode no\n")
        out = open(os.path.join(self.tmp, "clamd.out"), "w")
        self.clamd = subprocess.Popen([CLAMD, "-c", conf], stdin=subprocess.DEVNULL, stdout=out,
                                      stderr=subprocess.STDOUT)
        out.close()
        self.plugins.append(self.clamd)  # stopped by PID with the plugins
        deadline = time.monotonic() + 20
        while not os.path.exists(self.clamd_sock):
            self.assertIsNone(self.clamd.poll(), "clamd exited: " + self.read(f"{self.tmp}/clamd.log"))
            self.assertLess(time.monotonic(), deadline, "clamd did not start")
            time.sleep(0.02)
        self.moat = self.start_moat_with_scanner()
        bridge = os.path.join(os.path.dirname(self.moat_bin_path()), "moat-clamav")
        with open(os.path.join(self.tmp, "bridge.log"), "w") as log:
            self.bridge = subprocess.Popen([bridge, "--endpoint", self.endpoint, "--clamd",
                                            self.clamd_sock], stdin=subprocess.DEVNULL,
                                           stdout=subprocess.DEVNULL, stderr=log)
        self.plugins.append(self.bridge)
        time.sleep(0.5)  # the bridge connects to Moat's endpoint (ipc: a few ms)

    @staticmethod
    def moat_bin_path():
        from harness import moat_bin
        return moat_bin()

    def test_eicar_refused_with_clamds_signature_name(self):
        c = self.moat.connect()
        r = self.send_message(c, SENDER, [RCPT], message(b"see attached\r\n" + EICAR))
        self.assertReply(r, 554, "5.7.1")
        self.assertIn(self.SIGNATURE, r.text)
        self.assertTrue(self.moat.wait_log(r"scanner=av .*action=reject findings=1"))

    def test_clean_message_passes(self):
        c = self.moat.connect()
        qid = self.assertQueued(self.send_message(c, SENDER, [RCPT], message(b"hello")))
        self.assertIn(("X-Virus-Scanned", "moat-clamav"), self.moat.read_queued(qid).headers)

    def test_clamd_gone_tempfails(self):
        os.kill(self.clamd.pid, signal.SIGKILL)
        self.clamd.wait()
        os.unlink(self.clamd_sock)
        c = self.moat.connect()
        r = self.send_message(c, SENDER, [RCPT], message(b"hello"))
        self.assertReply(r, 451, "4.7.1")
        self.assertTrue(self.moat.wait_log(r"event=scanner_failed scanner=av .*clamd"))


class FileType(ScannerTestCase):
    """moat-filetype: the true type by content, inside a zip, against a policy written here."""

    def setUp(self):
        super().setUp()
        policy = os.path.join(self.tmp, "filetype.policy")
        with open(policy, "w") as f:
            f.write("# test policy\nreject application/pdf\nscore image/* 2\n")
        self.moat = self.start_moat_with_scanner()
        from harness import moat_bin
        tool = os.path.join(os.path.dirname(moat_bin()), "moat-filetype")
        with open(os.path.join(self.tmp, "filetype.log"), "w") as log:
            self.plugins.append(subprocess.Popen(
                [tool, "--endpoint", self.endpoint, "--policy", policy],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log))
        time.sleep(0.5)  # the plugin connects to Moat's endpoint

    @staticmethod
    def with_zip(member_name, member_data):
        import base64
        import io
        import zipfile
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            z.writestr(member_name, member_data)
        b64 = base64.encodebytes(buf.getvalue()).replace(b"\n", b"\r\n")
        return dot_stuff(
            b"From: a@example.org\r\nTo: user@" + LOCAL_DOMAIN.encode() + b"\r\n"
            b"Subject: files\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n"
            b"--b1\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"
            b"--b1\r\nContent-Type: application/zip; name=\"report.zip\"\r\n"
            b"Content-Disposition: attachment; filename=\"report.zip\"\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n" + b64 + b"--b1--\r\n")

    def test_pdf_disguised_as_text_inside_a_zip_is_refused(self):
        pdf = b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog >>\nendobj\ntrailer\n<< >>\n%%EOF\n"
        c = self.moat.connect()
        r = self.send_message(c, SENDER, [RCPT], self.with_zip("invoice.txt", pdf))
        self.assertReply(r, 554, "5.7.1")
        self.assertIn("application/pdf", r.text)
        self.assertIn("report.zip/invoice.txt", r.text)

    def test_text_inside_a_zip_passes(self):
        c = self.moat.connect()
        self.assertQueued(self.send_message(c, SENDER, [RCPT],
                                            self.with_zip("notes.txt", b"just text\n" * 20)))


if __name__ == "__main__":
    unittest.main()
