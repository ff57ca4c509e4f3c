"""Durability of the spool and start-up recovery; `moat config check`."""

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import unittest

from harness import (LOCAL_DOMAIN, QID_ALPHABET, MoatServer, MoatTestCase, free_port, moat_bin,
                     parse_queue_file, read_bytes)

SENDER = "sender@example.org"
RCPT = "user@" + LOCAL_DOMAIN


class KillAndRestart(MoatTestCase):

    def test_kill9_after_250_keeps_message(self):
        m = self.start_moat()
        c = m.connect()
        content = b"Subject: durable\r\n\r\n..dot\r\n" + (b"z" * 98 + b"\r\n") * 700 + b"end\r\n"
        stuffed = content.replace(b"\r\n.", b"\r\n..")
        qid = self.assertQueued(self.send_message(c, SENDER, [RCPT], stuffed + b".\r\n"))
        # 250 means the message is on disk: kill -9 at once, no chance to flush anything.
        m.kill()
        self.assertEqual(m.spool_list("active"), [qid])
        before = read_bytes(m.spool_path("active", qid))
        m.start(keep_port=True)
        self.assertIsNotNone(m.wait_log(r"event=spool_recovered .*queued=1\b"), m.log())
        self.assertEqual(m.spool_list("active"), [qid])
        self.assertEqual(m.spool_list("corrupt"), [])
        after = read_bytes(m.spool_path("active", qid))
        self.assertEqual(after, before)
        q = parse_queue_file(after)
        self.assertEqual(q.split_received()[1], content)
        self.assertEqual(q.qid, qid)
        self.assertEqual(q.sender, SENDER)
        self.assertEqual([r[0] for r in q.recipients], [RCPT])
        # And the restarted server takes mail again, with a new queue id.
        c = m.connect()
        qid2 = self.assertQueued(self.send_message(c, SENDER, [RCPT], b"again\r\n.\r\n"))
        self.assertNotEqual(qid2, qid)
        self.assertEqual(sorted(m.spool_list("active")), sorted([qid, qid2]))

    def test_kill9_during_data_leaves_nothing_queued(self):
        m = self.start_moat()
        c = m.connect()
        c.ehlo()
        self.assertReply(c.cmd(f"MAIL FROM:<{SENDER}>"), 250)
        self.assertReply(c.cmd(f"RCPT TO:<{RCPT}>"), 250)
        self.assertReply(c.cmd("DATA"), 354)
        c.send(b"Subject: unfinished\r\n\r\n" + b"q" * 100000 + b"\r\n")
        c.pending(0.2)
        m.kill()
        # Never acknowledged: it sits in incoming/, never in active/; restart removes it.
        self.assertEqual(len(m.spool_list("incoming")), 1)
        self.assertEqual(m.spool_list("active"), [])
        m.start(keep_port=True)
        self.assertEqual(m.spool_list("incoming"), [])
        self.assertEqual(m.spool_list("active"), [])

    def test_recovery_removes_incoming_and_moves_corrupt(self):
        m = self.start_moat()
        c = m.connect()
        good = self.assertQueued(self.send_message(c, SENDER, [RCPT], b"good\r\n.\r\n"))
        good_bytes = read_bytes(m.spool_path("active", good))
        m.stop()

        def qid(n):
            return "0" * 11 + QID_ALPHABET[n] + "ZZ"

        leftover = qid(1)
        with open(m.spool_path("incoming", leftover), "wb") as f:
            f.write(b"Received: half a message\r\n")
        corrupt = {
            qid(2): b"not a queue file at all\n",
            qid(3): b"message\r\n" + b"moat-trailer 00000000000000999999\n",  # offset too far
            qid(4): good_bytes[:-10],                                         # truncated
            qid(5): good_bytes,                                 # envelope qid is another's
            qid(6): b"",
        }
        for q, data in corrupt.items():
            with open(m.spool_path("active", q), "wb") as f:
                f.write(data)
        m.start(keep_port=True)
        self.assertIsNotNone(m.wait_log(r"event=spool_recovered "))
        self.assertEqual(m.spool_list("incoming"), [], "unacknowledged leftovers are removed")
        self.assertEqual(m.spool_list("active"), [good])
        self.assertEqual(read_bytes(m.spool_path("active", good)), good_bytes)
        # Never delete what cannot be read: moved aside unchanged.
        self.assertEqual(sorted(m.spool_list("corrupt")), sorted(corrupt))
        for q, data in corrupt.items():
            with self.subTest(qid=q):
                self.assertEqual(read_bytes(m.spool_path("corrupt", q)), data)

    def test_sigterm_lets_a_session_finish(self):
        m = self.start_moat()
        c = m.connect()
        c.ehlo()
        c.send(f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<{RCPT}>\r\nDATA\r\n".encode())
        self.assertEqual([r.code for r in c.replies(3)], [250, 250, 354])
        c.send(b"Subject: in flight\r\n\r\n")
        proc = m.proc
        os.kill(proc.pid, signal.SIGTERM)
        self.assertIsNotNone(m.wait_log(r"event=stopping"))
        # No new sessions once stopping...
        with self.assertRaises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", m.port), timeout=2).close()
        # ...but the one under way may finish its message, and it is queued.
        c.send(b"finished\r\n.\r\n")
        qid = self.assertQueued(c.reply())
        self.assertReply(c.cmd("QUIT"), 221)
        c.close()
        try:
            rc = proc.wait(5)
        except subprocess.TimeoutExpired:
            self.fail("moat did not stop once its last session ended")
        m.proc = None
        self.assertEqual(rc, 0)
        self.assertEqual(m.read_queued(qid).split_received()[1],
                         b"Subject: in flight\r\n\r\nfinished\r\n")

    def test_startup_fails_cleanly(self):
        # A listener that cannot be bound, a spool that cannot be made: exit 1, never "ready".
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            port = busy.getsockname()[1]
            for name, server in (("busy", {}), ("nospool", {"spool_dir": "/proc/moat-it-spool"})):
                with self.subTest(case=name):
                    s = MoatServer(self.tmp, name=name, server=server)
                    s.port = port if name == "busy" else free_port()
                    s.write_config()
                    with open(s.log_path, "wb") as log:
                        p = subprocess.run([moat_bin(), "serve", "--config", s.config_path],
                                           stdout=subprocess.DEVNULL, stderr=log, timeout=30)
                    self.assertEqual(p.returncode, 1, s.log())
                    self.assertNotIn("event=ready", s.log())
                    self.assertIn("event=startup_failed", s.log())

    def test_sigterm_stops_cleanly(self):
        m = self.start_moat()
        c = m.connect()
        self.assertReply(c.cmd("QUIT"), 221)
        c.close()
        self.assertTrue(m.wait_sessions_ended())
        proc = m.proc
        os.kill(proc.pid, signal.SIGTERM)
        try:
            rc = proc.wait(5)
        except subprocess.TimeoutExpired:
            self.fail("moat did not stop within 5s of SIGTERM with no session open")
        m.proc = None
        self.assertEqual(rc, 0)
        self.assertIn("event=stopped", m.log())


class ConfigCheck(unittest.TestCase):

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="moat-it-cfg-")

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def write(self, name, text):
        path = os.path.join(self.tmp, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def check(self, path):
        return subprocess.run([moat_bin(), "config", "check", path], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, timeout=30, text=True)

    def error_lines(self, p, path):
        lines = [l for l in p.stderr.splitlines() if l.strip()]
        rx = re.compile(r"^" + re.escape(path) + r":(\d+): (\S.*)$")
        out = []
        for l in lines:
            m = rx.match(l)
            self.assertIsNotNone(m, f"not FILE:LINE: reason: {l!r}")
            out.append((int(m.group(1)), m.group(2)))
        return out

    def test_good_config(self):
        server = MoatServer(self.tmp, name="x", tls={"min_version": "1.3"},
                            server={"max_message_size": "10M", "bare_newline": "normalize"})
        server.port = 2525
        path = self.write("good.toml", server.config_text())
        p = self.check(path)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(p.stderr, "")

    def test_default_config_checks(self):
        text = subprocess.run([moat_bin(), "config", "default"], stdout=subprocess.PIPE,
                              check=True, timeout=30, text=True).stdout
        p = self.check(self.write("default.toml", text))
        self.assertEqual(p.returncode, 0, p.stderr)

    def test_shipped_example_config_checks(self):
        # deploy/moat.toml names the operator's certificate files; everything else must be valid.
        here = os.path.dirname(os.path.abspath(__file__))
        with open(os.path.join(here, "..", "..", "deploy", "moat.toml"), encoding="utf-8") as f:
            text = f.read()
        text = re.sub(r'(?m)^(cert|key) = .*$', "", text)
        p = self.check(self.write("example.toml", text))
        self.assertEqual(p.returncode, 0, p.stderr)

    def test_bad_values_are_all_reported(self):
        text = "\n".join([
            "[server]",                            # 1
            'listen = ["127.0.0.1:2525"]',         # 2
            "max_recipients = 0",                  # 3: out of range
            'bare_newline = "sometimes"',          # 4: not an allowed value
            "no_such_key = 1",                     # 5: unknown key
            "",                                    # 6
            "[relay]",                             # 7
            'domains = ["example.test"]',          # 8
            'trusted_networks = ["0.0.0.0/0"]',    # 9: an open relay
        ]) + "\n"
        path = self.write("bad.toml", text)
        p = self.check(path)
        self.assertEqual(p.returncode, 1)
        errors = self.error_lines(p, path)
        self.assertEqual(sorted(l for l, _ in errors), [3, 4, 5, 9], p.stderr)
        self.assertEqual(p.stdout, "")

    def test_syntax_error_names_the_line(self):
        text = '[server]\nlisten = ["127.0.0.1:2525"]\n\nmax_recipients = \n'
        path = self.write("syntax.toml", text)
        p = self.check(path)
        self.assertEqual(p.returncode, 1)
        errors = self.error_lines(p, path)
        self.assertEqual([l for l, _ in errors], [4], p.stderr)

    def test_serve_refuses_bad_config(self):
        path = self.write("bad.toml", '[server]\nlisten = ["127.0.0.1:0"]\n')
        p = subprocess.run([moat_bin(), "serve", "--config", path], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=30, text=True)
        self.assertEqual(p.returncode, 1)
        self.assertRegex(p.stderr, re.escape(path) + r":2: ")

    def test_unreadable_cert_and_bad_network(self):
        text = "\n".join([
            "[tls]",                                            # 1
            'cert = "/nonexistent/moat-it/cert.pem"',           # 2
            'key = "/nonexistent/moat-it/key.pem"',             # 3
            "",                                                 # 4
            "[relay]",                                          # 5
            'domains = ["example.test"]',                       # 6
            'trusted_networks = ["10.1.2.3/8"]',                # 7: host bits set
        ]) + "\n"
        path = self.write("tls.toml", text)
        p = self.check(path)
        self.assertEqual(p.returncode, 1)
        self.assertEqual(sorted(l for l, _ in self.error_lines(p, path)), [2, 3, 7], p.stderr)

    def test_missing_file(self):
        path = os.path.join(self.tmp, "nonexistent.toml")
        p = self.check(path)
        self.assertEqual(p.returncode, 1)
        self.assertIn(path, p.stderr)


if __name__ == "__main__":
    unittest.main()
