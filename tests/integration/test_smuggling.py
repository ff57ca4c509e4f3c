"""SMTP smuggling (CVE-2023-51764/51765/51766 and kin): an end-of-data sequence that one
implementation honours and another does not lets a client hide a second transaction inside a
message. RFC 5321 §4.1.1.4 and §2.3.8: only <CRLF>.<CRLF> ends the data, and bare CR/LF must not
be taken for a line end. Whatever Moat does with such a message, it must never turn one DATA into
two messages, and in the default (reject) mode it must refuse the message."""

import os
import unittest

from harness import LOCAL_DOMAIN, MoatTestCase, has_bare_cr_or_lf

SENDER = "sender@example.org"
RCPT = "user@" + LOCAL_DOMAIN
EVIL_FROM = "evil@x.example"
VICTIM = "victim@" + LOCAL_DOMAIN

SMUGGLED = (f"MAIL FROM:<{EVIL_FROM}>\r\nRCPT TO:<{VICTIM}>\r\nDATA\r\n"
            "Subject: smuggled\r\n\r\nSmuggled\r\n.\r\n").encode()

# End-of-data look-alikes. None of them is <CRLF>.<CRLF>.
VARIANTS = {
    "lf.lf": b"\n.\n",
    "lf.crlf": b"\n.\r\n",
    "crlf.lf": b"\r\n.\n",
    "cr.cr": b"\r.\r",
    "cr.crlf": b"\r.\r\n",
    "crlf.cr": b"\r\n.\r",
    "crlf.crcrlf": b"\r\n.\r\r\n",
    "lflf.lflf": b"\n\n.\n\n",
    "crlf.nul.crlf": b"\r\n\x00.\r\n",
    "crlf.dot-nul.crlf": b"\r\n.\x00\r\n",
    "crlf.lfcr": b"\r\n.\n\r",
}
# Look-alikes made only of proper CRLF lines: legal content, so Moat may accept the message,
# but still as one message.
LEGAL_VARIANTS = {
    "crlf.sp.crlf": b"\r\n. \r\n",
    "crlf..crlf": b"\r\n..\r\n",
    "crlf.tab.crlf": b"\r\n.\t\r\n",
}
NUL_VARIANTS = {k for k, v in VARIANTS.items() if b"\x00" in v}


class SmugglingBase(MoatTestCase):
    mode = None  # server.bare_newline; None: the default

    def setUp(self):
        super().setUp()
        server = {"bare_newline": self.mode} if self.mode else {}
        self.moat = self.start_moat(server=server)

    def smuggle(self, variant, via_bdat=False):
        """Sends one message with the variant and the hidden transaction in its body, then
        QUIT; returns every reply from MAIL on, up to the server's close."""
        c = self.moat.connect()
        c.ehlo()
        body = b"Subject: innocent\r\n\r\nhello" + variant + SMUGGLED
        if via_bdat:
            c.send(f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<{RCPT}>\r\n".encode() +
                   b"BDAT %d LAST\r\n" % len(body) + body + b"QUIT\r\n")
        else:
            c.send(f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<{RCPT}>\r\nDATA\r\n".encode())
            rs = c.replies(3)
            self.assertEqual([r.code for r in rs], [250, 250, 354])
            # The hidden transaction ends with a real <CRLF>.<CRLF>: it ends the message when
            # the variant is (rightly) not taken for an end of data.
            c.send(body + b"QUIT\r\n")
            replies = rs + c.read_until_closed()
            return replies
        return c.read_until_closed()

    def check_at_most_one(self, replies):
        queued = [r for r in replies if r.code == 250 and "queued" in r.text]
        self.assertLessEqual(len(queued), 1, [str(r) for r in replies])
        self.assertLessEqual(len([r for r in replies if r.code == 354]), 1,
                             "a smuggled DATA was answered")
        active = self.moat.spool_list("active") + self.moat.spool_list("quarantine")
        self.assertLessEqual(len(active), 1, active)
        for q in self.moat.all_queued("active"):
            # The one message is the client's own: the hidden sender and recipient are
            # content, never an envelope.
            self.assertEqual(q.sender, SENDER)
            self.assertEqual([r[0] for r in q.recipients], [RCPT])
            self.assertIn(f"MAIL FROM:<{EVIL_FROM}>".encode(), q.message,
                          "the smuggled text must stay inside the one message")
        self.assertEqual(self.moat.spool_list("incoming"), [])
        # QUIT after the message is answered: the session ends cleanly.
        self.assertEqual(replies[-1].code, 221, [str(r) for r in replies])
        return queued


class RejectMode(SmugglingBase):

    def test_control_real_terminator_makes_two_messages(self):
        # The harness must be able to see smuggling: with a real <CRLF>.<CRLF> the second
        # transaction is legitimate pipelining and produces a second message.
        replies = self.smuggle(b"\r\n.\r\n")
        queued = [r for r in replies if r.code == 250 and "queued" in r.text]
        self.assertEqual(len(queued), 2, [str(r) for r in replies])
        senders = sorted(q.sender for q in self.moat.all_queued())
        self.assertEqual(senders, sorted([SENDER, EVIL_FROM]))

    def test_variants_are_rejected(self):
        for name, variant in VARIANTS.items():
            with self.subTest(variant=name):
                replies = self.smuggle(variant)
                self.check_at_most_one(replies)
                # MAIL, RCPT, 354, then one refusal for the whole message, then QUIT.
                self.assertEqual([r.code // 100 for r in replies], [2, 2, 3, 5, 2],
                                 [str(r) for r in replies])
                self.assertSpoolEmpty(self.moat)
        self.assertEqual(self.moat.log().count("event=message disposition=rejected"),
                         len(VARIANTS))

    def test_legal_look_alikes_give_at_most_one_message(self):
        for name, variant in LEGAL_VARIANTS.items():
            with self.subTest(variant=name):
                for via_bdat in (False, True):
                    replies = self.smuggle(variant, via_bdat=via_bdat)
                    self.assertEqual(len(self.check_at_most_one(replies)), 1)
                    for qid in self.moat.spool_list("active"):
                        os.unlink(self.moat.spool_path("active", qid))

    def test_variants_in_bdat_are_rejected(self):
        for name, variant in VARIANTS.items():
            with self.subTest(variant=name):
                replies = self.smuggle(variant, via_bdat=True)
                self.check_at_most_one(replies)
                self.assertEqual([r.code // 100 for r in replies], [2, 2, 5, 2],
                                 [str(r) for r in replies])
                self.assertSpoolEmpty(self.moat)


class NormalizeMode(SmugglingBase):
    mode = "normalize"

    def check_normalized(self, name):
        for q in self.moat.all_queued("active"):
            # What Moat passes on can be split into lines only where Moat split it.
            self.assertFalse(has_bare_cr_or_lf(q.message), repr(q.message))
            self.assertNotIn(b"\x00", q.message)
        if name in NUL_VARIANTS:
            # NUL is refused in every mode (no BINARYMIME).
            self.assertSpoolEmpty(self.moat)

    def clear_spool(self):
        for qid in self.moat.spool_list("active"):
            os.unlink(self.moat.spool_path("active", qid))

    def test_variants_give_at_most_one_message(self):
        for name, variant in VARIANTS.items():
            with self.subTest(variant=name):
                replies = self.smuggle(variant)
                self.check_at_most_one(replies)
                self.check_normalized(name)
                self.clear_spool()

    def test_variants_in_bdat_give_at_most_one_message(self):
        for name, variant in VARIANTS.items():
            with self.subTest(variant=name):
                replies = self.smuggle(variant, via_bdat=True)
                self.check_at_most_one(replies)
                self.check_normalized(name)
                self.clear_spool()

    def test_bare_lf_is_rewritten_to_crlf(self):
        c = self.moat.connect()
        c.ehlo()
        self.assertReply(c.cmd(f"MAIL FROM:<{SENDER}>"), 250)
        self.assertReply(c.cmd(f"RCPT TO:<{RCPT}>"), 250)
        self.assertReply(c.cmd("DATA"), 354)
        c.send(b"a\nb\rc\r\n.\r\n")
        qid = self.assertQueued(c.reply())
        self.assertEqual(self.moat.read_queued(qid).split_received()[1], b"a\r\nb\r\nc\r\n")


if __name__ == "__main__":
    unittest.main()
