"""Dropping privileges (server.user) after binding; runs only as root."""

import os
import pwd
import re
import socket
import unittest

from harness import LOCAL_DOMAIN, MoatTestCase

USER = "nobody"


def proc_ids(pid, key):
    """(real, effective, saved, filesystem) from /proc/PID/status."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return [int(x) for x in line.split()[1:5]]
    raise AssertionError(f"no {key} line for pid {pid}")


def low_port():
    for port in range(1023, 900, -1):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    raise unittest.SkipTest("no free port below 1024")


def user_exists(name):
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


@unittest.skipUnless(os.geteuid() == 0, "needs root")
@unittest.skipUnless(user_exists(USER), f"no user {USER}")
class DropPrivileges(MoatTestCase):

    def setUp(self):
        super().setUp()
        # The unprivileged user must be able to reach the spool under the temp dir.
        os.chmod(self.tmp, 0o755)

    def test_drops_to_user_and_accepts_mail(self):
        pw = pwd.getpwnam(USER)
        # A privileged port: only root can bind it, so serving on it as USER shows that the
        # bind came first and the drop after.
        m = self.start_moat(server={"user": USER}, port=low_port())
        self.assertEqual(proc_ids(m.pid, "Uid"), [pw.pw_uid] * 4)
        self.assertEqual(proc_ids(m.pid, "Gid"), [pw.pw_gid] * 4)
        with open(f"/proc/{m.pid}/status") as f:
            groups = re.search(r"^Groups:(.*)$", f.read(), re.M).group(1).split()
        self.assertNotIn("0", groups, "root's supplementary groups must be dropped")
        self.assertLess(m.port, 1024)
        self.assertIsNotNone(m.wait_log(rf"event=privileges_dropped user={USER} "))

        c = m.connect()
        c.ehlo()
        self.assertReply(c.cmd("MAIL FROM:<sender@example.org>"), 250)
        self.assertReply(c.cmd(f"RCPT TO:<user@{LOCAL_DOMAIN}>"), 250)
        self.assertReply(c.cmd("DATA"), 354)
        c.send(b"Subject: unprivileged\r\n\r\nhello\r\n.\r\n")
        qid = self.assertQueued(c.reply())
        path = m.spool_path("active", qid)
        self.assertEqual(os.stat(path).st_uid, pw.pw_uid)
        self.assertEqual(m.read_queued(qid).split_received()[1],
                         b"Subject: unprivileged\r\n\r\nhello\r\n")

    def test_root_queued_message_survives_the_switch(self):
        pw = pwd.getpwnam(USER)
        m = self.start_moat()  # as root, no server.user
        c = m.connect()
        c.ehlo()
        self.assertReply(c.cmd("MAIL FROM:<sender@example.org>"), 250)
        self.assertReply(c.cmd(f"RCPT TO:<user@{LOCAL_DOMAIN}>"), 250)
        self.assertReply(c.cmd("DATA"), 354)
        c.send(b"queued by root\r\n.\r\n")
        qid = self.assertQueued(c.reply())
        m.stop()
        self.assertEqual(os.stat(m.spool_path("active", qid)).st_uid, 0)
        m.server_overrides["user"] = USER
        m.start(keep_port=True)
        # The spool is handed over before recovery reads it: the message is still queued,
        # not taken for corrupt.
        self.assertIsNotNone(m.wait_log(r"event=spool_recovered .*queued=1 .*corrupt=0"),
                             m.log_since_start())
        self.assertEqual(m.spool_list("active"), [qid])
        self.assertEqual(m.spool_list("corrupt"), [])
        self.assertEqual(os.stat(m.spool_path("active", qid)).st_uid, pw.pw_uid)

    def test_unknown_user_refuses_to_start(self):
        with self.assertRaises(AssertionError) as cm:
            self.start_moat(server={"user": "no-such-user-moat-it"})
        self.assertIn("does not exist", str(cm.exception))


if __name__ == "__main__":
    unittest.main()
