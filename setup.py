from setuptools import Extension, setup, find_packages

setup(
    name="sysadmd",
    version="0.1.0",
    description="Remote system administration daemon and bridge, wire-compatible with TrueOS SysAdm",
    python_requires=">=3.10",
    packages=find_packages(include=["sysadmd", "sysadmd.*", "bridge", "bridge.*"]) + ["twisted.plugins"],
    package_data={"twisted": ["plugins/sysadmd_plugin.py", "plugins/sysadm_bridge_plugin.py"],
                  # the web console's files, served from the installed package (no CDN)
                  "sysadmd.console": ["static/*.html", "static/*.js", "static/*.css", "static/*.svg",
                                      # vendored ES modules with their LICENSE (static/vendor/VENDORED.md)
                                      "static/vendor/VENDORED.md", "static/vendor/*/*.js", "static/vendor/*/LICENSE"]},
    # Upper bounds: the newest releases the suite has passed on.  autobahn: sysadmd/wire/wsbase.py
    # hooks internals (its REQUIRED_INTERNALS, checked at import, with a fallback to the
    # public API); 22.12.1 is the oldest release with all of them (22.1.1 lacks
    # autoPingRestartOnAnyTraffic) and .ci/run tests it as well as the newest.
    install_requires=[
        "twisted[tls]>=23.10,<27",
        "autobahn>=22.12,<27",
        "pyOpenSSL>=23.2,<27",
        "cryptography>=42,<51",
        "service_identity>=23.1,<27",
        "psutil>=5.9,<8",
        "python-pam>=2.0,<3",
        # sysadm/services on systemd (D-Bus messages; imported only when systemd runs the host)
        "dbus-fast>=5.2,<6",
    ],
    extras_require={"test": ["pytest>=7,<10", "hypothesis>=6,<7", "treq>=22.2,<27", "pyflakes>=3.2,<5", "pytest-xdist>=3.5,<4",
                              # the web console's browser tests drive Debian's chromium + chromium-driver
                              "selenium>=4.15,<5"]},
    # The bridge's relay step in C (bridge/relayscan.c; bridge/relayscan.py is the reference
    # and the fallback when this cannot be built).  A top-level module, so that a checkout
    # on PYTHONPATH (as the tests run it) finds it too.
    ext_modules=[Extension("_sysadm_relayscan", ["bridge/relayscan.c"], optional=True)],
    entry_points={
        "console_scripts": [
            "sysadm = sysadmd.client.main:main",
            "sysadmd = sysadmd.admin.main:main",
            "sysadm-bridge = bridge.admin:main",
        ]
    },
)
