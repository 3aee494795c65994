"""Password reset by email: the link in the mail sets a new password once; unknown addresses get
the same answer (nothing leaks about who has an account)."""

from __future__ import annotations

import re

from django.core import mail

NEW = "a-brand-new-password-3"


def test_reset_mail_link_sets_a_new_password(client, alice):
    answer = client.post("/accounts/password/reset/", {"email": "alice@example.com"})
    assert answer["Location"] == "/accounts/password/reset/sent/"
    assert len(mail.outbox) == 1 and mail.outbox[0].to == ["alice@example.com"]
    link = re.search(r"http://testserver(/accounts/password/reset/\S+/)", mail.outbox[0].body)[1]
    form_page = client.get(link, follow=True)
    assert "Choose a new password" in form_page.content.decode()
    done = client.post(form_page.redirect_chain[-1][0], {"new_password1": NEW, "new_password2": NEW})
    assert done["Location"] == "/accounts/password/reset/done/"
    alice.refresh_from_db()
    assert alice.check_password(NEW)
    assert "does not work" in client.get(link, follow=True).content.decode()  # used once


def test_unknown_address_answers_the_same_and_sends_nothing(client, alice):
    answer = client.post("/accounts/password/reset/", {"email": "nobody@example.com"})
    assert answer["Location"] == "/accounts/password/reset/sent/" and mail.outbox == []
