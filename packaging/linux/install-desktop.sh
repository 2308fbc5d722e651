#!/usr/bin/env bash
# Add Finetune to the Linux desktop (application menu, icon, "Open With" for datasets), for the
# current user only: ~/.local/share/{applications,icons/hicolor,mime}. No root needed.
#
#   packaging/linux/install-desktop.sh              # after `pip install -e .` (finds finetune-app)
#   packaging/linux/install-desktop.sh --exec /path/to/venv/bin/finetune-app
#   packaging/linux/install-desktop.sh --uninstall
#
# Respects $XDG_DATA_HOME. The menu entry runs `finetune-app gui <files>` by absolute path, so a
# virtual environment need not be on PATH.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
ICONSET="$ROOT/resources/icon/Finetune.iconset"
SVG="$ROOT/resources/icon/finetune-icon.svg"
DATA_HOME="${XDG_DATA_HOME:-$HOME/.local/share}"
APP_ID="finetune-app"
EXE=""
UNINSTALL=0

usage() { sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
    case "$1" in
        --exec) EXE="${2:?--exec needs a path}"; shift 2 ;;
        --exec=*) EXE="${1#--exec=}"; shift ;;
        --uninstall) UNINSTALL=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "install-desktop: unknown option $1" >&2; usage >&2; exit 2 ;;
    esac
done

# pixel size -> file of the macOS iconset that has it
declare -A ICON_FOR=(
    [16]=icon_16x16.png [32]=icon_32x32.png [64]=icon_32x32@2x.png
    [128]=icon_128x128.png [256]=icon_256x256.png [512]=icon_512x512.png
)

refresh() {  # caches, where the tools exist; none of them is required, failures are harmless
    if command -v update-desktop-database >/dev/null; then
        update-desktop-database -q "$DATA_HOME/applications" || true
    fi
    if command -v update-mime-database >/dev/null; then
        update-mime-database "$DATA_HOME/mime" >/dev/null 2>&1 || true
    fi
    if command -v gtk-update-icon-cache >/dev/null; then
        gtk-update-icon-cache -q -t -f "$DATA_HOME/icons/hicolor" 2>/dev/null || true
    fi
}

if [ "$UNINSTALL" = 1 ]; then
    rm -f "$DATA_HOME/applications/$APP_ID.desktop" "$DATA_HOME/mime/packages/$APP_ID.xml" \
          "$DATA_HOME/icons/hicolor/scalable/apps/$APP_ID.svg"
    for size in "${!ICON_FOR[@]}"; do
        rm -f "$DATA_HOME/icons/hicolor/${size}x${size}/apps/$APP_ID.png"
    done
    refresh
    echo "install-desktop: removed Finetune from $DATA_HOME"
    exit 0
fi

if [ -z "$EXE" ]; then
    EXE="$(command -v finetune-app || true)"
fi
if [ -z "$EXE" ] || [ ! -x "$EXE" ]; then
    echo "install-desktop: cannot find the finetune-app command. Install the app first" >&2
    echo "  (python3 -m pip install -e .), or pass --exec /path/to/finetune-app" >&2
    exit 1
fi
EXE="$(cd "$(dirname "$EXE")" && pwd)/$(basename "$EXE")"
case "$EXE" in
    *[[:space:]\"\'\\\$\`]*) echo "install-desktop: $EXE: spaces or quotes in the path are not supported" >&2; exit 1 ;;
esac

mkdir -p "$DATA_HOME/applications" "$DATA_HOME/mime/packages" "$DATA_HOME/icons/hicolor/scalable/apps"
sed -e "s|^Exec=finetune-app |Exec=$EXE |" -e "s|^TryExec=finetune-app$|TryExec=$EXE|" \
    "$HERE/$APP_ID.desktop" > "$DATA_HOME/applications/$APP_ID.desktop"
chmod 644 "$DATA_HOME/applications/$APP_ID.desktop"
for size in "${!ICON_FOR[@]}"; do
    mkdir -p "$DATA_HOME/icons/hicolor/${size}x${size}/apps"
    install -m 644 "$ICONSET/${ICON_FOR[$size]}" "$DATA_HOME/icons/hicolor/${size}x${size}/apps/$APP_ID.png"
done
install -m 644 "$SVG" "$DATA_HOME/icons/hicolor/scalable/apps/$APP_ID.svg"
install -m 644 "$HERE/$APP_ID-mime.xml" "$DATA_HOME/mime/packages/$APP_ID.xml"
refresh
echo "install-desktop: Finetune added to the application menu ($DATA_HOME/applications/$APP_ID.desktop)"
echo "install-desktop: runs $EXE"
