"""Authentication-Results end to end (RFC 8601 §5): Moat adds its own header with its
authserv-id and removes the ones a client forged under that id, with a real Postfix as the
backend. The rest of the message reaches the backend byte for byte."""

import unittest

from backend import PostfixBackend, postfix_available
from harness import LOCAL_DOMAIN, MoatTestCase, dot_stuff, split_first_header

SENDER = "sender@example.test"
USER = "user@example.test"
AUTHSERV_ID = "moat-auth.example.test"

FORGED_1 = b"Authentication-Results: moat-auth.example.test; dmarc=pass header.from=bank.example\r\n"
FORGED_2 = b"Authentication-Results: (looks official)\r\n\tMOAT-AUTH.Example.Test;\r\n\tdkim=pass\r\n"
UPSTREAM = b"Authentication-Results: upstream.example; spf=pass smtp.mailfrom=bank.example\r\n"
LOOKALIKE = b"Authentication-Results: moat-auth.example.test.evil; spf=pass\r\n"
REST = (b"From: <ceo@bank.example>\r\nTo: <user@example.test>\r\nSubject: wire transfer\r\n\r\n"
        b"Authentication-Results: moat-auth.example.test; in the body, untouched\r\n")


@unittest.skipUnless(postfix_available(), "postfix is not installed")
class AuthenticationResults(MoatTestCase):

    def test_forged_fields_are_removed_and_moats_own_added(self):
        pf = PostfixBackend(parent=self.tmp, users=(USER, SENDER)).start()
        self.addCleanup(pf.cleanup)
        moat = self.start_moat(
            delivery={"retry_min": 1, "retry_max": 2, "connect_timeout": 2},
            routes=[{"domains": [LOCAL_DOMAIN], "hosts": [f"127.0.0.1:{pf.port}"],
                     "tls": "none"}],
            extra=f'[auth]\nauthserv_id = "{AUTHSERV_ID}"\n')
        message = FORGED_1 + UPSTREAM + FORGED_2 + LOOKALIKE + REST
        c = moat.connect()
        c.ehlo()
        self.assertReply(c.cmd(f"MAIL FROM:<{SENDER}>"), 250)
        self.assertReply(c.cmd(f"RCPT TO:<{USER}>"), 250)
        self.assertReply(c.cmd("DATA"), 354)
        c.send(dot_stuff(message))
        self.assertQueued(c.reply())
        c.cmd("QUIT")

        d = pf.wait_for(1, timeout=10, mailbox=USER)[0]
        ours, rest = split_first_header(d.content)
        self.assertTrue(ours.startswith(f"Authentication-Results: {AUTHSERV_ID};".encode()), ours)
        received, client_part = split_first_header(rest)
        self.assertTrue(received.startswith(b"Received: from "), received)
        # Exactly the two forgeries are gone; the upstream one, the look-alike id and the body
        # are kept, in order.
        self.assertEqual(client_part, UPSTREAM + LOOKALIKE + REST)


if __name__ == "__main__":
    unittest.main()
