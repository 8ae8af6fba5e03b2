#!/usr/bin/env python3
"""Every config bearward ships must pass `bearward check`: the .toml files under config/ and
deploy/, and each `*.toml` entry of a ConfigMap in deploy/. Every kustomization must name files
that exist, and no directory that contains it (kustomize's cycle). Usage: check-deploy.py BEARWARD_BINARY"""
import pathlib
import subprocess
import sys
import tempfile

import yaml

binary = sys.argv[1]
root = pathlib.Path(__file__).resolve().parent.parent
failed = False


def check(path, label):
    global failed
    r = subprocess.run([binary, "check", "--config", str(path)], capture_output=True, text=True)
    print(f"{label}: {r.stdout.strip()}")
    if r.returncode != 0:
        failed = True


configs = sorted(list((root / "config").rglob("*.toml")) + list((root / "deploy").rglob("*.toml")))
for f in configs:
    check(f, f.relative_to(root))

for manifest in sorted((root / "deploy").rglob("*.yaml")):
    for doc in yaml.safe_load_all(manifest.read_text()):
        if not isinstance(doc, dict):
            continue
        if doc.get("kind") == "ConfigMap":
            for key, text in (doc.get("data") or {}).items():
                if key.endswith(".toml"):
                    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as t:
                        t.write(text)
                    check(t.name, f"{manifest.relative_to(root)} ConfigMap {doc['metadata']['name']} {key}")
        if doc.get("kind") in ("Kustomization", "Component"):
            names = list(doc.get("resources", [])) + list(doc.get("components", []))
            for gen in doc.get("configMapGenerator", []):
                names += gen.get("files", [])
            for n in names:
                if not (manifest.parent / n).exists():
                    print(f"{manifest.relative_to(root)}: {n} does not exist")
                    failed = True
                # kustomize refuses a resource directory that contains the kustomization
                # naming it ("cycle detected"): an overlay must name a sibling base, never `..`.
                target = (manifest.parent / n).resolve()
                if target.is_dir() and manifest.parent.resolve().is_relative_to(target):
                    print(f"{manifest.relative_to(root)}: {n} contains this kustomization (a cycle kustomize refuses)")
                    failed = True

sys.exit(1 if failed else 0)
