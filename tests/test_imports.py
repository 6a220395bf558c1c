"""The gateway must start without the model stack: importing it loads neither torch nor transformers."""

from __future__ import annotations

import subprocess
import sys


def test_ingress_imports_no_torch():
    code = (
        "import sys, serve.ingress, serve.config, serve.protocol, serve.images; "
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.strip() == "[]"
