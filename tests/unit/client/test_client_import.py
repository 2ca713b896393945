"""The SDK installs and imports alone: importing ``modelhost.client`` and making a client, in
a fresh interpreter, loads numpy and no server dependency."""

import ast
import subprocess
import sys

import pytest

# Top-level packages only the server (or the tensor path) needs.
FORBIDDEN = [
    "PIL",
    "numpy",
    "onnxruntime",
    "pydantic_settings",
    "sqlalchemy",
    "starlette",
    "torch",
    "uvicorn",
]

PROGRAM = """
import sys
from modelhost.client import Client
Client("http://127.0.0.1:1").close()
print(sorted(sys.modules))
"""


@pytest.fixture(scope="module")
def imported_packages() -> set[str]:
    """Top-level packages in ``sys.modules`` after the client's import and construction."""
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM], capture_output=True, text=True, timeout=60, check=True
    )
    modules = ast.literal_eval(done.stdout.strip().splitlines()[-1])
    return {name.partition(".")[0] for name in modules}


def test_the_program_did_import_the_client(imported_packages):
    assert {"modelhost", "httpx"} <= imported_packages


@pytest.mark.parametrize("package", FORBIDDEN)
def test_importing_the_client_loads_no_server_dependency(imported_packages, package):
    assert package not in imported_packages
