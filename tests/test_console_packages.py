"""The console's Packages page in a real headless Chromium (issue 14, item 5), against a
private ``file:`` apt repository (built as tests/test_sysclass_pkg.py does, apt pointed at
it only through PKG_APT_CONFIG): search, install from the browser with the progress bar
following the job to 100% and its output shown, hold/unhold, then remove; the package is
purged at cleanup.  No errors in the browser's console."""

from __future__ import annotations

import os
import subprocess

import pytest
from twisted.internet import defer
from twisted.trial import unittest

from tests.browser_support import BrowserCase, button, field_for, sign_in
from tests.support import FakePasswords, make_config, short_tempdir, start_daemon
from tests.test_sysclass_pkg import build_package, index_repo, usable

pytestmark = pytest.mark.slow

NAME = "sdconsole-pkg"  # not one of test_sysclass_pkg's names: the two may run side by side
BAD = "sdconsole-bad"  # its postinst fails


def installed_version(name=NAME):
    out = subprocess.run(["dpkg-query", "-W", "-f", "${Version} ${db:Status-Abbrev}", name],
                         capture_output=True, text=True).stdout.split()
    return out[0] if len(out) == 2 and out[1][1:2] == "i" else None


def present(name):
    """Any trace of the package in dpkg's database (installed, half-configured, config files)."""
    out = subprocess.run(["dpkg-query", "-W", "-f", "${db:Status-Abbrev}", name], capture_output=True, text=True)
    return out.returncode == 0 and out.stdout.strip()[1:2] not in ("", "n")


def purge(apt_conf):
    subprocess.run(["apt-mark", "unhold", NAME], capture_output=True)
    left = [name for name in (NAME, BAD) if present(name)]
    if left:
        subprocess.run(["apt-get", "-y", "-q", "-o", "DPkg::Lock::Timeout=120", "purge", *left],
                       env=dict(os.environ, APT_CONFIG=apt_conf, DEBIAN_FRONTEND="noninteractive"),
                       capture_output=True)


class PackagesInBrowser(BrowserCase):
    timeout = 120

    @defer.inlineCallbacks
    def setUp(self):
        super().setUp()
        if not usable():
            raise unittest.SkipTest("needs root, apt, dpkg-dev and apt-utils (a Debian host)")
        if present(NAME) or present(BAD):
            raise unittest.SkipTest(f"{NAME} or {BAD} is already installed on this host")
        root = short_tempdir(self)
        repo, build = os.path.join(root, "repo"), os.path.join(root, "build")
        for d in ("repo", "build", "lists/partial", "cache/archives/partial", "log", "parts"):
            os.makedirs(os.path.join(root, d))
        # configuring takes a moment, so the page sees the job running with apt's figures
        build_package(build, repo, NAME, "1.0", postinst="sleep 1")
        build_package(build, repo, BAD, "1.0", postinst="echo 'sdconsole-bad: configuration refused' >&2; exit 1")
        index_repo(repo)
        with open(os.path.join(root, "sources.list"), "w") as f:
            f.write(f"deb [trusted=yes] file:{repo} ./\n")
        self.apt_conf = os.path.join(root, "apt.conf")
        with open(self.apt_conf, "w") as f:
            f.write(f'Dir::Etc::sourcelist "{root}/sources.list";\nDir::Etc::sourceparts "{root}/parts";\n'
                    f'Dir::State::Lists "{root}/lists";\nDir::Cache "{root}/cache";\nDir::Log "{root}/log";\n')
        self.addCleanup(purge, self.apt_conf)
        subprocess.run(["apt-get", "-q", "update"], env=dict(os.environ, APT_CONFIG=self.apt_conf),
                       check=True, capture_output=True)
        cfg = make_config(short_tempdir(self), PKG_APT_CONFIG=self.apt_conf)
        self.running = yield start_daemon(self, cfg, passwords=FakePasswords({"root": "pw"}))
        self.url = f"https://127.0.0.1:{self.running.port}/"
        self.driver = yield self.open_browser()

    @staticmethod
    def row(driver):
        """The result row's cell texts, read at once (the table is rebuilt after each change)."""
        return driver.execute_script(
            "const r = document.querySelector(`tr[data-pkg='${arguments[0]}']`);"
            "return r ? [...r.cells].map((c) => c.innerText.replace(/\\s+/g, ' ').trim()) : null;", NAME)

    def change(self, driver, verb, name=NAME, state="SUCCESS"):
        """Click "<verb> <name>"; wait for its job panel to finish in `state`; the panel."""
        from selenium.webdriver.common.by import By

        button(driver, f"{verb} {name}").click()
        panel = self.wait_for(driver, lambda d: d.find_elements(
            By.CSS_SELECTOR, f"section.pkg-job[aria-label='{verb} {name}']"), what=f"the {verb} panel")[0]
        self.wait_for(driver, lambda d: panel.get_attribute("data-state") in ("SUCCESS", "FAILED", "ABORTED"),
                      timeout=60, what=f"{verb} to finish")
        self.assertEqual(panel.get_attribute("data-state"), state,
                         panel.text + "\n" + driver.find_element(By.CSS_SELECTOR, ".error-message").text)
        return panel

    def search(self, driver, term):
        from selenium.webdriver.common.by import By

        sign_in(driver, self.url, "root", "pw")
        self.wait_for(driver, lambda d: d.find_elements(By.LINK_TEXT, "Packages"), what="the Packages link")
        driver.find_element(By.LINK_TEXT, "Packages").click()
        field_for(driver, "Search packages").send_keys(term)
        button(driver, "Search").click()

    @defer.inlineCallbacks
    def test_search_install_with_progress_hold_and_remove(self):
        from selenium.webdriver.common.by import By

        def steps(driver):
            self.search(driver, "sdconsole-pkg")
            self.wait_for(driver, lambda d: self.row(d), timeout=30, what="the search result")
            self.assertEqual(self.row(driver)[:4], [NAME, "1.0", "no", f"sysadmd test package {NAME}"])
            self.screenshot(driver, "packages")

            panel = self.change(driver, "Install")
            bar = panel.find_element(By.XPATH, f".//progress[@aria-label='Progress of install {NAME}']")
            self.assertEqual(bar.get_attribute("value"), "100")
            shown = panel.find_element(By.CSS_SELECTOR, "pre.pkg-output")
            self.wait_for(driver, lambda d: "Setting up" in shown.text, what="apt's output in the panel")
            self.assertEqual(installed_version(), "1.0")
            self.wait_for(driver, lambda d: (self.row(d) or [""] * 5)[2] == "yes", what="the row marked installed")
            self.screenshot(driver, "packages-installed")

            self.change(driver, "Hold")
            self.wait_for(driver, lambda d: (self.row(d) or [""] * 5)[2] == "yes (held)", what="held")
            self.change(driver, "Unhold")
            self.wait_for(driver, lambda d: (self.row(d) or [""] * 5)[2:5:2] == ["yes", "Remove Hold"], what="unheld")

            driver.execute_script("window.confirm = () => true;")  # the removal asks first
            self.change(driver, "Remove")
            self.wait_for(driver, lambda d: (self.row(d) or [""] * 5)[2:5:2] == ["no", "Install"], what="the row marked removed")
            self.assertIsNone(installed_version())
            self.assertEqual(self.browser_errors(driver), [])
            return bar.get_attribute("data-figures")

        figures = yield self.b(steps, self.driver)
        print(f"\nconsole install progress: the bar showed {figures} distinct values, the last 100%")
        self.assertGreaterEqual(int(figures), 2)  # apt's figures while it ran, then 100

    @defer.inlineCallbacks
    def test_a_failed_install_and_an_empty_search_are_shown(self):
        from selenium.webdriver.common.by import By

        def steps(driver):
            self.search(driver, "sdconsole-nothing-like-this")
            status = driver.find_element(By.CSS_SELECTOR, "section.page > p[role=status]")
            self.wait_for(driver, lambda d: status.text.startswith("0 packages match"), timeout=30, what="no match")
            search = field_for(driver, "Search packages")
            search.clear()
            search.send_keys(BAD)
            button(driver, "Search").click()
            self.wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, f"tr[data-pkg='{BAD}']"), timeout=30,
                          what=f"{BAD} found")
            panel = self.change(driver, "Install", BAD, state="FAILED")
            output = panel.find_element(By.CSS_SELECTOR, "pre.pkg-output")
            self.wait_for(driver, lambda d: "configuration refused" in output.text, what="apt's message in the output")
            # the table is searched again after the change; the failure stays in view
            self.wait_for(driver, lambda d: d.find_elements(By.XPATH, f"//button[@aria-label='Remove {BAD}']"),
                          what=f"{BAD} listed again (half-installed)")
            alert = driver.find_element(By.CSS_SELECTOR, "p.error-message[role=alert]").text
            self.screenshot(driver, "packages-failed")
            self.assertEqual(self.browser_errors(driver), [])
            return alert

        alert = yield self.b(steps, self.driver)
        print(f"\n{alert}")
        self.assertTrue(alert.startswith(f"Install {BAD} failed (job "), alert)
