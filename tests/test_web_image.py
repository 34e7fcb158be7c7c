"""The web page's own image (web.Dockerfile) installs what the page imports, and no more:
read statically (no Docker engine here) and checked against a fresh interpreter's imports."""

import importlib.metadata
import json
import os
import re
import sys

from histo_testlib import REPO, run_python

PROJECT = {"components", "modules", "preprocessing", "serving", "pipeline", "demo", "kfp_tools"}
OPTIONAL = {"defusedxml"}  # Pillow imports it when present, works without it


def _installed_by_the_image() -> set[str]:
    """Distributions the image's first pip line installs, with everything they require."""
    with open(os.path.join(REPO, "web.Dockerfile")) as f:
        (line,) = [line for line in f if "pip install -c requirements/constraints.txt" in line]
    wanted = [
        re.split(r"[<>=\"]", w.strip('"'))[0] for w in line.split("constraints.txt", 1)[1].split()
    ]
    seen: set[str] = set()
    while wanted:
        name = wanted.pop().lower().replace("_", "-")
        if name in seen:
            continue
        seen.add(name)
        for requirement in importlib.metadata.requires(name) or []:
            if "extra ==" not in requirement:
                wanted.append(re.split(r"[\s<>=!~;\[(]", requirement, maxsplit=1)[0])
    return seen


def test_the_web_image_installs_what_the_page_imports_in_url_mode():
    script = (
        "import json, sys\n"
        "before = set(sys.modules)\n"
        "import serving.web\n"
        "app = serving.web.create_app(None, serving.web.ModelFacts('url', '1', {}))\n"
        "page = app.test_client().get('/')\n"
        "assert page.status_code == 200\n"
        "print(json.dumps(sorted({m.split('.')[0] for m, v in sys.modules.items()"
        " if m not in before and getattr(v, '__file__', None)})))\n"
    )
    out = run_python(script)
    imported = set(json.loads(out.stdout.splitlines()[-1]))
    third_party = imported - set(sys.stdlib_module_names) - PROJECT - OPTIONAL
    assert "tensorflow" not in imported
    by_module = importlib.metadata.packages_distributions()
    needed = {by_module[m][0].lower().replace("_", "-") for m in third_party if m in by_module}
    assert needed <= _installed_by_the_image(), needed - _installed_by_the_image()
