from setuptools import setup, find_packages

setup(
    name="sysadmd",
    version="0.1.0",
    description="Remote system administration daemon and bridge, wire-compatible with TrueOS SysAdm",
    python_requires=">=3.10",
    packages=find_packages(include=["sysadmd", "sysadmd.*", "bridge", "bridge.*"]) + ["twisted.plugins"],
    package_data={"twisted": ["plugins/sysadmd_plugin.py", "plugins/sysadm_bridge_plugin.py"]},
    # Upper bounds: the newest releases the suite has passed on (autobahn's internals are
    # hooked by sysadmd/wsbase.py and frames.py, so a new major must be tried first).
    install_requires=[
        "twisted[tls]>=23.10,<27",
        "autobahn>=23.1,<27",
        "pyOpenSSL>=23.2,<27",
        "cryptography>=42,<51",
        "service_identity>=23.1,<27",
        "psutil>=5.9,<8",
        "python-pam>=2.0,<3",
    ],
    extras_require={"test": ["pytest>=7,<10", "hypothesis>=6,<7", "treq>=22.2,<27", "pyflakes>=3.2,<5"]},
    entry_points={
        "console_scripts": [
            "sysadm = sysadmd.client.main:main",
            "sysadmd = sysadmd.admin.main:main",
            "sysadm-bridge = bridge.admin:main",
        ]
    },
)
