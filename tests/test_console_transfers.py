"""The web console's file transfers in a real headless Chromium (issue 14, item 5): a file
chosen in the Files page's "File" input is uploaded through POST /_upload (Bearer token,
progress from XMLHttpRequest) and lands byte for byte on disk; a file's "Download" button
goes through core/download and GET /_download, and Chromium's download directory then
holds the same bytes.  No errors in the browser's console."""

from __future__ import annotations

import hashlib
import os

import pytest
from twisted.internet import defer
from twisted.trial import unittest

from sysadmd.sysclasses.apt import present as apt_present
from tests.browser_support import BrowserCase, button, field_for, sign_in
from tests.support import FakePasswords, make_config, short_tempdir, start_daemon

pytestmark = pytest.mark.slow


class TransfersInBrowser(BrowserCase):
    @defer.inlineCallbacks
    def setUp(self):
        super().setUp()
        self.dir = short_tempdir(self)
        cfg = make_config(os.path.join(self.dir, "state"))
        self.running = yield start_daemon(self, cfg, passwords=FakePasswords({"root": "pw"}))
        self.url = f"https://127.0.0.1:{self.running.port}/"
        self.files = os.path.join(self.dir, "files")
        os.makedirs(self.files)
        self.driver = yield self.open_browser()

    def open_files(self, driver):
        from selenium.webdriver.common.by import By

        sign_in(driver, self.url, "root", "pw")
        self.wait_for(driver, lambda d: d.find_elements(By.LINK_TEXT, "Files"), what="the Files link")
        driver.find_element(By.LINK_TEXT, "Files").click()
        directory = field_for(driver, "Directory")
        directory.clear()
        directory.send_keys(self.files)
        button(driver, "Open").click()
        self.wait_for(driver, lambda d: d.find_element(By.CSS_SELECTOR, "section.page").get_attribute("data-dir")
                      == self.files, what="the directory listed")

    @defer.inlineCallbacks
    def test_upload_a_file_from_the_browser(self):
        from selenium.webdriver.common.by import By

        payload = os.urandom(3 * 1024 * 1024 + 17)  # big enough for several progress events
        source_dir = short_tempdir(self)
        source = os.path.join(source_dir, "upload me.bin")
        with open(source, "wb") as f:
            f.write(payload)

        def steps(driver):
            self.open_files(driver)
            field_for(driver, "File").send_keys(source)
            button(driver, "Upload").click()
            form = driver.find_element(By.CSS_SELECTOR, "form[aria-label='Upload a file']")
            self.wait_for(driver, lambda d: form.get_attribute("data-state") in ("done", "failed"), timeout=30,
                          what="the upload to finish")
            message = form.find_element(By.CSS_SELECTOR, "[role=status]").text
            self.assertEqual(form.get_attribute("data-state"), "done", message)
            self.assertEqual(driver.find_element(By.XPATH, "//progress[@aria-label='Upload progress']")
                             .get_attribute("value"), "100")
            self.wait_for(driver, lambda d: d.find_elements(By.XPATH, "//th[text()='upload me.bin']"),
                          what="the uploaded file in the refreshed listing")
            self.screenshot(driver, "files-upload")
            self.assertEqual(self.browser_errors(driver), [])
            return message

        message = yield self.b(steps, self.driver)
        self.assertIn("Uploaded upload me.bin", message)
        target = os.path.join(self.files, "upload me.bin")
        with open(target, "rb") as f:
            self.assertEqual(hashlib.sha256(f.read()).hexdigest(), hashlib.sha256(payload).hexdigest())
        self.assertEqual(os.stat(target).st_mode & 0o777, 0o644)

    @defer.inlineCallbacks
    def test_download_a_file_to_the_browser(self):
        from selenium.webdriver.common.by import By

        payload = os.urandom(1024 * 1024 + 5)
        with open(os.path.join(self.files, "report.dat"), "wb") as f:
            f.write(payload)
        downloads = short_tempdir(self)

        def steps(driver):
            driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": downloads})
            self.open_files(driver)
            button(driver, "Download report.dat").click()
            landed = os.path.join(downloads, "report.dat")
            self.wait_for(driver, lambda d: os.path.exists(landed) and os.path.getsize(landed) == len(payload)
                          and not any(n.endswith(".crdownload") for n in os.listdir(downloads)),
                          timeout=30, what="report.dat in the download directory")
            status = driver.find_element(By.ID, "transfer-status").text
            self.screenshot(driver, "files-download")
            self.assertEqual(self.browser_errors(driver), [])
            return landed, status

        landed, status = yield self.b(steps, self.driver)
        with open(landed, "rb") as f:
            self.assertEqual(f.read(), payload)
        # the digest the download job computed while spooling (its result), shown by the page
        self.assertIn(hashlib.sha256(payload).hexdigest(), status)

    @defer.inlineCallbacks
    def test_failed_transfers_say_why(self):
        from selenium.webdriver.common.by import By

        source = os.path.join(short_tempdir(self), "late.txt")
        with open(source, "wb") as f:
            f.write(b"late\n")

        def steps(driver):
            self.open_files(driver)
            button(driver, "Download pipe").click()
            status = driver.find_element(By.ID, "transfer-status")
            self.wait_for(driver, lambda d: status.text.startswith("Could not download pipe"), timeout=20,
                          what="the download's failure")
            download_error = status.text
            os.unlink(os.path.join(self.files, "pipe"))
            os.rmdir(self.files)  # the directory shown disappears
            field_for(driver, "File").send_keys(source)
            button(driver, "Upload").click()
            form = driver.find_element(By.CSS_SELECTOR, "form[aria-label='Upload a file']")
            self.wait_for(driver, lambda d: form.get_attribute("data-state") in ("done", "failed"), timeout=20,
                          what="the upload to end")
            self.assertEqual(form.get_attribute("data-state"), "failed")
            upload_error = form.find_element(By.CSS_SELECTOR, "[role=status]").text
            self.screenshot(driver, "files-upload-failed")
            # Chromium logs the refused request itself (a network entry); nothing else may appear
            errors = self.browser_errors(driver)
            self.assertEqual([e for e in errors if not (e.startswith("network: ") and "/_upload" in e
                                                        and "status of 400" in e)], [], errors)
            return download_error, upload_error

        self.files = os.path.join(self.files, "gone")
        os.mkdir(self.files)
        os.mkfifo(os.path.join(self.files, "pipe"))  # not a regular file: filesystem.get refuses it
        download_error, upload_error = yield self.b(steps, self.driver)
        print(f"\n{download_error}\n{upload_error}")
        self.assertIn("regular file", download_error)
        self.assertTrue(upload_error.startswith("Could not upload late.txt: "), upload_error)
        self.assertFalse(os.path.exists(os.path.join(self.files, "late.txt")))


class LimitedUserInBrowser(BrowserCase):
    """A limited user (LIMITED_ACCESS_GROUPS) browses files and searches packages but is
    offered no transfer and no package change: the API would refuse them (full access)."""

    @defer.inlineCallbacks
    def setUp(self):
        super().setUp()
        import grp
        import pwd

        try:
            self.group = grp.getgrgid(pwd.getpwnam("nobody").pw_gid).gr_name
        except KeyError:
            raise unittest.SkipTest("no 'nobody' account on this host")
        self.dir = short_tempdir(self)
        os.chmod(self.dir, 0o755)  # the listing runs as the caller (nobody)
        with open(os.path.join(self.dir, "seen.txt"), "w") as f:
            f.write("x")
        cfg = make_config(os.path.join(self.dir, "state"), limited_access_groups=self.group, full_access_groups="")
        self.running = yield start_daemon(self, cfg, passwords=FakePasswords({"nobody": "pw"}))
        self.url = f"https://127.0.0.1:{self.running.port}/"
        self.driver = yield self.open_browser()

    @defer.inlineCallbacks
    def test_no_transfer_or_change_controls_for_a_limited_user(self):
        from selenium.webdriver.common.by import By

        def steps(driver):
            sign_in(driver, self.url, "nobody", "pw")
            self.wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "nav a"), what="the pages")
            links = [a.text for a in driver.find_elements(By.CSS_SELECTOR, "nav a")]
            if "Files" in links:
                driver.find_element(By.LINK_TEXT, "Files").click()
                directory = field_for(driver, "Directory")
                directory.clear()
                directory.send_keys(self.dir)
                button(driver, "Open").click()
                self.wait_for(driver, lambda d: d.find_elements(By.XPATH, "//th[text()='seen.txt']"), what="the listing")
                self.assertEqual(driver.find_elements(By.XPATH, "//label[text()='File']"), [])
                self.assertEqual(driver.find_elements(By.XPATH, "//button[text()='Download']"), [])
            if "Packages" in links:
                driver.find_element(By.LINK_TEXT, "Packages").click()
                self.wait_for(driver, lambda d: d.find_elements(By.XPATH, "//label[normalize-space(text())='Search packages']"),
                              what="the packages page")
                field_for(driver, "Search packages").send_keys("dpkg")
                button(driver, "Search").click()
                self.wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "tr[data-pkg='dpkg']"), timeout=30,
                              what="dpkg in the results")
                self.assertEqual(driver.find_elements(By.CSS_SELECTOR, "td.actions button"), [])
            self.assertEqual(self.browser_errors(driver), [])
            return links

        links = yield self.b(steps, self.driver)
        self.assertIn("Files", links)
        if apt_present():
            self.assertIn("Packages", links)
