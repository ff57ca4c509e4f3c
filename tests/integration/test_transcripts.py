"""SMTP transcripts against a real `moat serve`: the dialogue, PIPELINING, CHUNKING, limits,
sequence errors and the relay checks. Expected values come from the RFCs named at each test and
from the configuration the test writes, never from Moat's own output."""

import email.utils
import os
import re
import resource
import socket
import subprocess
import time
import unittest
from datetime import datetime, timezone

from harness import (CRLF, HOSTNAME, LOCAL_DOMAIN, ConnectionClosed, MoatTestCase, dot_stuff,
                     moat_bin,
                     has_bare_cr_or_lf)

SENDER = "sender@example.org"
RCPT = "user@" + LOCAL_DOMAIN
# Maps any octet to a printable ASCII one (for random message content).
PRINTABLE = bytes(33 + i % 94 for i in range(256))


class HappyPath(MoatTestCase):
    MAX_SIZE = 123456

    def setUp(self):
        super().setUp()
        self.moat = self.start_moat(server={"max_message_size": self.MAX_SIZE})

    def test_greeting_names_the_host(self):
        c = self.moat.connect()
        # RFC 5321 §4.3.1 / §4.1.1.1: the greeting is 220 and starts with the server's name.
        self.assertEqual(c.greeting.code, 220)
        self.assertEqual(c.greeting.lines[0].split(" ")[0], HOSTNAME)

    def test_ehlo_advertises_extensions(self):
        c = self.moat.connect()
        r = c.ehlo()
        self.assertGreater(len(r.lines), 1, "EHLO must be a multi-line reply listing extensions")
        self.assertEqual(r.lines[0].split(" ")[0], HOSTNAME)
        ext = c.extensions(r)
        for kw in ("PIPELINING", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES", "CHUNKING", "DSN",
                   "STARTTLS"):
            self.assertIn(kw, ext, f"{kw} not advertised in {r}")
        # RFC 1870 §4: SIZE with the fixed maximum in octets.
        self.assertIn("SIZE", ext)
        self.assertEqual(ext["SIZE"], str(self.MAX_SIZE))
        # HELO (RFC 5321 §4.1.1.1) is a one-line reply without extensions.
        r = c.cmd("HELO client.example")
        self.assertReply(r, 250)
        self.assertEqual(len(r.lines), 1)

    def test_ehlo_syntax(self):
        c = self.moat.connect()
        self.assertReply(c.cmd("EHLO"), 501)
        self.assertReply(c.cmd("EHLO bad..name"), 501)
        self.assertReply(c.cmd("EHLO [192.0.2.1]"), 250)  # address literal is allowed

    def test_message_is_spooled_byte_exact_with_envelope(self):
        c = self.moat.connect()
        c.ehlo("client.example")
        # RFC 1870 SIZE, RFC 6152 BODY, RFC 3461 RET/ENVID/NOTIFY/ORCPT.
        r = c.cmd(f"MAIL FROM:<{SENDER}> SIZE=100 BODY=8BITMIME RET=HDRS ENVID=QQ+2Bid-1")
        self.assertReply(r, 250, "2.1.0")
        r = c.cmd(f"RCPT TO:<{RCPT}> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;{RCPT}")
        self.assertReply(r, 250, "2.1.5")
        r = c.cmd(f"RCPT TO:<other@{LOCAL_DOMAIN}> NOTIFY=NEVER")
        self.assertReply(r, 250, "2.1.5")
        r = c.cmd("DATA")
        self.assertReply(r, 354)
        content = (b"Subject: test\r\nFrom: <sender@example.org>\r\n\r\n"
                   b"first line\r\n.foo starts with a dot\r\n..\r\n.\tx\r\n\r\n"
                   b"caf\xc3\xa9 8bit\r\n")
        c.send(dot_stuff(content))
        qid = self.assertQueued(c.reply())
        self.assertReply(c.cmd("QUIT"), 221)
        self.assertTrue(c.is_closed(), "server must close after 221 (RFC 5321 4.1.1.10)")

        self.assertEqual(self.moat.spool_list("active"), [qid])
        self.assertEqual(self.moat.spool_list("incoming"), [])
        q = self.moat.read_queued(qid)
        received, rest = q.split_received()
        # The stored message is Moat's Received header followed by the content exactly as the
        # client meant it: dot-stuffing undone, the final CRLF before "." kept (RFC 5321 4.1.1.4).
        self.assertEqual(rest, content)
        self.assertTrue(received.startswith(b"Received: from client.example ("), received)
        self.assertIn(b"[127.0.0.1]", received)
        self.assertIn(f"by {HOSTNAME}".encode(), received)
        self.assertRegex(received, rb"\bwith ESMTP\b")
        self.assertIn(b"id " + qid.encode(), received)
        self.assertFalse(has_bare_cr_or_lf(received))
        # RFC 5321 §4.4: the time stamp follows the last ";" and is an RFC 5322 date.
        date = received.rsplit(b";", 1)[1].strip().decode()
        when = email.utils.parsedate_to_datetime(date)
        self.assertLess(abs((datetime.now(timezone.utc) - when).total_seconds()), 300)

        self.assertEqual(q.qid, qid)
        self.assertEqual(q.sender, SENDER)
        self.assertEqual(q.fields.get("client"), "127.0.0.1")
        self.assertEqual(q.fields.get("helo"), "client.example")
        self.assertEqual(q.fields.get("protocol"), "ESMTP")
        self.assertEqual(q.fields.get("body"), "8BITMIME")
        self.assertEqual(q.fields.get("ret"), "HDRS")
        self.assertEqual(q.fields.get("envid"), "QQ+2Bid-1")
        self.assertNotIn("tls", q.fields)
        self.assertEqual(q.recipients, [(RCPT, "SUCCESS,FAILURE", f"rfc822;{RCPT}"),
                                        (f"other@{LOCAL_DOMAIN}", "NEVER", "")])
        self.assertLess(abs(int(q.fields["arrival"]) - time.time()), 300)
        # One key=value log line tells what happened to the message.
        line = self.moat.wait_log(rf"(?m)^.* qid={qid} event=message .*$")
        self.assertIsNotNone(line, "no event=message line for the queued message")
        self.assertRegex(line.group(0), r" disposition=queued ")
        self.assertRegex(line.group(0), rf" from=<{re.escape(SENDER)}> ")
        self.assertRegex(line.group(0), r" nrcpt=2 ")

    def test_single_recipient_received_names_it(self):
        c = self.moat.connect()
        qid = self.assertQueued(self.send_message(c, SENDER, [RCPT], b"x\r\n.\r\n"))
        received, rest = self.moat.read_queued(qid).split_received()
        self.assertEqual(rest, b"x\r\n")
        self.assertIn(f"for <{RCPT}>".encode(), received)

    def test_null_sender_and_two_messages_in_one_session(self):
        c = self.moat.connect()
        q1 = self.assertQueued(self.send_message(c, "", [RCPT], b"one\r\n.\r\n"))
        # RFC 5321 §4.1.4: after a message the session is ready for the next MAIL.
        q2 = self.assertQueued(self.send_message(c, SENDER, [RCPT], b"two\r\n.\r\n", ehlo=False))
        self.assertNotEqual(q1, q2)
        self.assertEqual(sorted(self.moat.spool_list("active")), sorted([q1, q2]))
        self.assertEqual(self.moat.read_queued(q1).sender, "")
        self.assertEqual(self.moat.read_queued(q1).split_received()[1], b"one\r\n")
        self.assertEqual(self.moat.read_queued(q2).split_received()[1], b"two\r\n")

    def test_helo_session_is_plain_smtp(self):
        c = self.moat.connect()
        self.assertReply(c.cmd("HELO old.example"), 250)
        qid = self.assertQueued(self.send_message(c, SENDER, [RCPT], b"x\r\n.\r\n", ehlo=False))
        q = self.moat.read_queued(qid)
        # RFC 3848 / RFC 5321 §4.4: "with SMTP" after HELO, "with ESMTP" after EHLO.
        self.assertRegex(q.split_received()[0], rb"\bwith SMTP\b")
        self.assertEqual(q.fields.get("protocol"), "SMTP")
        self.assertEqual(q.fields.get("helo"), "old.example")

    def test_dsn_parameters(self):
        self.moat = self.start_moat(server={"max_bad_commands": 100})
        c = self.moat.connect()
        c.ehlo()
        bad_mail = ["RET=ALL", "RET", "ENVID=", "ENVID=a=b", "ENVID=" + "x" * 101,
                    "ENVID=bad+zz"]
        for p in bad_mail:
            with self.subTest(mail=p):
                self.assertReply(c.cmd(f"MAIL FROM:<{SENDER}> {p}"), 501)
        self.assertReply(c.cmd(f"MAIL FROM:<{SENDER}> RET=FULL ENVID=a%b+2Bc"), 250)
        # RFC 3461 §4.1: NEVER stands alone; the others are a comma list without repeats.
        bad_rcpt = ["NOTIFY=NEVER,SUCCESS", "NOTIFY=SOMETIMES", "NOTIFY=SUCCESS,SUCCESS",
                    "NOTIFY=", "ORCPT=user@example.test", "ORCPT=;user@example.test",
                    "ORCPT=rfc822;bad+zz"]
        for p in bad_rcpt:
            with self.subTest(rcpt=p):
                self.assertReply(c.cmd(f"RCPT TO:<{RCPT}> {p}"), 501)
        self.assertReply(c.cmd(f"RCPT TO:<{RCPT}> NOTIFY=DELAY,FAILURE "
                               f"ORCPT=rfc822;odd%name+2Bx@example.test"), 250)
        self.assertReply(c.cmd("DATA"), 354)
        c.send(b"x\r\n.\r\n")
        q = self.moat.read_queued(self.assertQueued(c.reply()))
        # Kept as received (xtext), through the envelope's own escaping.
        self.assertEqual(q.fields.get("envid"), "a%b+2Bc")
        self.assertEqual(q.fields.get("ret"), "FULL")
        self.assertEqual(q.recipients, [(RCPT, "DELAY,FAILURE", "rfc822;odd%name+2Bx@example.test")])

    def test_enhanced_status_codes_everywhere(self):
        self.moat = self.start_moat(server={"max_bad_commands": 100})
        c = self.moat.connect()
        c.ehlo()
        # RFC 2034 §3: once ENHANCEDSTATUSCODES is advertised, every 2xx/4xx/5xx reply other
        # than the greeting and the HELO/EHLO replies carries an RFC 3463 code of its class.
        script = [b"NOOP", b"RSET", b"VRFY someone", b"EXPN list", b"HELP", b"XYZZY",
                  b"MAIL FROM:bad", b"MAIL FROM:<sender@example.org> FOO=1",
                  b"RCPT TO:<user@example.test>", b"DATA", b"STARTTLS now",
                  b"MAIL FROM:<sender@example.org>", b"MAIL FROM:<sender@example.org>",
                  b"RCPT TO:<user@elsewhere.example>", b"RCPT TO:user", b"RCPT TO:<postmaster>",
                  b"RCPT TO:<user@example.test> NOTIFY=BAD", b"DATA x", b"RSET x", b"VRFY",
                  b"NOOP " + b"n" * 600, b"BDAT x1", ]
        for line in script:
            with self.subTest(command=line[:40]):
                r = c.cmd(line)
                self.assertIsNotNone(r.enhanced, f"{line[:40]!r} -> {r}")
                self.assertEqual(r.enhanced[0], str(r.code)[0])
        c = self.moat.connect()
        c.ehlo()
        qid = self.assertQueued(self.send_message(c, SENDER, [RCPT], b"x\r\n.\r\n", ehlo=False))
        c.send(f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<{RCPT}>\r\nBDAT 3\r\nab\nBDAT 0 LAST\r\n"
               "QUIT\r\n".encode())
        for r in c.read_until_closed():
            self.assertIsNotNone(r.enhanced, str(r))
        self.assertTrue(qid)

    def test_rset_forgets_the_transaction(self):
        c = self.moat.connect()
        c.ehlo()
        self.assertReply(c.cmd(f"MAIL FROM:<{SENDER}>"), 250)
        self.assertReply(c.cmd(f"RCPT TO:<{RCPT}>"), 250)
        self.assertReply(c.cmd("RSET"), 250, "2.0.0")
        # RFC 5321 §4.1.1.5: after RSET there is no sender and no recipient.
        self.assertReply(c.cmd(f"RCPT TO:<{RCPT}>"), 503, "5.5.1")
        self.assertReply(c.cmd("NOOP"), 250)
        self.assertSpoolEmpty(self.moat)

    def test_pipelining_whole_transaction_in_one_write(self):
        c = self.moat.connect()
        c.ehlo()
        content = b"Subject: pipelined\r\n\r\n..dot\r\nbody\r\n"
        batch = (f"MAIL FROM:<{SENDER}>\r\n"
                 f"RCPT TO:<a@{LOCAL_DOMAIN}>\r\n"
                 f"RCPT TO:<b@elsewhere.example>\r\n"
                 f"RCPT TO:<c@{LOCAL_DOMAIN}>\r\n"
                 "DATA\r\n").encode() + dot_stuff(content) + b"NOOP\r\nQUIT\r\n"
        c.send(batch)
        replies = c.read_until_closed()
        # RFC 2920 §3.1: one reply per command, in the order the commands were sent.
        self.assertEqual([r.code for r in replies], [250, 250, 554, 250, 354, 250, 250, 221],
                         "\n".join(map(str, replies)))
        self.assertEqual(replies[2].enhanced, "5.7.1")
        qid = self.assertQueued(replies[5])
        q = self.moat.read_queued(qid)
        self.assertEqual(q.split_received()[1], content)
        self.assertEqual([r[0] for r in q.recipients], [f"a@{LOCAL_DOMAIN}", f"c@{LOCAL_DOMAIN}"])

    def test_pipelining_two_transactions(self):
        c = self.moat.connect()
        c.ehlo()
        c.send(f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<{RCPT}>\r\nDATA\r\n")
        self.assertEqual([r.code for r in c.replies(3)], [250, 250, 354])
        c.send(b"first\r\n.\r\n" + f"RSET\r\nMAIL FROM:<{SENDER}>\r\nRCPT TO:<{RCPT}>\r\nDATA\r\n"
               .encode())
        rs = c.replies(5)
        self.assertEqual([r.code for r in rs], [250, 250, 250, 250, 354])
        q1 = self.assertQueued(rs[0])
        c.send(b"second\r\n.\r\nQUIT\r\n")
        rs = c.read_until_closed()
        self.assertEqual([r.code for r in rs], [250, 221])
        q2 = self.assertQueued(rs[0])
        self.assertEqual(self.moat.read_queued(q1).split_received()[1], b"first\r\n")
        self.assertEqual(self.moat.read_queued(q2).split_received()[1], b"second\r\n")

    def test_vrfy_expn_help_noop(self):
        c = self.moat.connect()
        c.ehlo()
        # RFC 5321 §3.5.3: 252 neither confirms nor denies the mailbox.
        self.assertReply(c.cmd(f"VRFY {RCPT}"), 252)
        self.assertReply(c.cmd("VRFY nosuchuser"), 252)
        r = c.cmd("EXPN staff")
        self.assertIn(r.code, (252, 502, 550), str(r))
        self.assertReply(c.cmd("HELP"), "21")  # 211 or 214
        self.assertReply(c.cmd("NOOP some argument"), 250)
        self.assertReply(c.cmd("noop"), 250)  # verbs are case-insensitive (RFC 5321 §2.4)


class Chunking(MoatTestCase):
    """RFC 3030 BDAT."""

    def setUp(self):
        super().setUp()
        self.moat = self.start_moat(server={"max_message_size": 50000})
        self.c = self.moat.connect()
        self.c.ehlo()

    def begin(self):
        self.assertReply(self.c.cmd(f"MAIL FROM:<{SENDER}> BODY=8BITMIME"), 250)
        self.assertReply(self.c.cmd(f"RCPT TO:<{RCPT}>"), 250)

    def bdat(self, data, last=False):
        self.c.send(b"BDAT %d%s\r\n" % (len(data), b" LAST" if last else b"") + data)
        return self.c.reply()

    def test_chunks_are_stored_byte_exact(self):
        self.begin()
        # No dot-stuffing in BDAT: "..x" and "." lines are content. A CRLF split over two
        # chunks is still a CRLF.
        chunks = [b"Subject: chunked\r\n\r\n..x\r\n.\r\n", b"middle\r", b"\nlast line\r\n"]
        for ch in chunks[:-1]:
            r = self.bdat(ch)
            self.assertReply(r, 250)
            self.assertIn(str(len(ch)), r.text)  # RFC 3030 §2: reply reports the octets received
        qid = self.assertQueued(self.bdat(chunks[-1], last=True))
        self.assertEqual(self.moat.read_queued(qid).split_received()[1], b"".join(chunks))

    def test_bdat_zero_last_ends_message(self):
        self.begin()
        body = b"Subject: z\r\n\r\nhello\r\n"
        self.assertReply(self.bdat(body), 250)
        qid = self.assertQueued(self.bdat(b"", last=True))
        self.assertEqual(self.moat.read_queued(qid).split_received()[1], body)

    def test_pipelined_bdat(self):
        body1, body2 = b"part one\r\n", b"part two\r\n"
        self.c.send(f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<{RCPT}>\r\n".encode() +
                    b"BDAT %d\r\n%sBDAT %d LAST\r\n%sNOOP\r\n" % (len(body1), body1, len(body2),
                                                                   body2))
        rs = self.c.replies(5)
        self.assertEqual([r.code for r in rs], [250, 250, 250, 250, 250])
        qid = self.assertQueued(rs[3])
        self.assertEqual(self.moat.read_queued(qid).split_received()[1], body1 + body2)

    def test_data_after_bdat_is_refused(self):
        self.begin()
        self.assertReply(self.bdat(b"abc\r\n"), 250)
        # RFC 3030 §2: DATA and BDAT cannot be mixed in one transaction.
        self.assertReply(self.c.cmd("DATA"), 503)
        self.assertReply(self.c.cmd("RSET"), 250)
        self.assertSpoolEmpty(self.moat)

    def test_bdat_without_mail_consumes_its_octets(self):
        # The chunk holds command lines: if they were read as commands they would be answered
        # (and QUIT would close the session).
        payload = f"RSET\r\nMAIL FROM:<{SENDER}>\r\nRCPT TO:<{RCPT}>\r\nQUIT\r\n".encode()
        self.c.send(b"BDAT %d LAST\r\n" % len(payload) + payload + b"HELP\r\n")
        r = self.c.reply()
        self.assertReply(r, 503, "5.5.1")
        self.assertReply(self.c.reply(), "21", msg="the next reply must be HELP's")
        self.assertEqual(self.c.pending(0.3), b"", "no reply may come for the chunk's octets")
        self.assertFalse(self.c.eof)
        self.assertSpoolEmpty(self.moat)

    def test_bdat_without_rcpt_consumes_its_octets(self):
        self.assertReply(self.c.cmd(f"MAIL FROM:<{SENDER}>"), 250)
        payload = b"NOOP\r\nQUIT\r\n"
        self.c.send(b"BDAT %d\r\n" % len(payload) + payload + b"HELP\r\n")
        self.assertReply(self.c.reply(), "5")
        self.assertReply(self.c.reply(), "21")
        self.assertEqual(self.c.pending(0.3), b"")
        self.assertSpoolEmpty(self.moat)

    def test_bdat_before_ehlo_consumes_its_octets(self):
        c = self.moat.connect()
        payload = b"QUIT\r\n"
        c.send(b"BDAT %d LAST\r\n" % len(payload) + payload + b"NOOP\r\n")
        self.assertReply(c.reply(), "5")
        self.assertReply(c.reply(), 250)
        self.assertFalse(c.is_closed(0.2))

    def test_malformed_bdat_size_closes(self):
        for bad in ("BDAT", "BDAT abc", "BDAT -1", "BDAT 5 NOTLAST", "BDAT 1.5", "BDAT 0x10"):
            with self.subTest(bad=bad):
                c = self.moat.connect()
                c.ehlo()
                # Without a valid size the end of the chunk is unknown: nothing after the
                # command can be trusted, so the server must answer 5xx and hang up.
                c.send(bad.encode() + b"\r\nNOOP\r\n")
                rs = c.read_until_closed(timeout=3)
                self.assertEqual(len(rs), 1, [str(r) for r in rs])
                self.assertReply(rs[0], "5")

    def test_bare_cr_at_end_of_last_chunk(self):
        self.begin()
        self.assertReply(self.bdat(b"text\r\nends with CR\r"), 250)
        # The CR could still pair with an LF in the next chunk; BDAT 0 LAST settles it: bare.
        self.assertReply(self.bdat(b"", last=True), "5")
        self.assertSpoolEmpty(self.moat)

    def test_failed_chunk_ends_transaction(self):
        self.begin()
        self.assertReply(self.bdat(b"bare\nLF\r\n"), "5")
        # RFC 3030 §2: after a failed chunk, later BDATs of that transaction are refused,
        # and their octets are still consumed.
        self.c.send(b"BDAT 6 LAST\r\nQUIT\r\nNOOP\r\n")
        self.assertReply(self.c.reply(), "5")
        self.assertReply(self.c.reply(), 250)
        self.assertSpoolEmpty(self.moat)


class Limits(MoatTestCase):

    def test_command_line_length(self):
        m = self.start_moat()
        c = m.connect()
        c.ehlo()
        # RFC 5321 §4.5.3.1.4: 512 octets including CRLF.
        ok = "NOOP " + "x" * (512 - 2 - 5)
        self.assertEqual(len(ok) + 2, 512)
        self.assertReply(c.cmd(ok), 250)
        self.assertReply(c.cmd(ok + "x"), 500, "5.5.2")
        # A very long line is discarded whole: its tail is not read as a command.
        c.send(b"NOOP " + b"y" * 20000 + b" QUIT\r\nHELP\r\n")
        self.assertReply(c.reply(), 500, "5.5.2")
        self.assertReply(c.reply(), "21")
        self.assertReply(c.cmd("NOOP"), 250)
        self.assertEqual(c.pending(0.2), b"")

    def test_dsn_extends_rcpt_line(self):
        # RFC 3461 §4: NOTIFY/ORCPT raise the RCPT line limit by 500 octets; other commands
        # keep 512.
        m = self.start_moat()
        c = m.connect()
        c.ehlo()
        self.assertReply(c.cmd(f"MAIL FROM:<{SENDER}>"), 250)
        def rcpt(total):
            tail = f"@{LOCAL_DOMAIN}> NOTIFY=FAILURE ORCPT=rfc822;u@{LOCAL_DOMAIN}"
            line = "RCPT TO:<" + "a" * (total - 2 - len("RCPT TO:<") - len(tail)) + tail
            self.assertEqual(len(line) + 2, total)
            return line
        self.assertReply(c.cmd(rcpt(1012)), 250, "2.1.5")
        self.assertReply(c.cmd(rcpt(1013)), 500, "5.5.2")
        self.assertReply(c.cmd("NOOP " + "x" * 600), 500, "5.5.2")

    def test_too_many_recipients(self):
        m = self.start_moat(server={"max_recipients": 3})
        c = m.connect()
        c.ehlo()
        self.assertReply(c.cmd(f"MAIL FROM:<{SENDER}>"), 250)
        for i in range(3):
            self.assertReply(c.cmd(f"RCPT TO:<u{i}@{LOCAL_DOMAIN}>"), 250)
        # RFC 5321 §4.5.3.1.10: 452 4.5.3 for recipients past the limit; the ones accepted
        # still get the message.
        self.assertReply(c.cmd(f"RCPT TO:<u3@{LOCAL_DOMAIN}>"), 452, "4.5.3")
        self.assertReply(c.cmd(f"RCPT TO:<u4@{LOCAL_DOMAIN}>"), 452, "4.5.3")
        self.assertReply(c.cmd("DATA"), 354)
        c.send(b"x\r\n.\r\n")
        qid = self.assertQueued(c.reply())
        self.assertEqual([r[0] for r in m.read_queued(qid).recipients],
                         [f"u{i}@{LOCAL_DOMAIN}" for i in range(3)])

    def test_declared_size(self):
        m = self.start_moat(server={"max_message_size": 10000})
        c = m.connect()
        c.ehlo()
        # RFC 1870 §6.1: a declared SIZE above the maximum is refused at MAIL with 552 5.3.4.
        self.assertReply(c.cmd(f"MAIL FROM:<{SENDER}> SIZE=10001"), 552, "5.3.4")
        # size-value is 1*20DIGIT: the largest 20-digit value overflows 64 bits but is valid.
        self.assertReply(c.cmd(f"MAIL FROM:<{SENDER}> SIZE=99999999999999999999"), 552,
                         "5.3.4")
        self.assertReply(c.cmd(f"MAIL FROM:<{SENDER}> SIZE=999999999999999999999"), 501)
        self.assertReply(c.cmd(f"MAIL FROM:<{SENDER}> SIZE=10000"), 250)
        self.assertReply(c.cmd("RSET"), 250)
        self.assertReply(c.cmd(f"MAIL FROM:<{SENDER}> SIZE=abc"), 501)

    def test_actual_size_data(self):
        limit = 10000
        m = self.start_moat(server={"max_message_size": limit})
        c = m.connect()
        line = b"a" * 98 + CRLF  # 100 octets
        # Exactly the maximum is accepted; one octet more is refused (RFC 1870 §6.2/§6.3).
        ok = line * (limit // 100)
        qid = self.assertQueued(self.send_message(c, SENDER, [RCPT], ok + b".\r\n"))
        self.assertEqual(m.read_queued(qid).split_received()[1], ok)
        big = b"b" + ok
        r = self.send_message(c, SENDER, [RCPT], big + b".\r\n", ehlo=False)
        self.assertReply(r, 552, "5.3.4")
        r = self.send_message(c, SENDER, [RCPT], line * 1000 + b".\r\n", ehlo=False)
        self.assertReply(r, 552, "5.3.4")
        self.assertEqual(m.spool_list("active"), [qid])
        self.assertEqual(m.spool_list("incoming"), [])
        self.assertReply(c.cmd("NOOP"), 250)  # the session goes on

    def test_actual_size_bdat(self):
        m = self.start_moat(server={"max_message_size": 1000})
        c = m.connect()
        c.ehlo()
        self.assertReply(c.cmd(f"MAIL FROM:<{SENDER}>"), 250)
        self.assertReply(c.cmd(f"RCPT TO:<{RCPT}>"), 250)
        data = (b"c" * 98 + CRLF) * 11
        c.send(b"BDAT %d LAST\r\n" % len(data) + data)
        self.assertReply(c.reply(), 552, "5.3.4")
        self.assertSpoolEmpty(m)
        self.assertReply(c.cmd("NOOP"), 250)

    def test_text_line_length(self):
        m = self.start_moat(server={"max_line_length": 1000})
        c = m.connect()
        # RFC 5321 §4.5.3.1.6: a text line is at most 1000 octets including CRLF.
        ok = b"d" * 998 + CRLF
        qid = self.assertQueued(self.send_message(c, SENDER, [RCPT], ok + b".\r\n"))
        self.assertEqual(m.read_queued(qid).split_received()[1], ok)
        # "...not counting the leading dot duplicated for transparency": a 998-octet line that
        # starts with a dot travels as 999 octets plus CRLF and is within the limit.
        dotted = b"." + b"d" * 997 + CRLF
        q2 = self.assertQueued(self.send_message(c, SENDER, [RCPT], b"." + dotted + b".\r\n",
                                                 ehlo=False))
        self.assertEqual(m.read_queued(q2).split_received()[1], dotted)
        os.unlink(m.spool_path("active", q2))
        for n in (999, 20000):
            with self.subTest(length=n):
                r = self.send_message(c, SENDER, [RCPT], b"x\r\n" + b"e" * n + b"\r\ny\r\n.\r\n",
                                      ehlo=False)
                self.assertReply(r, "5")
                self.assertReply(c.cmd("NOOP"), 250)
        # BDAT content is held to the same limit.
        self.assertReply(c.cmd(f"MAIL FROM:<{SENDER}>"), 250)
        self.assertReply(c.cmd(f"RCPT TO:<{RCPT}>"), 250)
        data = b"f" * 999 + CRLF
        c.send(b"BDAT %d LAST\r\n" % len(data) + data)
        self.assertReply(c.reply(), "5")
        self.assertEqual(m.spool_list("active"), [qid])
        self.assertEqual(m.spool_list("incoming"), [])

    def test_bad_commands_disconnect(self):
        m = self.start_moat(server={"max_bad_commands": 3})
        c = m.connect()
        c.ehlo()
        self.assertReply(c.cmd("FOO"), 500, "5.5.2")
        self.assertReply(c.cmd("RCPT TO:<x@example.test>"), 503)
        self.assertReply(c.cmd("NOOP"), 250)  # good commands do not count
        c.line("BAR")
        rs = c.read_until_closed(timeout=3)
        self.assertTrue(rs, "no reply before close")
        self.assertReply(rs[-1], 421, "4.7.0")
        for r in rs[:-1]:
            self.assertReply(r, "5")

    def test_max_sessions(self):
        m = self.start_moat(server={"max_sessions": 2, "max_sessions_per_ip": 10})
        c1 = m.connect()
        m.connect()
        c3 = m.connect(greet=False)
        rs = c3.read_until_closed(timeout=3)
        self.assertEqual(len(rs), 1)
        self.assertReply(rs[0], 421, "4.7.0")
        # A slot frees when a session ends.
        self.assertReply(c1.cmd("QUIT"), 221)
        self.assertTrue(self._eventually_greeted(m))

    def _eventually_greeted(self, m, source=None):
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            c = m.connect(greet=False, source=source)
            r = c.reply()
            if r.code == 220:
                return True
            c.close()
            time.sleep(0.05)
        return False

    def test_max_sessions_per_ip(self):
        m = self.start_moat(server={"max_sessions": 10, "max_sessions_per_ip": 2})
        m.connect()
        m.connect()
        c3 = m.connect(greet=False)
        rs = c3.read_until_closed(timeout=3)
        self.assertEqual(len(rs), 1)
        self.assertReply(rs[0], 421, "4.7.0")
        # Another client address is not affected.
        try:
            c4 = m.connect(source="127.0.0.2")
        except OSError as e:
            self.skipTest(f"cannot use 127.0.0.2: {e}")
        self.assertReply(c4.cmd("NOOP"), 250)

    def test_descriptor_exhaustion_recovers(self):
        # Out of file descriptors, accept() fails: the server must neither spin nor stop
        # accepting for good; connections waiting in the backlog are served once fds free up.
        limit = lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (48, 48))
        m = self.start_moat(server={"max_sessions_per_ip": 1000}, preexec_fn=limit)
        clients = [m.connect(greet=False, timeout=1) for _ in range(60)]
        time.sleep(0.5)
        greeted, waiting = [], []
        for c in clients:
            (greeted if c.pending(0.01) else waiting).append(c)
        for c in greeted:
            self.assertReply(c.reply(), 220)
        self.assertTrue(greeted)
        if not waiting:
            self.skipTest("descriptor limit not reached")
        self.assertIsNotNone(m.wait_log(r"event=accept_error"))
        cpu0 = m.cpu_seconds()
        time.sleep(1)
        self.assertLess(m.cpu_seconds() - cpu0, 0.5, "the accept loop spins at the fd limit")
        for c in greeted:
            c.close()
        late = [c for c in waiting if c.reply(timeout=3).code == 220]
        self.assertEqual(len(late), len(waiting))
        for c in waiting:
            self.assertReply(c.cmd("QUIT"), 221)
            c.close()
        self.assertTrue(m.wait_sessions_ended(3))
        c = m.connect()
        self.assertReply(c.cmd("NOOP"), 250)

    def test_command_timeout(self):
        m = self.start_moat(server={"command_timeout": 1})
        c = m.connect()
        t0 = time.monotonic()
        rs = c.read_until_closed(timeout=4)
        elapsed = time.monotonic() - t0
        self.assertEqual(len(rs), 1, [str(r) for r in rs])
        self.assertReply(rs[0], 421, "4.4.2")
        self.assertGreater(elapsed, 0.7)
        self.assertLess(elapsed, 3.5)

    def test_data_timeout(self):
        m = self.start_moat(server={"data_timeout": 1})
        c = m.connect()
        c.ehlo()
        self.assertReply(c.cmd(f"MAIL FROM:<{SENDER}>"), 250)
        self.assertReply(c.cmd(f"RCPT TO:<{RCPT}>"), 250)
        self.assertReply(c.cmd("DATA"), 354)
        c.send(b"Subject: stalled\r\n\r\npartial")
        rs = c.read_until_closed(timeout=4)
        self.assertEqual(len(rs), 1, [str(r) for r in rs])
        self.assertReply(rs[0], 421, "4.4.2")
        self.assertTrue(m.wait_sessions_ended())
        self.assertSpoolEmpty(m)

    def test_max_session_time(self):
        m = self.start_moat(server={"max_session_time": 2, "command_timeout": 30})
        c = m.connect()
        t0 = time.monotonic()
        closed = None
        while time.monotonic() - t0 < 5:
            # Send only while nothing is pending, so a 421 is never lost to a reset.
            if c.pending(0.2) or c.eof:
                closed = c.reply()
                break
            c.line("NOOP")
            try:
                r = c.reply(timeout=2)
            except ConnectionClosed:
                break
            if r.code == 421:
                closed = r
                break
            self.assertReply(r, 250)
        self.assertIsNotNone(closed, "session outlived max_session_time")
        self.assertReply(closed, 421)
        self.assertLess(time.monotonic() - t0, 4)
        self.assertTrue(c.is_closed(2))


class Sequence(MoatTestCase):
    """RFC 5321 §4.1.4 command order; 503 for a bad sequence."""

    def setUp(self):
        super().setUp()
        self.moat = self.start_moat()
        self.c = self.moat.connect()

    def test_mail_before_ehlo(self):
        self.assertReply(self.c.cmd(f"MAIL FROM:<{SENDER}>"), 503, "5.5.1")

    def test_rcpt_before_mail(self):
        self.c.ehlo()
        self.assertReply(self.c.cmd(f"RCPT TO:<{RCPT}>"), 503, "5.5.1")

    def test_data_before_mail(self):
        self.c.ehlo()
        self.assertReply(self.c.cmd("DATA"), 503, "5.5.1")

    def test_data_before_rcpt(self):
        self.c.ehlo()
        self.assertReply(self.c.cmd(f"MAIL FROM:<{SENDER}>"), 250)
        r = self.c.cmd("DATA")
        # RFC 5321 §3.3 (503) or RFC 2920 §3.1 (554 "no valid recipients").
        self.assertIn(r.code, (503, 554), str(r))
        self.assertEqual(r.enhanced, "5.5.1")
        self.assertReply(self.c.cmd("NOOP"), 250, msg="no 354: DATA must not have begun")

    def test_data_with_only_rejected_rcpts(self):
        self.c.ehlo()
        self.c.send(f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<x@elsewhere.example>\r\nDATA\r\n"
                    "x\r\n.\r\nNOOP\r\n")
        rs = self.c.replies(3)
        self.assertEqual([r.code // 100 for r in rs], [2, 5, 5])
        # DATA failed, so "x" and "." are commands now (each refused), then NOOP.
        rest = self.c.replies(3)
        self.assertEqual([r.code for r in rest], [500, 500, 250])
        self.assertSpoolEmpty(self.moat)

    def test_nested_mail(self):
        self.c.ehlo()
        self.assertReply(self.c.cmd(f"MAIL FROM:<{SENDER}>"), 250)
        self.assertReply(self.c.cmd("MAIL FROM:<other@example.org>"), 503, "5.5.1")

    def test_unknown_command(self):
        self.assertReply(self.c.cmd("XYZZY"), 500, "5.5.2")
        self.assertReply(self.c.cmd("MAILFROM:<a@b.example>"), 500, "5.5.2")

    def test_nul_bare_lf_bare_cr_in_command(self):
        self.c.ehlo()
        for bad in (b"NOOP\x00", b"NOOP\nNOOP", b"NOOP\rNOOP", b"RSET\nQUIT", b"HELP\x00QUIT"):
            with self.subTest(line=bad):
                self.c.send(bad + b"\r\nHELP\r\n")
                # One line, one refusal; nothing in it is run as a command.
                self.assertReply(self.c.reply(), 500, "5.5.2")
                self.assertReply(self.c.reply(), "21")
        self.assertFalse(self.c.is_closed(0.2))

    def test_mail_syntax(self):
        self.c.ehlo()
        self.assertReply(self.c.cmd("MAIL FROM:sender@example.org"), 501)
        self.assertReply(self.c.cmd("MAIL FROM:<sender@example.org> FOO=BAR"), 555)
        self.assertReply(self.c.cmd("MAIL FROM:<sender@example.org> BODY=BINARYMIME"), "5")
        self.assertReply(self.c.cmd("MAIL FROM:<sender@example.org> RET=ALL"), 501)
        self.assertReply(self.c.cmd("MAIL FROM:<sender@example.org> SIZE=1 SIZE=2"), 501)
        self.assertReply(self.c.cmd("MAIL FROM:<postmaster>"), 501)  # postmaster is RCPT-only


class Relay(MoatTestCase):
    """Relay access at RCPT: only relay.domains, and none of the classic tricks."""

    def rcpt_replies(self, moat, addresses, source=None):
        c = moat.connect(source=source)
        c.ehlo()
        out = {}
        for a in addresses:
            self.assertReply(c.cmd(f"MAIL FROM:<{SENDER}>"), 250)
            out[a] = c.cmd(f"RCPT TO:{a}")
            self.assertReply(c.cmd("RSET"), 250)
        return out

    def test_tricks_are_refused(self):
        m = self.start_moat()
        tricks = [
            "<user@elsewhere.example>",             # foreign domain
            "<user@sub.example.test>",              # subdomain not listed
            "<user@evilexample.test>",              # suffix without the dot
            "<user@example.test.evil.example>",
            "<user%elsewhere.example@example.test>",  # percent hack
            "<elsewhere.example!user@example.test>",  # bang path
            '<"user@elsewhere.example"@example.test>',  # quoted @
            '<"user%elsewhere.example"@example.test>',
            "<@example.test:user@elsewhere.example>",  # source route
            "<@example.test,@mx.test:user@elsewhere.example>",
            "<user@elsewhere.example@example.test>",  # two @
            "<user@[192.0.2.1]>",                     # address literal
            "<user@[127.0.0.1]>",
            "<user@[IPv6:::1]>",
        ]
        for a, r in self.rcpt_replies(m, tricks).items():
            with self.subTest(rcpt=a):
                self.assertTrue((r.code, r.enhanced) in ((554, "5.7.1"), (550, "5.7.1"),
                                                         (501, "5.1.3")), str(r))
        # "user@ext@ours" is not a valid path at all (RFC 5321 §4.1.2: one "@" outside quotes).
        r = self.rcpt_replies(m, ["<user@elsewhere.example@example.test>"])
        self.assertReply(list(r.values())[0], 501, "5.1.3")

    def test_local_recipients_are_accepted(self):
        m = self.start_moat()
        good = ["<user@example.test>", "<User@EXAMPLE.TEST>", "<user@Example.Test.>",
                "<postmaster>", "<POSTMASTER>", "<Postmaster@example.test>",
                '<"john doe"@example.test>', "<first.last+tag@example.test>"]
        for a, r in self.rcpt_replies(m, good).items():
            with self.subTest(rcpt=a):
                self.assertReply(r, 250, "2.1.5")

    def test_postmaster_is_delivered(self):
        m = self.start_moat()
        c = m.connect()
        c.ehlo()
        self.assertReply(c.cmd(f"MAIL FROM:<{SENDER}>"), 250)
        # RFC 5321 §4.5.1: <Postmaster> without a domain must be accepted; the spool needs an
        # address it can route, in one of our domains.
        self.assertReply(c.cmd("RCPT TO:<Postmaster>"), 250)
        self.assertReply(c.cmd("DATA"), 354)
        c.send(b"hi\r\n.\r\n")
        qid = self.assertQueued(c.reply())
        [(addr, _, _)] = m.read_queued(qid).recipients
        self.assertEqual(addr.lower(), f"postmaster@{LOCAL_DOMAIN}")

    def test_subdomain_pattern(self):
        m = self.start_moat(relay={"domains": [".example.test"]})
        rs = self.rcpt_replies(m, ["<a@sub.example.test>", "<a@deep.sub.example.test>",
                                   "<a@evilexample.test>", "<a@example.test.evil.example>"])
        codes = [r.code for r in rs.values()]
        self.assertEqual(codes[:2], [250, 250])
        self.assertTrue(all(c >= 500 for c in codes[2:]), codes)

    def test_trusted_network_may_relay(self):
        m = self.start_moat(relay={"trusted_networks": ["127.0.0.0/8"]})
        rs = self.rcpt_replies(m, ["<user@elsewhere.example>", "<user%x@example.test>",
                                   "<@example.test:user@elsewhere.example>"])
        codes = list(rs.values())
        self.assertReply(codes[0], 250)
        # The tricks stay refused even for a trusted client: a downstream MTA could read them
        # differently.
        self.assertReply(codes[1], "5")
        self.assertReply(codes[2], "5")

    def test_trust_is_per_address(self):
        m = self.start_moat(relay={"trusted_networks": ["127.0.0.2/32"]})
        r = self.rcpt_replies(m, ["<user@elsewhere.example>"])
        self.assertReply(list(r.values())[0], 554, "5.7.1")
        try:
            r = self.rcpt_replies(m, ["<user@elsewhere.example>"], source="127.0.0.2")
        except OSError as e:
            self.skipTest(f"cannot use 127.0.0.2: {e}")
        self.assertReply(list(r.values())[0], 250)

    def test_non_ascii_needs_smtputf8(self):
        m = self.start_moat()
        c = m.connect()
        c.ehlo()
        # RFC 6531 §3.5: 553 5.6.7 for a non-ASCII address without SMTPUTF8.
        self.assertReply(c.cmd("MAIL FROM:<j\u00f6rg@example.org>"), 553, "5.6.7")
        self.assertReply(c.cmd(f"MAIL FROM:<{SENDER}>"), 250)
        self.assertReply(c.cmd("RCPT TO:<\u7528\u6237@example.test>"), 553, "5.6.7")
        self.assertReply(c.cmd("RSET"), 250)
        self.assertReply(c.cmd("MAIL FROM:<j\u00f6rg@example.org> SMTPUTF8"), 250)
        self.assertReply(c.cmd("RCPT TO:<\u7528\u6237@example.test>"), 250)
        self.assertReply(c.cmd("DATA"), 354)
        content = "Subject: \u00fcnic\u00f6de\r\n\r\nb\u00f6dy\r\n".encode()
        c.send(content + b".\r\n")
        qid = self.assertQueued(c.reply())
        q = m.read_queued(qid)
        self.assertEqual(q.split_received()[1], content)
        self.assertEqual(q.sender, "j\u00f6rg@example.org")
        self.assertEqual(q.recipients[0][0], "\u7528\u6237@example.test")
        self.assertEqual(q.fields.get("smtputf8"), "1")
        # RFC 6531 §3.7.3: the "with" clause says UTF8SMTP.
        self.assertRegex(q.split_received()[0], rb"\bwith UTF8SMTP\b")

    def test_invalid_utf8_refused(self):
        m = self.start_moat()
        c = m.connect()
        c.ehlo()
        self.assertReply(c.cmd(f"MAIL FROM:<{SENDER}> SMTPUTF8"), 250)
        c.send(b"RCPT TO:<\xc3\x28@example.test>\r\n")
        self.assertReply(c.reply(), "5")


class RecipientValidation(MoatTestCase):

    def test_unknown_recipients_are_refused_at_rcpt_and_the_file_reloads(self):
        path = os.path.join(self.tmp, "recipients")
        with open(path, "w") as f:
            f.write("# valid recipients\nuser@example.test\n")
        m = self.start_moat(relay={"recipients_file": path})
        c = m.connect()
        c.ehlo()
        self.assertReply(c.cmd(f"MAIL FROM:<{SENDER}>"), 250)
        self.assertReply(c.cmd("RCPT TO:<User@Example.test>"), 250, "2.1.5")
        # No backscatter: an unknown user is refused now, not bounced later (550 5.1.1).
        self.assertReply(c.cmd("RCPT TO:<nobody@example.test>"), 550, "5.1.1")
        self.assertReply(c.cmd("RCPT TO:<postmaster>"), 250)  # RFC 5321 4.5.1: always
        # The relay check still comes first: a foreign domain is a relay refusal.
        self.assertReply(c.cmd("RCPT TO:<user@elsewhere.example>"), 554, "5.7.1")
        with open(path, "a") as f:
            f.write("nobody@example.test\n")
        os.utime(path, (time.time() + 5, time.time() + 5))
        time.sleep(1.1)
        self.assertReply(c.cmd("RCPT TO:<nobody@example.test>"), 250, "2.1.5")
        self.assertIn("event=refused stage=rcpt check=recipients", m.log())

    def test_unreadable_recipients_file_is_a_config_error(self):
        from harness import MoatServer
        s = MoatServer(self.tmp, relay={"recipients_file": os.path.join(self.tmp, "missing")})
        s.port = 2
        s.write_config()
        out = subprocess.run([moat_bin(), "config", "check", s.config_path],
                             capture_output=True, text=True)
        self.assertEqual(out.returncode, 1)
        self.assertRegex(out.stderr, r":\d+: cannot read '.*missing'")


class Robustness(MoatTestCase):
    """Input split at awkward places, large messages, clients that vanish."""

    def setUp(self):
        super().setUp()
        self.moat = self.start_moat(server={"max_message_size": "8M"})

    def dribble(self, c, pieces, pause=0.03):
        for p in pieces:
            c.send(p)
            time.sleep(pause)

    def test_crlf_split_across_reads(self):
        c = self.moat.connect()
        self.dribble(c, [b"EH", b"LO client.example\r", b"\n"])
        self.assertReply(c.reply(), 250)
        self.dribble(c, [b"MAIL FROM:<sender@example.org>\r", b"\nRCPT TO:<user@example.test>",
                         b"\r\nDATA\r", b"\n"])
        self.assertEqual([r.code for r in c.replies(3)], [250, 250, 354])
        # The end of data split every way: "\r" | "\n." | "\r" | "\n".
        self.dribble(c, [b"line one\r", b"\n.", b"\r", b"\n"])
        qid = self.assertQueued(c.reply())
        self.assertEqual(self.moat.read_queued(qid).split_received()[1], b"line one\r\n")
        # A dot line split from its CRLF is still a dot line, and "..x" split after one dot.
        self.assertReply(c.cmd(f"MAIL FROM:<{SENDER}>"), 250)
        self.assertReply(c.cmd(f"RCPT TO:<{RCPT}>"), 250)
        self.assertReply(c.cmd("DATA"), 354)
        self.dribble(c, [b".", b".x\r\n", b"a\r\n.", b"\r\n"])
        qid = self.assertQueued(c.reply())
        self.assertEqual(self.moat.read_queued(qid).split_received()[1], b".x\r\na\r\n")

    def test_large_message_byte_exact_data(self):
        import random
        rnd = random.Random(5321)
        lines = []
        size = 0
        while size < 3_000_000:
            n = rnd.choice([0, 1, 2, 50, 76, 500, 997, 998, rnd.randrange(0, 999)])
            first = rnd.choice([b".", b"", b"", b"a"])
            body = rnd.randbytes(max(0, n - len(first))).translate(PRINTABLE)
            line = (first + body)[:998]
            lines.append(line)
            size += len(line) + 2
        content = b"Subject: big\r\n\r\n" + b"".join(l + CRLF for l in lines)
        c = self.moat.connect()
        qid = self.assertQueued(self.send_message(c, SENDER, [RCPT], dot_stuff(content)))
        self.assertEqual(self.moat.read_queued(qid).split_received()[1], content)

    def test_large_message_byte_exact_bdat(self):
        import random
        rnd = random.Random(3030)
        content = b"".join(rnd.randbytes(rnd.randrange(0, 999)).translate(PRINTABLE) + CRLF
                           for _ in range(3000))
        c = self.moat.connect()
        c.ehlo()
        self.assertReply(c.cmd(f"MAIL FROM:<{SENDER}>"), 250)
        self.assertReply(c.cmd(f"RCPT TO:<{RCPT}>"), 250)
        pos = 0
        replies = 0
        out = b""
        while pos < len(content):
            n = rnd.choice([1, 2, 3, 4095, 4096, 4097, 65536, rnd.randrange(1, 200000)])
            chunk = content[pos:pos + n]
            pos += len(chunk)
            out += b"BDAT %d%s\r\n" % (len(chunk), b" LAST" if pos >= len(content) else b"")
            out += chunk
            replies += 1
        c.send(out)  # every chunk pipelined in one write
        rs = c.replies(replies, timeout=20)
        for r in rs[:-1]:
            self.assertReply(r, 250)
        qid = self.assertQueued(rs[-1])
        self.assertEqual(self.moat.read_queued(qid).split_received()[1], content)

    def test_half_close_after_pipelined_message(self):
        c = self.moat.connect()
        c.ehlo()
        c.send(f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<{RCPT}>\r\nDATA\r\nhalf\r\n.\r\n".encode())
        c.sock.shutdown(socket.SHUT_WR)  # no QUIT; the client still reads
        rs = c.read_until_closed()
        # Every reply is delivered before the server closes.
        self.assertEqual([r.code for r in rs], [250, 250, 354, 250])
        qid = self.assertQueued(rs[-1])
        self.assertEqual(self.moat.read_queued(qid).split_received()[1], b"half\r\n")

    def test_client_vanishes_during_data(self):
        c = self.moat.connect()
        c.ehlo()
        c.send(f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<{RCPT}>\r\nDATA\r\n".encode())
        self.assertEqual([r.code for r in c.replies(3)], [250, 250, 354])
        c.send(b"Subject: gone\r\n\r\nno end of data\r\n")
        c.close()
        self.assertTrue(self.moat.wait_sessions_ended())
        # No 250 was given, so nothing may be queued, and nothing is left behind.
        self.assertSpoolEmpty(self.moat)

    def test_client_vanishes_during_bdat(self):
        c = self.moat.connect()
        c.ehlo()
        c.send(f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<{RCPT}>\r\nBDAT 1000 LAST\r\nonly a part"
               .encode())
        self.assertEqual([r.code for r in c.replies(2)], [250, 250])
        c.close()
        self.assertTrue(self.moat.wait_sessions_ended())
        self.assertSpoolEmpty(self.moat)

    def test_rset_during_bdat_discards(self):
        c = self.moat.connect()
        c.ehlo()
        self.assertReply(c.cmd(f"MAIL FROM:<{SENDER}>"), 250)
        self.assertReply(c.cmd(f"RCPT TO:<{RCPT}>"), 250)
        c.send(b"BDAT 5\r\nabc\r\n")
        self.assertReply(c.reply(), 250)
        self.assertReply(c.cmd("RSET"), 250)
        self.assertSpoolEmpty(self.moat)
        # A new transaction starts clean: the old chunk is not part of it.
        self.assertReply(c.cmd(f"MAIL FROM:<{SENDER}>"), 250)
        self.assertReply(c.cmd(f"RCPT TO:<{RCPT}>"), 250)
        c.send(b"BDAT 5 LAST\r\nxyz\r\n")
        qid = self.assertQueued(c.reply())
        self.assertEqual(self.moat.read_queued(qid).split_received()[1], b"xyz\r\n")

    def test_ehlo_resets_transaction(self):
        c = self.moat.connect()
        c.ehlo()
        self.assertReply(c.cmd(f"MAIL FROM:<{SENDER}>"), 250)
        self.assertReply(c.cmd(f"RCPT TO:<{RCPT}>"), 250)
        c.ehlo("again.example")  # RFC 5321 §4.1.4: like RSET
        self.assertReply(c.cmd("DATA"), 503)
        qid = self.assertQueued(self.send_message(c, SENDER, [RCPT], b"x\r\n.\r\n", ehlo=False))
        q = self.moat.read_queued(qid)
        self.assertEqual(q.fields.get("helo"), "again.example")

    def test_stalled_session_does_not_block_others(self):
        slow = self.moat.connect()
        slow.ehlo()
        slow.send(f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<{RCPT}>\r\nDATA\r\n".encode())
        self.assertEqual([r.code for r in slow.replies(3)], [250, 250, 354])
        slow.send(b"Subject: slow\r\n\r\npart")
        t0 = time.monotonic()
        fast = self.moat.connect()
        self.assertQueued(self.send_message(fast, SENDER, [RCPT], b"fast\r\n.\r\n"))
        self.assertLess(time.monotonic() - t0, 2)
        slow.send(b"\r\n.\r\n")
        self.assertQueued(slow.reply())


if __name__ == "__main__":
    unittest.main()
