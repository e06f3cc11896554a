"""Checks that template.yaml deploys exactly the workspace's function crates, each built the same way.

The test command builds no bootstrap by default (the arm64 release build of all ten takes
longer than the rest of the suite; `AUDIO_DEDUP_SAM_BUILD=1` adds `scripts/sam-build`, the full
`sam build`). This check stands for `sam build` between full builds: every function has the
same build metadata, and its `Binary` is the binary of a crate under functions/. Run with
the SAM venv's python (cfn-lint's template reader understands CloudFormation's short tags):
`.venv-sam/bin/python scripts/check_functions.py`.
Prints the functions and their binaries; exits 1 with the reasons otherwise. An argument
names another template to check against the workspace.
"""

import json
import subprocess
import sys
from pathlib import Path

from cfnlint.decode import decode

ROOT = Path(__file__).resolve().parent.parent


def workspace_function_bins():
    """Binary name -> package, for every binary of a package under functions/."""
    meta = json.loads(
        subprocess.run(
            ["cargo", "metadata", "--no-deps", "--format-version", "1", "--locked"],
            cwd=ROOT, check=True, capture_output=True, text=True,
        ).stdout
    )
    bins = {}
    for pkg in meta["packages"]:
        manifest = Path(pkg["manifest_path"]).resolve()
        if manifest.parent.parent != ROOT / "functions":
            continue
        for target in pkg["targets"]:
            if "bin" in target["kind"]:
                bins[target["name"]] = pkg["name"]
    return bins


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else str(ROOT / "template.yaml")
    template, matches = decode(path)
    if template is None:
        print("template.yaml does not parse:", *matches, sep="\n  ")
        return 1
    function_globals = template.get("Globals", {}).get("Function", {})
    problems = []
    for key, want in (("Runtime", "provided.al2023"), ("Architectures", ["arm64"]), ("Handler", "bootstrap")):
        if function_globals.get(key) != want:
            problems.append(f"Globals.Function.{key} is {function_globals.get(key)!r}, not {want!r}")

    bins = workspace_function_bins()
    deployed = {}
    for name, resource in template["Resources"].items():
        if resource.get("Type") != "AWS::Serverless::Function":
            continue
        meta = resource.get("Metadata", {})
        props = resource.get("Properties", {})
        binary = meta.get("BuildProperties", {}).get("Binary")
        if meta.get("BuildMethod") != "rust-cargolambda":
            problems.append(f"{name}: BuildMethod is {meta.get('BuildMethod')!r}, not rust-cargolambda")
        if props.get("CodeUri") != ".":
            problems.append(f"{name}: CodeUri is {props.get('CodeUri')!r}, not '.' (the workspace root)")
        for key in ("Runtime", "Architectures", "Handler"):
            if key in props:
                problems.append(f"{name}: sets its own {key}; the one build checked stands for the others only with the globals'")
        if binary not in bins:
            problems.append(f"{name}: Binary {binary!r} is no binary of a crate under functions/")
        elif binary in deployed.values():
            problems.append(f"{name}: Binary {binary!r} is deployed twice")
        deployed[name] = binary
    for binary, package in sorted(bins.items()):
        if binary not in deployed.values():
            problems.append(f"functions/ crate {package} (binary {binary}) is in no function of the template")

    if problems:
        print("template.yaml and functions/ disagree:", *problems, sep="\n  ")
        return 1
    for name, binary in sorted(deployed.items()):
        print(f"{name}: {binary} (rust-cargolambda, arm64, provided.al2023)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
