#!/usr/bin/env bash
# The Blender 5.0 add-on job's environment, ./.venv-bpy5 (scripts/setup.sh --all calls this after making .venv):
# the bpy module of Blender 5.0 (pinned in scripts/constraints.txt, line "# bpy5-job: ...") layered over .venv.
# A .pth runs site.addsitedir on .venv's packages, so torch, numpy 1.26, bpy 5's other needs and the editable
# nst3d are shared (no second 1 GB torch); bpy 5 is found first because .venv-bpy5's own packages come first.
# scripts/test.sh runs the add-on tests (-m blender) with it. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.venv-bpy5
pin=$(sed -n 's/^# bpy5-job: *//p' scripts/constraints.txt)
[[ -n "$pin" ]] || { echo "setup_bpy5: no '# bpy5-job:' line in scripts/constraints.txt" >&2; exit 1; }
[[ -x .venv/bin/python ]] || { echo "setup_bpy5: make .venv first (scripts/setup.sh --all)" >&2; exit 1; }
shared=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
stamp="$pin $shared $(sha256sum < scripts/setup_bpy5.sh | cut -c1-16)"
if [[ -x $venv/bin/python && -f $venv/.nst3d-setup && "$(cat $venv/.nst3d-setup)" == "$stamp" ]]; then
  exit 0
fi
rm -rf "$venv"
# --without-pip: pip and setuptools come from .venv too (a venv's own, older setuptools would shadow .venv's).
"$(.venv/bin/python -c 'import sys; print(sys._base_executable)')" -m venv --without-pip "$venv"
own=$($venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
printf 'import site; site.addsitedir(%s)\n' "$(.venv/bin/python -c 'import sys; print(repr(sys.argv[1]))' "$shared")" \
  > "$own/nst3d_shared_venv.pth"
# --no-deps: bpy 5.0.1 needs numpy<2, cython, requests and zstandard, all already in .venv (same pins).
$venv/bin/python -m pip --disable-pip-version-check -q install --no-deps "$pin"
$venv/bin/python -c 'import bpy, torch; assert bpy.app.version[0] == 5, bpy.app.version'
echo "$stamp" > $venv/.nst3d-setup
echo "setup_bpy5: $venv ready ($pin over .venv)" >&2
