"""The web console's sign-in messages in a real headless Chromium (issue 14 item 2), its use
by keyboard at phone width, and a table of 10,000 jobs that scrolls (item 7)."""

from __future__ import annotations

import time

import pytest
from twisted.internet import defer

from sysadmd.jobs.model import Owner
from tests.browser_support import BrowserCase, button, field_for, sign_in
from tests.support import FakePasswords, make_config, short_tempdir, start_daemon

pytestmark = pytest.mark.slow


class ConsoleSignIn(BrowserCase):
    @defer.inlineCallbacks
    def start(self, **config):
        cfg = make_config(short_tempdir(self), **config)
        self.running = yield start_daemon(self, cfg, passwords=FakePasswords({"root": "pw"}))
        self.url = f"https://127.0.0.1:{self.running.port}/"
        self.driver = yield self.open_browser()

    @staticmethod
    def message(driver) -> str:
        from selenium.webdriver.common.by import By

        return driver.find_element(By.ID, "login-message").text

    @defer.inlineCallbacks
    def test_a_wrong_password_says_so_and_the_right_one_signs_in(self):
        from selenium.webdriver.common.by import By

        yield self.start()

        def steps(driver):
            sign_in(driver, self.url, "root", "wrong")
            self.wait_for(driver, lambda d: self.message(d) == "Wrong user name or password.", what="the refusal")
            self.assertEqual(driver.find_element(By.ID, "login-message").get_attribute("role"), "alert")
            self.assertEqual(driver.execute_script("return window.sessionStorage.length"), 0)
            self.screenshot(driver, "login-wrong-password")
            field_for(driver, "Password").send_keys("pw")
            button(driver, "Sign in").click()
            self.wait_for(driver, lambda d: d.find_elements(By.ID, "dash-hostname"), what="the dashboard")
            self.assertEqual(self.browser_errors(driver), [])

        yield self.b(steps, self.driver)

    @defer.inlineCallbacks
    def test_a_blocked_address_is_told_so(self):
        yield self.start(blacklist_exempt_loopback=False, blacklist_auth_fail_limit=2)

        def steps(driver):
            sign_in(driver, self.url, "root", "wrong")
            self.wait_for(driver, lambda d: self.message(d) == "Wrong user name or password.")
            field_for(driver, "Password").send_keys("wrong again")
            button(driver, "Sign in").click()  # the second failure blocks the address
            self.wait_for(driver, lambda d: self.message(d).startswith("This address is blocked:"), what="blocked")
            self.assertIn("repeated failed logins", self.message(driver))
            # a new visit: the daemon closes the WebSocket right after the handshake (1008)
            sign_in(driver, self.url, "root", "pw")
            self.wait_for(driver, lambda d: self.message(d).startswith("This address is blocked:"), what="still blocked")
            self.assertIn("try again in", self.message(driver))
            self.screenshot(driver, "login-blocked")

        yield self.b(steps, self.driver)

    @defer.inlineCallbacks
    def test_an_expired_session_is_told_so(self):
        from selenium.webdriver.common.by import By

        yield self.start()

        def steps(driver):
            sign_in(driver, self.url, "root", "pw")
            self.wait_for(driver, lambda d: d.find_elements(By.ID, "dash-hostname"))
            token = driver.execute_script("return sessionStorage.getItem('sysadmd.token')")
            self.assertEqual(len(token), 40)
            return token

        token = yield self.b(steps, self.driver)
        # the daemon forgets the token (as when it expires); the page is opened again
        self.running.server.tokens.revoke(token)

        def live(driver):  # the open page's next call is refused: back to the sign-in, saying why
            driver.find_element(By.LINK_TEXT, "Jobs").click()
            self.wait_for(driver, lambda d: d.find_elements(By.ID, "login-message") and
                          self.message(d) == "Your session has expired. Sign in again.", what="expired while open")
            self.assertIsNone(driver.execute_script("return sessionStorage.getItem('sysadmd.token')"))

        yield self.b(live, self.driver)
        token = yield self.b(steps, self.driver)
        self.running.server.tokens.revoke(token)

        def reopened(driver):
            driver.refresh()
            self.wait_for(driver, lambda d: d.find_elements(By.ID, "login-message") and
                          self.message(d) == "Your session has expired. Sign in again.", what="expired")
            self.assertIsNone(driver.execute_script("return sessionStorage.getItem('sysadmd.token')"))
            self.screenshot(driver, "login-expired")

        yield self.b(reopened, self.driver)

    @defer.inlineCallbacks
    def test_keyboard_only_at_phone_width(self):
        from selenium.webdriver.common.by import By
        from selenium.webdriver.common.keys import Keys

        cfg = make_config(short_tempdir(self))
        self.running = yield start_daemon(self, cfg, passwords=FakePasswords({"root": "pw"}))
        driver = yield self.open_browser(390, 844)
        url = f"https://127.0.0.1:{self.running.port}/"

        def steps(driver):
            driver.get(url)
            self.wait_for(driver, lambda d: d.find_elements(By.ID, "login-message"))
            active = driver.switch_to.active_element
            self.assertEqual(active.get_attribute("autocomplete"), "username")  # focus starts on User
            active.send_keys("root", Keys.TAB)
            driver.switch_to.active_element.send_keys("pw", Keys.ENTER)
            self.wait_for(driver, lambda d: d.find_elements(By.ID, "dash-hostname"), what="the dashboard")
            self.screenshot(driver, "dashboard-phone")
            # Tab to the Jobs link and follow it with Enter
            for _ in range(12):
                driver.switch_to.active_element.send_keys(Keys.TAB)
                if driver.switch_to.active_element.text == "Jobs":
                    break
            self.assertEqual(driver.switch_to.active_element.text, "Jobs")
            driver.switch_to.active_element.send_keys(Keys.ENTER)
            command = self.wait_for(driver, lambda d: field_for(d, "Command"))
            command.send_keys("echo hello", Keys.ENTER)
            self.wait_for(driver, lambda d: d.find_element(By.ID, "job-output").text == "hello", what="hello")
            width = driver.execute_script("return document.documentElement.scrollWidth")
            self.assertLessEqual(width, 390)  # nothing wider than the phone's screen
            self.screenshot(driver, "job-phone")
            self.assertEqual(self.browser_errors(driver), [])

        yield self.b(steps, driver)

    @defer.inlineCallbacks
    def test_ten_thousand_jobs_scroll_without_freezing(self):
        from selenium.webdriver.common.by import By

        yield self.start()
        table = self.running.daemon.jobs.table
        owner = Owner("root", "password", "127.0.0.1")
        started = time.monotonic()
        with table.db:
            for i in range(10000):
                job_id = table.create("test.fill", [i], owner, commands=[f"true {i}"])
                if i % 3:
                    table.started(job_id)
                if i % 3 == 2:
                    table.finish(job_id, "succeeded")
        fill = time.monotonic() - started

        def steps(driver):
            sign_in(driver, self.url, "root", "pw")
            self.wait_for(driver, lambda d: d.find_elements(By.ID, "dash-hostname"))
            t0 = time.monotonic()
            driver.find_element(By.LINK_TEXT, "Jobs").click()
            self.wait_for(driver, lambda d: d.find_element(By.CSS_SELECTOR, "[role=table][aria-label=Jobs]")
                          .get_attribute("data-loaded") == "true", timeout=30, what="10,000 jobs loaded")
            # The table is drawn on the next animation frame after the last page came in.
            self.wait_for(driver, lambda d: d.find_element(By.CSS_SELECTOR, "[role=table]")
                          .get_attribute("aria-rowcount") == "10001", what="all 10,000 rows counted")
            loaded = time.monotonic() - t0
            rows = len(driver.find_elements(By.CSS_SELECTOR, "[role=row][data-job-id]"))
            self.assertLess(rows, 80)  # virtualised: only what is in view, not 10,000 rows
            # scroll through the whole table, a step per frame; the longest frame is measured
            longest = driver.execute_async_script("""
                const done = arguments[arguments.length - 1];
                const body = document.querySelector('.vbody');
                let last = performance.now(), longest = 0, step = 0;
                function frame(now) {
                  longest = Math.max(longest, now - last); last = now;
                  body.scrollTop = step * (body.scrollHeight / 120);
                  if (++step <= 120) requestAnimationFrame(frame); else done(longest);
                }
                requestAnimationFrame(frame);""")
            self.wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "[role=row][data-job-id='1']"),
                          what="the oldest job at the bottom")
            self.assertLess(len(driver.find_elements(By.CSS_SELECTOR, "[role=row][data-job-id]")), 80)
            driver.execute_script("document.querySelector('.vbody').scrollTop = 36 * 5000")
            self.wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "[role=row][data-job-id='5000']"),
                          what="job 5000 in the middle")
            self.screenshot(driver, "jobs-10000")
            self.assertEqual(self.browser_errors(driver), [])
            return loaded, longest

        loaded, longest = yield self.b(steps, self.driver)
        print(f"\n10,000 jobs: filled in {fill:.1f} s, listed in {loaded:.2f} s, longest frame while scrolling "
              f"{longest:.0f} ms")
        self.assertLess(longest, 250)
