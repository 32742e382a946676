"""The web console in a real headless Chromium (issue 14): sign in, the dashboard with the
host's name and charts that move, a command run and its output followed, a running job
killed, a directory browsed, the pages at phone width and by keyboard; no errors in the
browser's console.  Screenshots of each page are written to tests/artifacts/console/."""

from __future__ import annotations

import os
import socket
import time

import pytest
from twisted.internet import defer
from twisted.trial import unittest

from tests.browser_support import BrowserCase, button, elapsed, field_for, sign_in
from tests.support import FakePasswords, make_config, short_tempdir, start_daemon

pytestmark = pytest.mark.slow


class ConsoleInBrowser(BrowserCase):
    @defer.inlineCallbacks
    def setUp(self):
        super().setUp()
        self.dir = short_tempdir(self)
        cfg = make_config(self.dir, system_state_interval=1)
        self.running = yield start_daemon(self, cfg, passwords=FakePasswords({"root": "pw"}))
        self.url = f"https://127.0.0.1:{self.running.port}/"
        self.driver = yield self.open_browser()

    def signed_in(self, driver):
        from selenium.webdriver.common.by import By

        sign_in(driver, self.url, "root", "pw")
        self.wait_for(driver, lambda d: d.find_element(By.ID, "dash-hostname").text not in ("", "…"),
                      what="the dashboard's hostname")

    def no_errors(self, driver):
        self.assertEqual(self.browser_errors(driver), [])

    @defer.inlineCallbacks
    def test_sign_in_shows_the_host_and_charts_that_move(self):
        from selenium.webdriver.common.by import By

        def steps(driver):
            start = time.monotonic()
            driver.get(self.url)
            self.wait_for(driver, lambda d: d.find_elements(By.XPATH, "//button[text()='Sign in']"))
            rendered = driver.execute_script(
                "const m = performance.getEntriesByName('sysadmd-login-rendered'); return m.length ? m[0].startTime : null;")
            self.screenshot(driver, "login")
            field_for(driver, "User").send_keys("root")
            field_for(driver, "Password").send_keys("pw")
            clicked = time.monotonic()
            button(driver, "Sign in").click()
            self.wait_for(driver, lambda d: d.find_element(By.ID, "dash-hostname").text == socket.gethostname(),
                          what="the hostname on the dashboard")
            dashboard = elapsed(clicked)
            self.assertEqual(driver.find_element(By.ID, "host-name").text, socket.gethostname())
            self.assertNotIn(driver.find_element(By.ID, "dash-os").text, ("", "…"))
            self.wait_for(driver, lambda d: d.find_element(By.ID, "dash-uptime").text not in ("", "…"))
            self.assertTrue(driver.find_element(By.ID, "dash-priority").text.startswith("Priority: "))
            charts = {name: driver.find_element(By.CSS_SELECTOR, f"canvas[aria-label='{name} chart']")
                      for name in ("CPU", "Memory", "Disk", "Network")}
            first = {name: int(c.get_attribute("data-samples") or 0) for name, c in charts.items()}
            # system-state every second: each chart gets new samples (network from the second on)
            self.wait_for(driver, lambda d: all(int(c.get_attribute("data-samples") or 0) >= first[n] + 2
                                                for n, c in charts.items()), timeout=8, what="charts moving")
            self.assertEqual(driver.execute_script("return window.sessionStorage.length"), 1)
            self.assertEqual(driver.get_cookies(), [])
            self.screenshot(driver, "dashboard")
            self.no_errors(driver)
            return rendered, dashboard, elapsed(start)

        rendered, dashboard, _total = yield self.b(steps, self.driver)
        print(f"\nconsole: login form rendered {rendered:.0f} ms after navigation; dashboard {dashboard * 1000:.0f} ms"
              " after Sign in")
        self.assertLess(rendered, 1000)

    @defer.inlineCallbacks
    def test_run_echo_hello_and_see_its_output_live(self):
        from selenium.webdriver.common.by import By

        def steps(driver):
            self.signed_in(driver)
            driver.find_element(By.LINK_TEXT, "Jobs").click()
            command = field_for(driver, "Command")
            command.send_keys("echo hello")
            button(driver, "Run").click()
            self.wait_for(driver, lambda d: "hello" in d.find_element(By.ID, "job-output").text, what="hello")
            self.wait_for(driver, lambda d: d.find_element(By.ID, "job-output").get_attribute("data-eof") == "true")
            self.assertEqual(driver.find_element(By.ID, "job-output").text, "hello")
            self.wait_for(driver, lambda d: d.find_element(By.ID, "job-state").text == "SUCCESS")
            self.assertEqual(driver.find_element(By.ID, "job-owner").text, "root from 127.0.0.1")
            self.screenshot(driver, "job")
            driver.find_element(By.LINK_TEXT, "← All jobs").click()
            self.wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "[role=row][data-job-id]"))
            row = driver.find_element(By.CSS_SELECTOR, "[role=row][data-job-id]")
            self.assertIn("SUCCESS", row.text)
            self.assertIn("echo hello", row.text)
            self.screenshot(driver, "jobs")
            self.no_errors(driver)

        yield self.b(steps, self.driver)

    @defer.inlineCallbacks
    def test_output_follows_every_byte_and_a_running_job_is_killed(self):
        from selenium.webdriver.common.by import By

        script = os.path.join(self.dir, "ticks.sh")
        with open(script, "w") as f:
            f.write("#!/bin/sh\nfor i in 1 2 3; do echo tick $i; done\nprintf 'caf\\303\\251\\n'\nexec sleep 60\n")
        os.chmod(script, 0o755)

        def steps(driver):
            self.signed_in(driver)
            driver.find_element(By.LINK_TEXT, "Jobs").click()
            field_for(driver, "Command").send_keys(script)
            button(driver, "Run").click()
            self.wait_for(driver, lambda d: "café" in d.find_element(By.ID, "job-output").text, what="live output")
            self.assertEqual(driver.find_element(By.ID, "job-output").text, "tick 1\ntick 2\ntick 3\ncafé")
            self.assertEqual(driver.find_element(By.ID, "job-state").text, "RUNNING")
            kill = button(driver, "Kill")
            self.assertTrue(kill.is_enabled())
            kill.click()
            self.wait_for(driver, lambda d: d.find_element(By.ID, "job-state").text == "ABORTED", what="ABORTED")
            self.assertEqual(driver.find_element(By.ID, "job-outcome").text, "killed")
            self.wait_for(driver, lambda d: d.find_element(By.ID, "job-output").get_attribute("data-eof") == "true")
            self.assertFalse(button(driver, "Kill").is_enabled())
            self.screenshot(driver, "job-killed")
            self.no_errors(driver)

        started = time.monotonic()
        yield self.b(steps, self.driver)
        self.assertLess(elapsed(started), 30)  # killed, not waited for

    @defer.inlineCallbacks
    def test_browse_a_directory_and_the_other_pages(self):
        from selenium.webdriver.common.by import By

        top = os.path.join(self.dir, "browse")
        os.makedirs(os.path.join(top, "inner"))
        with open(os.path.join(top, "inner", "notes.txt"), "w") as f:
            f.write("x" * 1234)

        def steps(driver):
            self.signed_in(driver)
            query = [a.text for a in driver.find_elements(By.CSS_SELECTOR, "nav a")]
            self.assertIn("Files", query)
            driver.find_element(By.LINK_TEXT, "Files").click()
            directory = field_for(driver, "Directory")
            directory.clear()
            directory.send_keys(top)
            button(driver, "Open").click()
            self.wait_for(driver, lambda d: d.find_elements(By.XPATH, "//button[@aria-label='Open inner']"))
            button(driver, "Open inner").click()
            self.wait_for(driver, lambda d: d.find_elements(By.XPATH, "//th[text()='notes.txt']"), what="notes.txt")
            row = driver.find_element(By.XPATH, "//th[text()='notes.txt']/..")
            self.assertIn("1.2 KiB", row.text)
            self.assertEqual(field_for(driver, "Directory").get_attribute("value"), os.path.join(top, "inner"))
            self.screenshot(driver, "files")
            button(driver, "Parent directory").click()
            self.wait_for(driver, lambda d: d.find_elements(By.XPATH, "//button[@aria-label='Open inner']"))
            for name in ("Services", "Users"):
                if name in query:
                    driver.find_element(By.LINK_TEXT, name).click()
                    self.wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, f"table[aria-label='{name}'] tbody tr"),
                                  what=f"the {name} table")
                    self.screenshot(driver, name.lower())
            if "Users" in query:
                self.assertTrue(driver.find_elements(By.XPATH, "//th[text()='root']"))
            self.no_errors(driver)

        yield self.b(steps, self.driver)


class ServicesInBrowser(BrowserCase):
    """The Services page starts, stops, enables and disables a real SysV service (a test
    init script in a temporary init.d that runs a real process)."""

    @defer.inlineCallbacks
    def setUp(self):
        import secrets
        import shutil

        from sysadmd.sysclasses import services as services_mod
        from tests.test_sysclass_services import SCRIPT, install, kill_quietly

        super().setUp()
        if services_mod.systemd_runs() or not shutil.which("start-stop-daemon"):
            raise unittest.SkipTest("the SysV backend is used only without systemd, and the script needs start-stop-daemon")
        root = short_tempdir(self)
        initd = os.path.join(root, "etc", "init.d")
        os.makedirs(initd)
        self.name = f"sdcon{secrets.token_hex(3)}"
        install(initd, self.name, SCRIPT, root)
        self.addCleanup(kill_quietly, root, self.name)
        cfg = make_config(short_tempdir(self), SERVICES_INITD_DIR=initd)
        self.running = yield start_daemon(self, cfg, passwords=FakePasswords({"root": "pw"}))
        self.url = f"https://127.0.0.1:{self.running.port}/"
        self.driver = yield self.open_browser()

    @defer.inlineCallbacks
    def test_start_stop_enable_disable_a_service(self):
        from selenium.webdriver.common.by import By

        name = self.name

        def cells(driver):  # read in one script: the table is rebuilt after each action
            return driver.execute_script(
                "const th = [...document.querySelectorAll('table[aria-label=Services] tbody th')]"
                "  .find((e) => e.textContent === arguments[0]);"
                "return th ? [...th.parentNode.querySelectorAll('td')].slice(1, 3).map((e) => e.textContent) : null;",
                name)

        def steps(driver):
            sign_in(driver, self.url, "root", "pw")
            self.wait_for(driver, lambda d: d.find_elements(By.LINK_TEXT, "Services"))
            driver.find_element(By.LINK_TEXT, "Services").click()
            self.wait_for(driver, lambda d: d.find_elements(By.XPATH, f"//th[text()='{name}']"), what="the service")
            self.assertEqual(cells(driver), ["stopped", "disabled"])
            for verb, expected in (("Start", ["running", "disabled"]), ("Enable", ["running", "enabled"]),
                                   ("Stop", ["stopped", "enabled"]), ("Disable", ["stopped", "disabled"])):
                button(driver, f"{verb} {name}").click()
                self.wait_for(driver, lambda d: cells(d) == expected, timeout=15, what=f"{verb}: {expected}")
            self.assertEqual(self.browser_errors(driver), [])

        yield self.b(steps, self.driver)
