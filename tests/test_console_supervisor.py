"""The console's service logs and Supervisor page in a real headless Chromium (issue 14 item 5):
a real SysV script that writes its own log (in a test log directory, SERVICES_LOG_DIR; the
syslog tag lines come from a syslog file there, as no syslog daemon runs in tests) shown by
"Logs" and read again by "Refresh"; a program added from a JSON definition, started, its
output followed live, stopped; a bad definition's error naming the field.  Screenshots go
to tests/artifacts/console/."""

from __future__ import annotations

import os
import secrets
import shutil

import pytest
from twisted.internet import defer

from sysadmd.sysclasses import services as services_mod
from tests.browser_support import BrowserCase, button, field_for, sign_in
from tests.support import FakePasswords, make_config, short_tempdir, start_daemon
from tests.supervisor_support import PY
from tests.test_sysclass_services import kill_quietly

pytestmark = pytest.mark.slow

# An init script that starts a real daemon and writes what it does to its own log file.
LOGGING_SCRIPT = """#!/bin/sh
### BEGIN INIT INFO
# Provides:          {name}
# Default-Start:     2 3 4 5
# Default-Stop:      0 1 6
# Short-Description: sysadmd console log test {name}
### END INIT INFO
PIDFILE={piddir}/{name}.pid
LOG={logdir}/{name}.log
case "$1" in
  start) echo "{name}: starting (run $$)" >> "$LOG"
         exec start-stop-daemon --start --quiet --background --make-pidfile --pidfile "$PIDFILE" --exec {sleep} -- 300 ;;
  stop) echo "{name}: stopping" >> "$LOG"
        exec start-stop-daemon --stop --quiet --oknodo --pidfile "$PIDFILE" --remove-pidfile --retry 5 ;;
  restart) "$0" stop && exec "$0" start ;;
  status) exec start-stop-daemon --status --pidfile "$PIDFILE" ;;
  *) echo "Usage: $0 {{start|stop|restart|status}}" >&2; exit 3 ;;
esac
"""


class ServiceLogsInBrowser(BrowserCase):
    @defer.inlineCallbacks
    def setUp(self):
        super().setUp()
        if services_mod.systemd_runs() or not shutil.which("start-stop-daemon"):
            raise unittest_skip("the SysV backend is used only without systemd, and the script needs start-stop-daemon")
        root = short_tempdir(self)
        initd = os.path.join(root, "init.d")
        self.logdir = os.path.join(root, "log")
        os.makedirs(initd)
        os.makedirs(self.logdir)
        self.name = f"sdlog{secrets.token_hex(3)}"
        path = os.path.join(initd, self.name)
        with open(path, "w") as f:
            f.write(LOGGING_SCRIPT.format(name=self.name, piddir=root, logdir=self.logdir, sleep=shutil.which("sleep")))
        os.chmod(path, 0o755)
        self.addCleanup(kill_quietly, root, self.name)
        with open(os.path.join(self.logdir, "syslog"), "w") as f:
            f.write(f"Nov 26 05:30:00 host {self.name}[77]: hello from syslog\nNov 26 05:30:01 host cron[8]: other\n")
        os.utime(os.path.join(self.logdir, "syslog"), (1, 1))
        cfg = make_config(short_tempdir(self), SERVICES_INITD_DIR=initd, SERVICES_LOG_DIR=self.logdir)
        self.running = yield start_daemon(self, cfg, passwords=FakePasswords({"root": "pw"}))
        self.url = f"https://127.0.0.1:{self.running.port}/"
        self.driver = yield self.open_browser()

    @defer.inlineCallbacks
    def test_logs_of_a_real_service_and_refresh(self):
        from selenium.webdriver.common.by import By

        name = self.name

        def log_text(driver):
            views = driver.find_elements(By.CSS_SELECTOR, f"section.log-view[data-service='{name}'] pre")
            return views[0].text if views else None

        def steps(driver):
            sign_in(driver, self.url, "root", "pw")
            self.wait_for(driver, lambda d: d.find_elements(By.LINK_TEXT, "Services"))
            driver.find_element(By.LINK_TEXT, "Services").click()
            button(driver, f"Start {name}").click()
            self.wait_for(driver, lambda d: d.find_elements(
                By.XPATH, f"//th[text()='{name}']/following-sibling::td[text()='running']"), timeout=15, what="running")
            button(driver, f"Logs of {name}").click()
            self.wait_for(driver, lambda d: f"{name}: starting" in (log_text(d) or ""), what="the service's log")
            lines = log_text(driver).split("\n")
            self.assertEqual(lines[0], f"Nov 26 05:30:00 host {name}[77]: hello from syslog")  # by tag, oldest block first
            self.assertEqual(len(lines), 2, lines)
            source = driver.find_element(By.CSS_SELECTOR, "section.log-view [role=status]").text
            self.assertIn(f"{name}.log", source)
            self.assertIn("syslog", source)
            self.screenshot(driver, "services-logs")
            button(driver, f"Restart {name}").click()
            self.wait_for(driver, lambda d: os.path.exists(os.path.join(self.logdir, f"{name}.log"))
                          and open(os.path.join(self.logdir, f"{name}.log")).read().count("starting") == 2,
                          timeout=15, what="the restart written to the log")
            button(driver, "Refresh").click()
            self.wait_for(driver, lambda d: (log_text(d) or "").count(f"{name}: starting") == 2, what="the refreshed log")
            self.assertIn(f"{name}: stopping", log_text(driver))
            button(driver, "Close").click()
            self.wait_for(driver, lambda d: log_text(d) is None, what="the log view closed")
            self.assertEqual(self.browser_errors(driver), [])

        yield self.b(steps, self.driver)


def unittest_skip(why):
    from twisted.trial import unittest
    return unittest.SkipTest(why)


TICKER = [PY, "-u", "-c", "import time\nfor i in range(100000):\n    print('tick', i)\n    time.sleep(0.2)"]


class SupervisorInBrowser(BrowserCase):
    @defer.inlineCallbacks
    def setUp(self):
        super().setUp()
        cfg = make_config(short_tempdir(self), LIMITED_ACCESS_GROUPS="daemon")
        self.running = yield start_daemon(self, cfg, passwords=FakePasswords({"root": "pw", "daemon": "pw2"}))
        self.url = f"https://127.0.0.1:{self.running.port}/"
        self.driver = yield self.open_browser()

    @defer.inlineCallbacks
    def test_add_start_follow_stop_and_a_bad_definition(self):
        import json

        from selenium.webdriver.common.by import By

        sup = self.running.daemon.supervisor

        def cell(driver, column):  # 0 state, 1 pid, 2 uptime, 3 restarts
            rows = driver.find_elements(By.CSS_SELECTOR, "tr[data-program='ticker'] td")
            return rows[column].text if rows else None

        def output(driver):
            found = driver.find_elements(By.ID, "program-output")
            return found[0].text if found else ""

        def add(driver, name, definition):
            field_for(driver, "Program name").clear()
            field_for(driver, "Program name").send_keys(name)
            text = field_for(driver, "Definition (JSON)")
            text.clear()
            text.send_keys(definition if isinstance(definition, str) else json.dumps(definition))
            button(driver, "Add program").click()

        def steps(driver):
            sign_in(driver, self.url, "root", "pw")
            self.wait_for(driver, lambda d: d.find_elements(By.LINK_TEXT, "Supervisor"), what="the Supervisor page link")
            driver.find_element(By.LINK_TEXT, "Supervisor").click()
            self.wait_for(driver, lambda d: d.find_element(By.ID, "supervisor-status").text.startswith("No programs"))

            # a bad definition: the server's message names the field
            add(driver, "broken", {"command": ["/bin/true"], "user": "root", "umask": "999"})
            self.wait_for(driver, lambda d: "Could not add broken" in d.find_element(By.ID, "add-program-message").text,
                          what="the push error")
            message = driver.find_element(By.ID, "add-program-message").text
            self.assertIn("umask", message)
            self.assertNotIn("broken", sup.programs)
            self.screenshot(driver, "supervisor-bad-definition")
            add(driver, "broken", '{"command": ["/bin/true"],')  # not JSON: said before any call
            self.wait_for(driver, lambda d: "not JSON" in d.find_element(By.ID, "add-program-message").text)
            self.assertNotIn("broken", sup.programs)

            add(driver, "ticker", {"command": TICKER, "user": "root", "autostart": False, "startsecs": 0.5})
            self.wait_for(driver, lambda d: cell(d, 0) == "STOPPED", what="ticker listed STOPPED")
            self.assertIn("ticker stored", driver.find_element(By.ID, "add-program-message").text)
            self.assertEqual(driver.find_element(By.ID, "program-output-state").text, "ticker has not run yet.")

            button(driver, "Start ticker").click()
            self.wait_for(driver, lambda d: cell(d, 0) == "RUNNING", timeout=15, what="RUNNING from the event")
            self.assertEqual(cell(driver, 1), str(sup.programs["ticker"].pid))
            self.wait_for(driver, lambda d: "tick 3" in output(d), timeout=15, what="the output")
            seen = output(driver).count("tick")
            self.wait_for(driver, lambda d: output(d).count("tick") >= seen + 3, timeout=15, what="more output, live")
            self.assertRegex(cell(driver, 2), r"^\d+s$")
            driver.execute_script("window.scrollTo(0, 0)")
            self.screenshot(driver, "supervisor")

            button(driver, "Stop ticker").click()
            self.wait_for(driver, lambda d: cell(d, 0) == "STOPPED", timeout=15, what="STOPPED")
            self.assertEqual(cell(driver, 1), "")
            self.wait_for(driver, lambda d: d.find_element(By.ID, "program-output").get_attribute("data-eof") == "true",
                          what="the run's output ended")
            first_job = driver.find_element(By.CSS_SELECTOR, "section.program-output").get_attribute("data-job")

            # started again: a new run, followed in the same view
            button(driver, "Start ticker").click()
            self.wait_for(driver, lambda d: d.find_element(By.CSS_SELECTOR, "section.program-output")
                          .get_attribute("data-job") not in (first_job, None), timeout=15, what="the new run")
            self.wait_for(driver, lambda d: "--- a new run" in output(d) and output(d).split("--- a new run")[1]
                          .count("tick") >= 2, timeout=15, what="the new run's output")
            self.assertEqual(int(driver.find_element(By.CSS_SELECTOR, "section.program-output").get_attribute("data-job")),
                             sup.programs["ticker"].job_id)
            self.assertTrue(button(driver, "Repair ticker").get_attribute("disabled"))
            self.assertEqual(self.browser_errors(driver), [])

        yield self.b(steps, self.driver)

    @defer.inlineCallbacks
    def test_limited_access_sees_programs_but_no_changes_at_phone_width(self):
        from selenium.webdriver.common.by import By

        sup = self.running.daemon.supervisor
        reply = yield sup.handle("push", "ticker", {"command": TICKER, "user": "root", "autostart": False},
                                 full_access=True, actor="test")
        self.assertEqual(reply.status, "success")
        driver = yield self.open_browser(390, 844)

        def steps(driver):
            sign_in(driver, self.url, "daemon", "pw2")
            self.wait_for(driver, lambda d: d.find_elements(By.LINK_TEXT, "Supervisor"), what="the Supervisor page link")
            driver.find_element(By.LINK_TEXT, "Supervisor").click()
            self.wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "tr[data-program='ticker'][data-state='STOPPED']"),
                          what="the program listed")
            self.assertTrue(button(driver, "Output of ticker").is_displayed())
            self.assertEqual(driver.find_elements(By.XPATH, "//button[@aria-label='Start ticker']"), [])
            self.assertEqual(driver.find_elements(By.XPATH, "//form[@aria-label='Add a program']"), [])
            self.screenshot(driver, "supervisor-phone-limited")
            if driver.find_elements(By.LINK_TEXT, "Services"):  # logs need full access: no Logs buttons
                driver.find_element(By.LINK_TEXT, "Services").click()
                self.wait_for(driver, lambda d: d.find_element(By.CSS_SELECTOR, "[role=status]").text.startswith(tuple("0123456789")))
                self.assertEqual(driver.find_elements(By.XPATH, "//button[starts-with(@aria-label, 'Logs of ')]"), [])
            self.assertEqual(self.browser_errors(driver), [])

        yield self.b(steps, driver)
