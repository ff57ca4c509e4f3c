"""Content rules over SMTP: a reject rule refuses at end of data with its reply text, quarantine
and tag rules, SIGHUP reload under load (no message refused because of the reload, the new rule
applies afterwards, a broken rule file keeps the old set and logs file:line), start-up with a
broken rule set, and the `moat rules lint|test` tools."""

import os
import signal
import subprocess
import threading
import time

from harness import (LOCAL_DOMAIN, MoatTestCase, SmtpClient, moat_bin, parse_queue_file,
                     read_bytes, toml_value)

SENDER = "sender@example.org"
RCPT = "user@" + LOCAL_DOMAIN


def rule(id, target, literal, **kw):
    lines = ["[[rule]]", f"id = {toml_value(id)}", f"target = {toml_value(target)}",
             f"literal = {toml_value(literal)}", f"description = {toml_value('test rule ' + id)}"]
    for k, v in kw.items():
        lines.append(f"{k} = {toml_value(v)}")
    return "\n".join(lines) + "\n\n"


def message(subject, body):
    return (f"From: <{SENDER}>\r\nTo: <{RCPT}>\r\nSubject: {subject}\r\n\r\n{body}\r\n.\r\n").encode()


class ContentRules(MoatTestCase):

    def rules_dir(self, files):
        d = os.path.join(self.tmp, "rules")
        os.makedirs(d, exist_ok=True)
        for name in os.listdir(d):
            os.unlink(os.path.join(d, name))
        for name, text in files.items():
            with open(os.path.join(d, name), "w") as f:
                f.write(text)
        return d

    def start_with_rules(self, files):
        d = self.rules_dir(files)
        extra = f"[rules]\ndir = {toml_value(d)}\ncache_dir = {toml_value(os.path.join(self.tmp, 'hscache'))}\n"
        return self.start_moat(extra=extra)

    def test_reject_quarantine_tag_and_clean(self):
        m = self.start_with_rules({"a.toml": (
            rule("fraud", "body", "wire the money", action="reject",
                 reply="Refused: payment fraud pattern") +
            rule("hold", "subject", "hold me", action="quarantine") +
            rule("mark", "body", "tag me", action="tag", tag="suspicious") +
            rule("watch", "body", "trial phrase", action="reject", shadow=True))})
        self.assertIsNotNone(m.wait_log(r"event=rules_loaded .*rules=4"), m.log())

        c = m.connect()
        r = self.send_message(c, SENDER, [RCPT], message("pay", "please wire the money now"))
        self.assertReply(r, 550, "5.7.1")
        self.assertEqual(r.first_text, "Refused: payment fraud pattern")
        self.assertIsNotNone(m.wait_log(r"disposition=rejected .*check=content findings=rule\.fraud"), m.log())
        self.assertEqual(m.spool_list("active"), [])
        self.assertIsNotNone(m.wait_log(r'event=rule_hit rule=fraud where="part 1" snippet="please wire the money'),
                             m.log())

        # The same session goes on: a clean message is queued.
        qid = self.assertQueued(self.send_message(c, SENDER, [RCPT], message("hello", "just a note"),
                                                  ehlo=False))
        self.assertEqual(m.spool_list("active"), [qid])

        qid_q = self.assertQueued(self.send_message(c, SENDER, [RCPT], message("please hold me", "x"),
                                                    ehlo=False))
        self.assertEqual(m.spool_list("quarantine"), [qid_q])

        qid_t = self.assertQueued(self.send_message(c, SENDER, [RCPT], message("t", "tag me please"),
                                                    ehlo=False))
        q = parse_queue_file(read_bytes(m.spool_path("active", qid_t)))
        self.assertIn(("X-Moat-Tag", "suspicious"), q.headers)

        # A shadow reject rule is logged but does not refuse.
        self.assertQueued(self.send_message(c, SENDER, [RCPT], message("s", "a trial phrase here"),
                                            ehlo=False))
        self.assertIsNotNone(m.wait_log(r"event=shadow_rule rule=watch"), m.log())

    def test_reload_under_load(self):
        m = self.start_with_rules({"a.toml": rule("old", "body", "alpha-marker", action="reject",
                                                 reply="old rule")})
        c = m.connect()
        self.assertReply(self.send_message(c, SENDER, [RCPT], message("a", "alpha-marker")), 550)
        c.close()

        stop = threading.Event()
        results = []  # (code, text) of every clean message
        errors = []

        def sender():
            try:
                while not stop.is_set():
                    with SmtpClient(m.port) as cl:
                        cl.reply()
                        cl.ehlo()
                        for _ in range(5):
                            cl.cmd(f"MAIL FROM:<{SENDER}>")
                            cl.cmd(f"RCPT TO:<{RCPT}>")
                            cl.cmd("DATA")
                            cl.send(message("load", "an ordinary message\r\n" + ("x" * 900 + "\r\n") * 3))
                            r = cl.reply()
                            results.append((r.code, r.text))
            except Exception as e:  # reported below
                errors.append(repr(e))

        threads = [threading.Thread(target=sender) for _ in range(3)]
        for t in threads:
            t.start()
        time.sleep(0.3)
        self.rules_dir({"b.toml": rule("new", "body", "beta-marker", action="reject", reply="new rule")})
        os.kill(m.pid, signal.SIGHUP)
        self.assertIsNotNone(m.wait_log(r"event=rules_reloaded .*rules=1", timeout=20), m.log())
        time.sleep(0.3)
        stop.set()
        for t in threads:
            t.join(30)
        self.assertEqual(errors, [])
        self.assertGreater(len(results), 10)
        refused = [r for r in results if r[0] != 250]
        self.assertEqual(refused, [], "messages refused during the reload")

        c = m.connect()
        r = self.send_message(c, SENDER, [RCPT], message("b", "beta-marker"))
        self.assertReply(r, 550, "5.7.1")
        self.assertEqual(r.first_text, "new rule")
        self.assertQueued(self.send_message(c, SENDER, [RCPT], message("a", "alpha-marker"), ehlo=False))

        # A broken file: the old set keeps running and the error names file:line.
        d = self.rules_dir({"b.toml": rule("new", "body", "beta-marker", action="reject", reply="new rule"),
                            "c.toml": "[[rule]]\nid = \"broken\"\ntarget = \"body\"\npattern = 'a(b'\n"
                                      "score = 1\ndescription = \"d\"\n"})
        os.kill(m.pid, signal.SIGHUP)
        bad = os.path.join(d, "c.toml")
        self.assertIsNotNone(m.wait_log(r"event=rules_reload_failed error=\"?" + bad.replace(".", r"\.") +
                                        r":4: Hyperscan refuses the pattern", timeout=20), m.log())
        self.assertIsNotNone(m.wait_log(r"event=rules_reload_failed keeping=previous_rules"), m.log())
        r = self.send_message(c, SENDER, [RCPT], message("b", "beta-marker"), ehlo=False)
        self.assertReply(r, 550)
        self.assertEqual(r.first_text, "new rule")
        self.assertTrue(m.running())

    def test_broken_rules_refuse_to_start(self):
        d = self.rules_dir({"x.toml": "[[rule]]\nid = \"x\"\ntarget = \"nowhere\"\nliteral = \"a\"\n"
                                      "score = 1\ndescription = \"d\"\n"})
        with self.assertRaises(AssertionError) as ctx:
            self.start_moat(extra=f"[rules]\ndir = {toml_value(d)}\n")
        self.assertIn(os.path.join(d, "x.toml") + ":3: unknown target 'nowhere'", str(ctx.exception))

    def test_rules_tools(self):
        d = self.rules_dir({"a.toml": rule("fraud", "body", "wire the money", action="reject") +
                                      rule("lure", "subject", "password", score=3)})
        ok = subprocess.run([moat_bin(), "rules", "lint", d], capture_output=True, text=True, timeout=60)
        self.assertEqual(ok.returncode, 0, ok.stderr)
        self.assertIn("2 rules in 1 files ok", ok.stdout)

        eml = os.path.join(self.tmp, "m.eml")
        with open(eml, "w") as f:
            f.write("From: a@example.org\nSubject: =?UTF-8?B?cGFzc3dvcmQ=?= reset\n\nplease wire the money\n")
        t = subprocess.run([moat_bin(), "rules", "test", "--rules", d, eml], capture_output=True,
                           text=True, timeout=60)
        self.assertEqual(t.returncode, 0, t.stderr)
        self.assertIn("rule.fraud  score=0 action=reject", t.stdout)
        self.assertIn("rule.lure  score=3 action=score", t.stdout)
        self.assertIn("where: subject\n    match: password reset", t.stdout)
        self.assertIn("verdict: reject (550 5.7.1 Message refused by content policy)", t.stdout)

        with open(os.path.join(d, "b.toml"), "w") as f:
            f.write("[[rule]]\nid = \"bad\"\ntarget = \"body\"\npattern = 'x(?=y)'\nscore = 1\ndescription = \"d\"\n")
        bad = subprocess.run([moat_bin(), "rules", "lint", d], capture_output=True, text=True, timeout=60)
        self.assertEqual(bad.returncode, 1)
        self.assertEqual(bad.stderr.strip(), os.path.join(d, "b.toml") +
                         ":4: Hyperscan refuses the pattern: Zero-width assertions are not supported.")


if __name__ == "__main__":
    import unittest
    unittest.main()
