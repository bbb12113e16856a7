"""`hpsearch dashboard`: a real dashboard process, real workers, a real headless Chromium.

The browser is Debian's chromium driven by Selenium through /usr/bin/chromedriver.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from conftest import ROOT, cli_env, run_cli, start_worker, tiny_spec, unique, write_spec
from hpsearch.errors import HpsearchError
from hpsearch.ops import dashboard

# ---------------------------------------------------------------- a dashboard process

# Every dashboard demands hpsearch's token unless told otherwise; these tests give it theirs.
TOKEN = "dashboard-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def start_dashboard(storage: str, *extra: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], str]:
    """`hpsearch dashboard --port 0 ...`; returns the process and its base URL once it listens."""
    proc = subprocess.Popen([sys.executable, "-m", "hpsearch", "dashboard", "--storage", storage, "--port", "0",
                             *extra], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env or cli_env(HPSEARCH_TOKEN=TOKEN), cwd=ROOT)
    line = proc.stdout.readline()  # type: ignore[union-attr]
    match = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
    if match is None:
        proc.kill()
        raise AssertionError(f"dashboard did not start: {line}{proc.communicate()[0]}")
    return proc, f"http://127.0.0.1:{match[1]}"


def stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def request(url: str, method: str = "GET", headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def study_names(base: str, headers: dict[str, str] | None = None) -> list[str]:
    status, body = request(f"{base}/api/studies", headers=headers or AUTH)
    assert status == 200, body
    return [s["study_name"] for s in json.loads(body)["study_summaries"]]


def wait_for(condition: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


# ---------------------------------------------------------------- in the browser


def _page_text(driver: Any) -> str:
    from selenium.webdriver.common.by import By

    return str(driver.find_element(By.TAG_NAME, "body").text)


def _complete_trials(driver: Any) -> int:
    """Trials the study's trial list shows as Complete (the page updates itself while workers run)."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    try:
        items = [li.text for li in driver.find_elements(By.CSS_SELECTOR, "li")]
    except StaleElementReferenceException:  # the list re-rendered under us; ask again
        return -1
    return sum(1 for t in items if t.startswith("Trial ") and "\nComplete" in t)


def test_browser_watches_a_running_study_and_read_only_refuses_delete(
        tmp_path: Path, journal_url: str, browser: Any) -> None:
    name = unique("live")
    spec = tiny_spec(name, space={"lr": {"choices": [0.001, 0.003, 0.01, 0.03]}, "optimizer": {"choices": ["sgd", "adam"]}})
    run_cli("create-study", str(write_spec(tmp_path, spec)), "--storage", journal_url, check=True)
    server, base = start_dashboard(journal_url, "--read-only")
    # Two phases make "the count grows" independent of machine speed: a first worker runs 2 of
    # the 8 trials while the page loads; the page then watches a second worker run the rest.
    workers = [start_worker(name, journal_url, "--quiet", "--n-trials", "2", log=tmp_path / "w0.log")]
    try:
        # --- the study list shows the study --------------------------------------------------
        browser.get(f"{base}/dashboard?token={TOKEN}")  # once; then the cookie
        wait_for(lambda: name in _page_text(browser), 60, f"study {name} on the study list")

        # --- its trial list fills up while workers run, without reloading the page ------------
        study_id = browser.execute_script(  # a returned promise is awaited by the driver
            "return fetch('/api/studies').then(r => r.json()).then(j => "
            f"j.study_summaries.find(s => s.study_name === {json.dumps(name)}).study_id);")
        browser.get(f"{base}/dashboard/studies/{study_id}/trials")
        wait_for(lambda: "8 Trials" in _page_text(browser), 60, "the study's 8 trials on its page")
        assert workers[0].wait(timeout=120) == 0
        wait_for(lambda: _complete_trials(browser) == 2, 60, "the first worker's 2 complete trials")
        workers.append(start_worker(name, journal_url, "--quiet", log=tmp_path / "w1.log"))
        wait_for(lambda: _complete_trials(browser) > 2, 90, "more complete trials while the second worker runs")
        wait_for(lambda: _complete_trials(browser) == 8, 120, "all 8 trials complete on the page")
        assert workers[1].wait(timeout=60) == 0  # the study is done; it leaves

        # --- read-only: the browser's own DELETE is refused and the study stays ----------------
        status = browser.execute_script(
            f"return fetch('/api/studies/{study_id}', {{method: 'DELETE'}}).then(r => r.status);")
        assert status == 403
        browser.get(f"{base}/dashboard")
        wait_for(lambda: name in _page_text(browser), 60, "the study still listed after the refused delete")
        assert name in study_names(base)
        code, body = request(f"{base}/api/trials/0/tell", method="POST", headers=AUTH)
        assert code == 403 and b"read-only" in body
    finally:
        for w in workers:
            stop(w)
        stop(server)


EDIT_NOTE = 'button:has(svg[data-testid="EditIcon"])'


def _shown(driver: Any, css: str) -> list[bool]:
    """Whether each element the selector finds is displayed (present in the page, but maybe hidden)."""
    from selenium.webdriver.common.by import By

    return [e.is_displayed() for e in driver.find_elements(By.CSS_SELECTOR, css)]


def test_read_only_page_says_so_and_offers_no_delete_or_edit(tmp_path: Path, journal_url: str, browser: Any) -> None:
    name = unique("ro-page")
    run_cli("create-study", str(write_spec(tmp_path, tiny_spec(name))), "--storage", journal_url, check=True)
    from selenium.webdriver.common.by import By

    browser.set_window_size(1400, 900)
    for read_only in (True, False):  # the pair: the same page, with and without --read-only
        server, base = start_dashboard(journal_url, *(["--read-only"] if read_only else []))
        try:
            browser.get(f"{base}/dashboard?token={TOKEN}")  # each dashboard its own port, and its own login
            wait_for(lambda: name in _page_text(browser), 60, f"study {name} on the study list")
            wait_for(lambda: _shown(browser, 'button[aria-label="delete study"]'), 30, "the study card's buttons")
            banners = browser.find_elements(By.ID, dashboard.BANNER_ID)
            controls = ('button[aria-label="delete study"]', 'button[aria-label="rename study"]',
                        'button:has(svg[data-testid="AddBoxIcon"])')
            if read_only:
                (banner,) = banners
                assert banner.is_displayed() and "Read-only dashboard" in banner.text
                header = browser.find_element(By.TAG_NAME, "header").rect
                assert banner.rect["y"] + banner.rect["height"] <= header["y"]  # above the app bar, not over it
                assert all(_shown(browser, css) == [False] for css in controls)  # in the page, not offered
                assert "RELOAD" in _page_text(browser)  # reading controls stay
            else:
                assert banners == [] and all(_shown(browser, css) == [True] for css in controls)
            if read_only:  # a trial's note editor, on the study's trial list
                study_id = browser.execute_script(
                    "return fetch('/api/studies').then(r => r.json()).then(j => "
                    f"j.study_summaries.find(s => s.study_name === {json.dumps(name)}).study_id);")
                browser.get(f"{base}/dashboard/studies/{study_id}/trials")
                wait_for(lambda: "Trial 0" in _page_text(browser), 60, "the trial list")
                wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, EDIT_NOTE), 30, "the note's edit button")
                assert _shown(browser, EDIT_NOTE) == [False]
            # A browser holding the writable page must not get "304 Not Modified" for it.
            code, html = request(f"{base}/dashboard",
                                 headers={**AUTH, "If-Modified-Since": "Fri, 01 Jan 2100 00:00:00 GMT"})
            assert (code, dashboard.BANNER_ID.encode() in html) == ((200, True) if read_only else (304, False))
        finally:
            stop(server)


def test_dashboard_help_names_the_auth_file_and_variable() -> None:
    proc = run_cli("dashboard", "--help")
    text = " ".join(proc.stdout.split())
    assert proc.returncode == 0 and "@FILE" in text and "$HPSEARCH_DASHBOARD_AUTH" in text
    assert "TLS" in text and "SSH tunnel" in text
    assert "$HPSEARCH_TOKEN" in text and "--no-auth" in text and "DANGEROUS" in text


@pytest.mark.parametrize(("host", "auth", "warned"), [
    ("0.0.0.0", "user:password", True), ("10.1.2.3", "a-long-token", True),
    ("127.0.0.1", "user:password", False), ("0.0.0.0", None, False),
])
def test_a_credential_over_plain_http_off_loopback_is_warned_about(host: str, auth: str | None, warned: bool) -> None:
    message = dashboard.clear_text_warning(host, dashboard.parse_credential(auth) if auth else None)
    assert (message is not None) == warned
    assert message is None or ("in clear" in message and "TLS" in message and "SSH tunnel" in message)


# ---------------------------------------------------------------- authentication and exposure


def test_a_credential_is_required_and_checked(tmp_path: Path, journal_url: str) -> None:
    name = unique("auth")
    run_cli("create-study", str(write_spec(tmp_path, tiny_spec(name))), "--storage", journal_url, check=True)
    secret_file = tmp_path / "dashboard.auth"
    secret_file.write_text("alice:s3cret-pass\n")
    server, base = start_dashboard(journal_url, "--auth", f"@{secret_file}")
    try:
        good = {"Authorization": "Basic " + base64.b64encode(b"alice:s3cret-pass").decode()}
        bad = {"Authorization": "Basic " + base64.b64encode(b"alice:wrong").decode()}
        status, _ = request(f"{base}/api/studies")
        assert status == 401
        assert request(f"{base}/api/studies", headers=bad)[0] == 401
        assert request(f"{base}/api/studies", headers={"Authorization": "Bearer s3cret-pass"})[0] == 401
        assert name in study_names(base, headers=good)
        # Not read-only: an authenticated write goes through, but not from another site's page.
        study_id = json.loads(request(f"{base}/api/studies", headers=good)[1])["study_summaries"][0]["study_id"]
        evil = {**good, "Origin": "http://evil.example"}
        assert request(f"{base}/api/studies/{study_id}", method="DELETE", headers=evil)[0] == 403
        assert name in study_names(base, headers=good)
        assert request(f"{base}/api/studies/{study_id}", method="DELETE", headers=good)[0] == 204
        assert name not in study_names(base, headers=good)
    finally:
        stop(server)


def test_a_token_works_as_bearer_or_basic_password(tmp_path: Path, journal_url: str) -> None:
    run_cli("create-study", str(write_spec(tmp_path, tiny_spec(unique("tok")))), "--storage", journal_url, check=True)
    token = "tok-" + "x" * 28
    server, base = start_dashboard(journal_url, env=cli_env(HPSEARCH_DASHBOARD_AUTH=token))
    try:
        assert request(f"{base}/api/studies")[0] == 401
        assert request(f"{base}/api/studies", headers={"Authorization": f"Bearer {token}"})[0] == 200
        basic = "Basic " + base64.b64encode(f"anyone:{token}".encode()).decode()
        assert request(f"{base}/api/studies", headers={"Authorization": basic})[0] == 200
    finally:
        stop(server)
    assert token not in (server.stdout.read() if server.stdout else "")  # type: ignore[union-attr]


def test_loopback_dashboard_refuses_foreign_host_headers(tmp_path: Path, journal_url: str) -> None:
    # A DNS-rebinding page reaches 127.0.0.1 under its own name; only loopback names are served.
    run_cli("create-study", str(write_spec(tmp_path, tiny_spec(unique("host")))), "--storage", journal_url, check=True)
    server, base = start_dashboard(journal_url)
    try:
        assert request(f"{base}/api/studies", headers=AUTH)[0] == 200
        assert request(f"{base}/api/studies", headers={**AUTH, "Host": "attacker.example"})[0] == 403
        port = base.rsplit(":", 1)[1]
        assert request(f"{base}/api/studies", headers={**AUTH, "Host": f"localhost:{port}"})[0] == 200
    finally:
        stop(server)


def test_exposing_without_protection_is_refused_with_a_clear_message(journal_url: str) -> None:
    proc = run_cli("dashboard", "--storage", journal_url, "--host", "0.0.0.0", "--port", "0")
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "--read-only" in proc.stderr and "--auth" in proc.stderr


@pytest.mark.parametrize(("host", "read_only", "auth", "ok"), [
    ("127.0.0.1", False, None, True),
    ("::1", False, None, True),
    ("localhost", False, None, True),
    ("0.0.0.0", True, None, True),
    ("0.0.0.0", False, "user:password", True),
    ("0.0.0.0", False, None, False),
    ("10.1.2.3", False, None, False),
])
def test_exposure_rule(host: str, read_only: bool, auth: str | None, ok: bool) -> None:
    cred = dashboard.parse_credential(auth) if auth else None
    if ok:
        dashboard.check_exposure(host, read_only, cred)
    else:
        with pytest.raises(HpsearchError, match="--read-only"):
            dashboard.check_exposure(host, read_only, cred)


@pytest.mark.parametrize("value", ["user:", ":password", "short"])
def test_bad_credentials_are_user_errors(value: str) -> None:
    with pytest.raises(HpsearchError, match="--auth"):
        dashboard.parse_credential(value)


def test_credential_checks_user_and_password() -> None:
    cred = dashboard.parse_credential("bob:hunter2-long")
    assert cred is not None and cred.user == "bob"

    def basic(pair: str) -> str:
        return "Basic " + base64.b64encode(pair.encode()).decode()

    assert cred.accepts(basic("bob:hunter2-long"))
    assert not cred.accepts(basic("eve:hunter2-long"))
    assert not cred.accepts(basic("bob:hunter2"))
    assert not cred.accepts("Bearer hunter2-long")  # a user:password credential is basic only
    assert not cred.accepts("Basic !!!not-base64")
