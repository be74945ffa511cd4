"""Pin every package of the conda envs in envs/ to the versions CI installs: constraints.txt is the single source.

    python envs/sync_pins.py           rewrite the env files' pins
    python envs/sync_pins.py --check   exit 1 (listing them) if any pin differs; the tests run this

Conda packages get `=MAJOR.MINOR` (conda-forge builds differ in the patch level), pip packages `==VERSION`.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONSTRAINTS = HERE.parent / "constraints.txt"
UNPINNED = {"python", "pip"}  # python is pinned by hand (the version CI runs); pip is the installer
# conda-forge name -> the PyPI distribution that constraints.txt pins
SAME_RELEASE = {"matplotlib-base": "matplotlib", "faiss-gpu": "faiss-cpu", "pytorch": "torch"}
ENTRY = re.compile(r"^(?P<lead>\s*- )(?P<name>[A-Za-z0-9_.\-]+)(?P<pin>(==?|>=|<=|~=)\S+)?\s*$")


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_constraints(path: Path = CONSTRAINTS) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[normalise(name)] = version.strip()
    return pins


def synced(text: str, pins: dict[str, str], source: str) -> str:
    """The env file's text with each package pinned as constraints.txt says; raises on a package it lacks."""
    lines, in_pip = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip() == "- pip:":
            in_pip = True
        elif not line.startswith("      ") and line.strip():
            in_pip = False
        match = ENTRY.match(line)
        if match and normalise(match["name"]) not in UNPINNED:
            name = normalise(match["name"])
            version = pins.get(normalise(SAME_RELEASE.get(name, name)))
            if version is None:
                raise SystemExit(f"{source}:{number}: {match['name']} is not in {CONSTRAINTS.name}\n"
                                 f"  fix: add the version CI installs to {CONSTRAINTS}")
            pin = f"=={version}" if in_pip else "=" + ".".join(version.split(".")[:2])
            line = f"{match['lead']}{match['name']}{pin}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    pins = read_constraints()
    stale = []
    for env_file in sorted(HERE.glob("*.yaml")):
        text = env_file.read_text()
        new = synced(text, pins, str(env_file))
        if new != text:
            stale.append(env_file.name)
            if "--check" not in argv:
                env_file.write_text(new)
    if stale and "--check" in argv:
        print(f"pins differ from {CONSTRAINTS.name} in: {', '.join(stale)}\n  fix: python envs/sync_pins.py")
        return 1
    print(("rewrote: " + ", ".join(stale)) if stale else "all env pins follow constraints.txt")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
