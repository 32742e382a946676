from setuptools import setup, find_packages

setup(
    name="sysadmd",
    version="0.1.0",
    description="Remote system administration daemon and bridge, wire-compatible with TrueOS SysAdm",
    python_requires=">=3.10",
    packages=find_packages(include=["sysadmd", "sysadmd.*", "bridge", "bridge.*"]) + ["twisted.plugins"],
    package_data={"twisted": ["plugins/sysadmd_plugin.py", "plugins/sysadm_bridge_plugin.py"]},
    install_requires=[
        "twisted[tls]>=23.10",
        "autobahn>=23.1",
        "pyOpenSSL>=23.2",
        "cryptography>=42",
        "service_identity>=23.1",
        "psutil>=5.9",
        "python-pam>=2.0",
    ],
    extras_require={"test": ["pytest>=7", "hypothesis>=6", "treq>=22.2"]},
    entry_points={
        "console_scripts": [
            "sysadm = sysadmd.client.main:main",
            "sysadmd = sysadmd.admin.main:main",
            "sysadm-bridge = bridge.admin:main",
        ]
    },
)
