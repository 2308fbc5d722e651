#!/bin/bash
# Build dist/Finetune.app on an Apple-silicon Mac, in one command:
#
#   packaging/build_macos.sh                 # build, check, sign ad hoc, self-test
#   packaging/build_macos.sh --zip           # ... and dist/Finetune-<version>-macOS-arm64.zip
#   packaging/build_macos.sh --dmg           # ... and dist/Finetune-<version>-macOS-arm64.dmg
#   packaging/build_macos.sh --sign "Developer ID Application: Your Name (TEAMID)"
#
# Run it with the virtual environment that has the app installed (python3 -m pip install -e
# ".[macos]") active, or point PYTHON at that environment's python. Steps: check the machine,
# py2app, copy MLX and Qt in whole, verify the bundle file by file, sign, run the app's
# --selftest (MLX computes on the GPU with its Metal kernels; Qt loads the cocoa platform plugin).
# (bash 3.2, the one macOS ships, is enough.)
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
PYTHON="${PYTHON:-python3}"
IDENTITY="-"   # "-": ad-hoc signature (runs on this Mac; Gatekeeper blocks it elsewhere)
MAKE_ZIP=0
MAKE_DMG=0
SELFTEST=1

usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
    case "$1" in
        --sign) IDENTITY="${2:?--sign needs a signing identity}"; shift 2 ;;
        --zip) MAKE_ZIP=1; shift ;;
        --dmg) MAKE_DMG=1; shift ;;
        --no-selftest) SELFTEST=0; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "build_macos: unknown option $1" >&2; usage >&2; exit 2 ;;
    esac
done

say() { printf '\n==> %s\n' "$*"; }
cd "$ROOT"

if [ "$(uname -s)" != "Darwin" ] || [ "$(uname -m)" != "arm64" ]; then
    echo "build_macos: needs an Apple-silicon Mac (this is $(uname -s) $(uname -m))" >&2
    exit 1
fi

say "Checking the build machine"
"$PYTHON" packaging/bundle_tools.py check-env

APP="$ROOT/dist/Finetune.app"
VERSION="$("$PYTHON" -c 'import sys; sys.path.insert(0, "packaging"); import setup_py2app as c; print(c.VERSION)')"

say "Building Finetune $VERSION with py2app"
rm -rf "$ROOT/build/py2app" "$APP"
# From packaging/: setuptools must not read ../pyproject.toml (py2app refuses install_requires).
(cd "$HERE" && "$PYTHON" setup_py2app.py py2app)

say "Copying MLX and Qt into the bundle"
"$PYTHON" packaging/bundle_tools.py vendor "$APP"

say "Verifying the bundle"
"$PYTHON" packaging/bundle_tools.py verify "$APP"

if [ "$IDENTITY" = "-" ]; then
    say "Signing ad hoc (codesign --force --deep -s -)"
else
    say "Signing with \"$IDENTITY\" (hardened runtime, for notarization)"
fi
"$PYTHON" packaging/bundle_tools.py sign "$APP" --identity "$IDENTITY"
if ! codesign --verify --deep --strict --verbose=1 "$APP"; then
    echo "build_macos: strict signature check failed; retrying without --strict" >&2
    codesign --verify --deep --verbose=1 "$APP"
fi

if [ "$SELFTEST" = 1 ]; then
    say "Self-test (MLX on the GPU, Qt plugins, resources)"
    "$APP/Contents/MacOS/Finetune" --selftest
fi

if [ "$MAKE_ZIP" = 1 ]; then
    say "Zipping"
    ditto -c -k --sequesterRsrc --keepParent "$APP" "$ROOT/dist/Finetune-$VERSION-macOS-arm64.zip"
fi
if [ "$MAKE_DMG" = 1 ]; then
    say "Making a disk image"
    hdiutil create -volname "Finetune $VERSION" -srcfolder "$APP" -ov -format UDZO \
        "$ROOT/dist/Finetune-$VERSION-macOS-arm64.dmg"
fi

say "Done: $APP ($(du -sh "$APP" | cut -f1))"
echo "Open it with: open \"$APP\""
